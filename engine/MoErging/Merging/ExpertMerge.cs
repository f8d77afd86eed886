using MoErging.Experts;

namespace MoErging.Merging;

/// <summary>
/// Merges the experts of a library into one expert (parameter aggregation): per module, the experts that adapt
/// it are combined by the chosen <see cref="MergeMethod"/> with one weight per expert; experts that do not adapt a
/// module take no part in it. The result has scaling 1 on every module (lora_alpha = r), so
/// <see cref="Formats.PeftAdapter.Write"/> writes it as a plain PEFT adapter.
/// </summary>
public static class ExpertMerge
{
    /// <summary>Merges every module of the library.</summary>
    /// <param name="library">The experts (their shapes already agree per module).</param>
    /// <param name="weights">One weight per expert, by expert index; any finite value (negative subtracts).</param>
    /// <param name="options">Method and parameters.</param>
    /// <param name="name">The merged expert's name.</param>
    /// <exception cref="ArgumentException">
    /// Wrong number of weights, a non-finite weight, an option the method does not take or out of range, or
    /// (factor-space methods) experts of different ranks at a module, named.
    /// </exception>
    /// <exception cref="NotSupportedException">A ΔW-space merge of a module whose ΔW is too large for one array.</exception>
    public static Expert Merge(ExpertLibrary library, ReadOnlySpan<double> weights, MergeOptions options, string name = "merged")
    {
        ArgumentNullException.ThrowIfNull(library);
        ArgumentException.ThrowIfNullOrEmpty(name);
        options.Validate();
        double[] w = CheckWeights(weights, library.ExpertCount);
        var merged = new List<KeyValuePair<string, LoraFactors>>(library.Modules.Count);
        for (int i = 0; i < library.Modules.Count; i++)
        {
            AdaptedModule module = library.Modules[i];
            int index = i;
            merged.Add(new(module.Name, MergeOne(module, w, options,
                fraction => options.Progress?.Report(new MergeProgress(index, library.Modules.Count, module.Name, fraction)))));
        }
        options.Progress?.Report(new MergeProgress(library.Modules.Count, library.Modules.Count, "", 0));
        return new Expert(name, merged);
    }

    /// <summary>Merges one module of a library (see <see cref="Merge"/>); progress is reported as module 0 of 1.</summary>
    public static LoraFactors MergeModule(AdaptedModule module, ReadOnlySpan<double> weights, MergeOptions options)
    {
        ArgumentNullException.ThrowIfNull(module);
        options.Validate();
        double[] w = CheckWeights(weights, module.ExpertCount);
        return MergeOne(module, w, options, fraction => options.Progress?.Report(new MergeProgress(0, 1, module.Name, fraction)));
    }

    /// <summary>The space a method works in with these options.</summary>
    public static MergeSpace SpaceOf(MergeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.Method switch
        {
            MergeMethod.Cat or MergeMethod.Linear => MergeSpace.Factors,
            MergeMethod.Svd => MergeSpace.Delta,
            _ => options.Space ?? MergeSpace.Delta,
        };
    }

    private static LoraFactors MergeOne(AdaptedModule module, double[] weights, MergeOptions options, Action<double> progress)
    {
        var parts = new List<Contribution>();
        for (int e = 0; e < module.ExpertCount; e++)
        {
            if (module.Factors(e) is LoraFactors f)
            {
                parts.Add(new Contribution(e, f, weights[e]));
            }
        }
        progress(0);
        MergeSpace space = SpaceOf(options);
        if (space == MergeSpace.Factors && options.Method != MergeMethod.Cat)
        {
            RequireEqualRanks(module, parts, options.Method);
        }
        // The default rank is PEFT's: the largest rank of any expert in the library; no module can use more than min(d_in, d_out).
        int k = Math.Min(options.Rank ?? module.Library.Modules.Max(m => m.MaxRank), Math.Min(module.InputDim, module.OutputDim));
        ulong sketchSeed = Contribution.Stream(options.Seed, module.Name, 0, 3);
        if (space == MergeSpace.Delta && options.Method != MergeMethod.Svd && (long)module.InputDim * module.OutputDim > Array.MaxLength)
        {
            throw new NotSupportedException($"module '{module.Name}': its ΔW ({module.OutputDim} × {module.InputDim}) is too large to merge in ΔW space; use the factor space");
        }
        LoraFactors result = options.Method switch
        {
            MergeMethod.Cat => CatMerge.Merge(parts),
            MergeMethod.Linear => LinearMerge.Merge(parts),
            MergeMethod.Svd => SvdMerge.Merge(parts, k, sketchSeed, progress),
            _ when space == MergeSpace.Factors =>
                PruneMerge.MergeFactors(parts, options.Method, options.Density!.Value, options.SignElection, options.Seed, module.Name),
            _ => PruneMerge.MergeDelta(parts, options.Method, options.Density!.Value, options.SignElection, k, options.Seed, module.Name, sketchSeed, progress),
        };
        progress(1);
        return result;
    }

    private static void RequireEqualRanks(AdaptedModule module, List<Contribution> parts, MergeMethod method)
    {
        Contribution first = parts[0];
        if (parts.Find(p => p.Factors.Rank != first.Factors.Rank) is Contribution other)
        {
            string expert(Contribution p) => module.Library.Experts[p.Expert].Name;
            throw new ArgumentException(
                $"module '{module.Name}': {method} in factor space needs equal ranks, but expert '{expert(first)}' has rank {first.Factors.Rank} and expert '{expert(other)}' rank {other.Factors.Rank} (merge in ΔW space, or use cat or svd)");
        }
    }

    private static double[] CheckWeights(ReadOnlySpan<double> weights, int experts)
    {
        if (weights.Length != experts)
        {
            throw new ArgumentException($"one weight per expert is needed ({experts}), got {weights.Length}", nameof(weights));
        }
        for (int e = 0; e < weights.Length; e++)
        {
            if (!double.IsFinite(weights[e]))
            {
                throw new ArgumentException($"weight {e} is {weights[e]}; weights must be finite", nameof(weights));
            }
        }
        return weights.ToArray();
    }
}
