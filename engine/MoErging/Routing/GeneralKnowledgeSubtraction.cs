using MoErging.Experts;

namespace MoErging.Routing;

/// <summary>
/// General knowledge subtraction (GenKnowSub; PEFT's Arrow option <c>use_gks</c>): the mean A and the mean B
/// of a set of general experts are subtracted from every task expert's A and B, module by module, so what
/// the experts share is removed before Arrow forms its prototypes. As in PEFT, the purified factors replace
/// the task experts' own (for routing and for the forward): build an <see cref="ArrowRouter"/> over the
/// returned library and forward with it. Each task expert keeps its scaling.
/// </summary>
public static class GeneralKnowledgeSubtraction
{
    /// <summary>Returns the task experts with Ā and B̄ of the general experts subtracted from every module they adapt.</summary>
    /// <param name="tasks">The task experts (the library routed among).</param>
    /// <param name="general">The general experts (at least one); they must adapt every module the task experts adapt, at the same rank.</param>
    /// <exception cref="ArgumentException">A general expert misses a module or has another rank there; the message names both experts and the module.</exception>
    public static ExpertLibrary Apply(ExpertLibrary tasks, IReadOnlyList<Expert> general)
    {
        ArgumentNullException.ThrowIfNull(tasks);
        ArgumentNullException.ThrowIfNull(general);
        if (general.Count == 0)
        {
            throw new ArgumentException("GenKnowSub needs at least one general expert", nameof(general));
        }
        var purified = new List<KeyValuePair<string, LoraFactors>>[tasks.ExpertCount];
        for (int e = 0; e < purified.Length; e++)
        {
            purified[e] = [];
        }
        foreach (AdaptedModule module in tasks.Modules)
        {
            for (int e = 0; e < tasks.ExpertCount; e++)
            {
                if (module.Factors(e) is not LoraFactors f)
                {
                    continue;
                }
                // Means over the general experts, in float64: Ā [r, d_in] and B̄ᵀ [r, d_out].
                var meanA = new double[f.Rank * f.InputDim];
                var meanBT = new double[f.Rank * f.OutputDim];
                foreach (Expert g in general)
                {
                    ArgumentNullException.ThrowIfNull(g, nameof(general));
                    if (!g.Modules.TryGetValue(module.Name, out LoraFactors? gf))
                    {
                        throw new ArgumentException($"general expert '{g.Name}' does not adapt module '{module.Name}', which task expert '{tasks.Experts[e].Name}' adapts", nameof(general));
                    }
                    if (gf.Rank != f.Rank || gf.InputDim != f.InputDim || gf.OutputDim != f.OutputDim)
                    {
                        throw new ArgumentException(
                            $"general expert '{g.Name}' has rank {gf.Rank} ({gf.InputDim} → {gf.OutputDim}) at module '{module.Name}' but task expert '{tasks.Experts[e].Name}' has rank {f.Rank} ({f.InputDim} → {f.OutputDim}); the factors are averaged entry by entry, so they must agree",
                            nameof(general));
                    }
                    Add(meanA, gf.A);
                    Add(meanBT, gf.BTransposed);
                }
                // Held at the task expert's precision (a 16-bit expert's difference is rounded once).
                Array a = WeightStorage.Keep(Subtract(f.A, meanA, general.Count), f.Precision);
                Array bT = WeightStorage.Keep(Subtract(f.BTransposed, meanBT, general.Count), f.Precision);
                purified[e].Add(new(module.Name, new LoraFactors(a, bT, f.Rank, f.InputDim, f.OutputDim, f.Scaling, f.Alpha, f.StorageType, f.Precision)));
            }
        }
        return new ExpertLibrary(tasks.Experts.Select((x, e) => new Expert(x.Name, purified[e])));
    }

    private static void Add(double[] sum, ReadOnlySpan<float> values)
    {
        for (int i = 0; i < sum.Length; i++)
        {
            sum[i] += values[i];
        }
    }

    private static float[] Subtract(ReadOnlySpan<float> values, double[] sum, int count)
    {
        float[] result = LoraFactors.AllocatePinned(values.Length);
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = (float)(values[i] - sum[i] / count);
        }
        return result;
    }
}
