using System.Globalization;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Merging;

namespace MoErging.Cli;

/// <summary>
/// <c>moerge merge</c>: merges experts into one PEFT adapter (parameter aggregation), or with <c>--base</c>
/// writes the base weights with the merged ΔW added.
/// </summary>
internal static class MergeCommand
{
    private const string Help = """
        usage: moerge merge --experts [NAME=]DIR... --weights w1,w2,... --method METHOD --output OUT
                            [--density D] [--rank K] [--seed S] [--space delta|factors] [--sign total|frequency]
                            [--dtype f32|f16|bf16] [--base BASE.safetensors [--module NAME] [--fan-in-fan-out]]
                            [--force] [--progress]

        Merges the experts, module by module, with one weight per expert (c_i = w_i · s_i below, s_i the
        expert's scaling), and writes the result as a PEFT adapter directory OUT (lora_alpha = r, scaling 1).

        methods (PEFT's names), each with the space it works in:
          cat              factors, exact: A = vstack(c_i A_i), B = hstack(B_i); rank Σ r_i
          linear           factors (PEFT): A = Σ sgn(c_i)·√|c_i|·A_i, B = Σ √|c_i|·B_i; cross terms; equal ranks
          svd              ΔW: Σ c_i B_i A_i truncated to rank K, from the factors without forming ΔW; exact while
                           Σ r_i ≤ 512, a seeded randomized SVD beyond
          ties             top D of each task tensor by magnitude, sign election, disjoint mean
          dare_linear      keep each entry with probability D (seeded), rescale by 1/D, weighted sum
          dare_ties        DARE's pruning, then TIES's sign election and disjoint mean
          magnitude_prune  top D of each task tensor by magnitude, weighted sum

          --space     for ties, dare_* and magnitude_prune: delta (default; on each ΔW_i = s_i B_i A_i, exact,
                      then factored to rank K) or factors (on A and B separately, as PEFT does; equal ranks)
          --density   D in (0, 1], the fraction kept (required by ties, dare_*, magnitude_prune)
          --rank      K for svd and delta-space merges (default: the largest expert rank)
          --seed      seeds DARE and the randomized SVD of large ΔW (default 0)
          --sign      sign election for ties and dare_ties: total (default) or frequency
          --dtype     storage of the merged factors: f32 (default), f16 or bf16
          --base      a safetensors file of base weights: OUT is then that file with W + ΔW for every merged
                      module (or only --module NAME); --fan-in-fan-out for Conv1D bases ([d_in, d_out] weights)
          --force     replace an adapter (or with --base a file) already at OUT; OUT may never be one of the
                      merge's own inputs (an expert directory or BASE, symlinks resolved)
          --progress  draw the progress bar on stderr even when stderr is not a terminal
        """ + "\n" + ExpertsOption.Help;

    private static readonly Dictionary<string, OptionKind> Options = new()
    {
        ["experts"] = OptionKind.Many,
        ["strict"] = OptionKind.Flag,
        ["weights"] = OptionKind.Single,
        ["method"] = OptionKind.Single,
        ["output"] = OptionKind.Single,
        ["density"] = OptionKind.Single,
        ["rank"] = OptionKind.Single,
        ["seed"] = OptionKind.Single,
        ["space"] = OptionKind.Single,
        ["sign"] = OptionKind.Single,
        ["dtype"] = OptionKind.Single,
        ["base"] = OptionKind.Single,
        ["module"] = OptionKind.Single,
        ["fan-in-fan-out"] = OptionKind.Flag,
        ["force"] = OptionKind.Flag,
        ["progress"] = OptionKind.Flag,
        ["help"] = OptionKind.Flag,
    };

    private static readonly Dictionary<string, MergeMethod> Methods = new()
    {
        ["cat"] = MergeMethod.Cat,
        ["linear"] = MergeMethod.Linear,
        ["svd"] = MergeMethod.Svd,
        ["ties"] = MergeMethod.Ties,
        ["dare_linear"] = MergeMethod.DareLinear,
        ["dare_ties"] = MergeMethod.DareTies,
        ["magnitude_prune"] = MergeMethod.MagnitudePrune,
    };

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (Cli.Help(args, Help, stdout))
        {
            return 0;
        }
        CommandLine line = CommandLine.Parse(args, Options);
        line.NoPositionals();
        IReadOnlyList<string> dirs = ExpertsOption.Parse(line.Many("experts")).Directories;
        if (dirs.Count == 0)
        {
            throw new UsageException("--experts is required");
        }
        string output = line.Required("output");
        string methodName = line.Required("method");
        if (!Methods.TryGetValue(methodName, out MergeMethod method))
        {
            throw new UsageException($"--method must be one of {string.Join(", ", Methods.Keys)}, got '{methodName}'");
        }
        double[] weights = line.DoubleList("weights");
        if (weights.Length != dirs.Count)
        {
            throw new UsageException($"--weights needs one weight per expert ({dirs.Count}), got {weights.Length}");
        }
        if (Array.FindIndex(weights, w => !double.IsFinite(w)) is int bad and >= 0)
        {
            throw new UsageException(string.Create(CultureInfo.InvariantCulture, $"--weights: item {bad + 1} is {weights[bad]}; weights must be finite"));
        }
        string? baseFile = line.Single("base");
        foreach (string option in new[] { "module", "fan-in-fan-out" })
        {
            if (line.Has(option) && baseFile is null)
            {
                throw new UsageException($"--{option} applies only with --base");
            }
        }
        if (line.Has("dtype") && baseFile is not null)
        {
            throw new UsageException("--dtype applies only to an adapter output (with --base the base's dtypes are kept)");
        }
        ProgressBar? bar = ProgressBar.For(stderr, line.Flag("progress"), "merge");
        var options = new MergeOptions(method)
        {
            Space = line.Single("space") switch
            {
                null => null,
                "delta" => MergeSpace.Delta,
                "factors" => MergeSpace.Factors,
                string other => throw new UsageException($"--space must be delta or factors, got '{other}'"),
            },
            SignElection = line.Single("sign") switch
            {
                null => null,
                "total" => SignElection.Total,
                "frequency" => SignElection.Frequency,
                string other => throw new UsageException($"--sign must be total or frequency, got '{other}'"),
            },
            Density = line.Double("density"),
            Rank = line.Has("rank") ? line.Int("rank", 0, 1) : null,
            Seed = line.Int("seed", 0, 0),
            Progress = bar is null ? null : new Reporter(bar),
        };
        TensorDType storage = line.Single("dtype") switch
        {
            null or "f32" => TensorDType.F32,
            "f16" => TensorDType.F16,
            "bf16" => TensorDType.BF16,
            string other => throw new UsageException($"--dtype must be f32, f16 or bf16, got '{other}'"),
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }

        CheckOutput(output, dirs, baseFile, line.Flag("force"));

        ExpertLibrary library = ExpertsOption.Load(line, stderr).Library;
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(output)));
        Expert merged;
        try
        {
            merged = ExpertMerge.Merge(library, weights, options, name);
            bar?.Finish($"{library.Modules.Count} modules");
        }
        finally
        {
            bar?.End(); // so an error message starts on a line of its own
        }

        string how = string.Create(CultureInfo.InvariantCulture,
            $"{methodName} in {(ExpertMerge.SpaceOf(options) == MergeSpace.Delta ? "ΔW" : "factor")} space{Details(options)}");
        string ranks = string.Join(", ", merged.Modules.Values.Select(f => f.Rank).Distinct().Order());
        if (baseFile is null)
        {
            PeftAdapter.Write(output, merged, storage);
            stdout.WriteLine($"merged {library.ExpertCount} experts by {how} into {merged.Modules.Count} modules of rank {ranks}: wrote {output}");
        }
        else
        {
            IReadOnlyList<string> changed = BaseWeights.MergeInto(merged, baseFile, output, line.Single("module"), line.Flag("fan-in-fan-out"));
            stdout.WriteLine($"merged {library.ExpertCount} experts by {how}; added ΔW to {changed.Count} base weights of {baseFile}: wrote {output}");
        }
        return 0;
    }

    /// <summary>
    /// Refuses an output that is one of the inputs (it would be replaced while the merge reads it, and lost) and,
    /// without --force, one that would replace an existing adapter or file.
    /// </summary>
    private static void CheckOutput(string output, IReadOnlyList<string> dirs, string? baseFile, bool force)
    {
        string target = Paths.Resolve(output);
        for (int i = 0; i < dirs.Count; i++)
        {
            if (Paths.Comparer.Equals(Paths.Resolve(dirs[i]), target))
            {
                throw new IOException($"--output {output} is expert {i + 1} of --experts ({dirs[i]}); a merge cannot write onto its own input, even with --force");
            }
        }
        if (baseFile is not null && Paths.Comparer.Equals(Paths.Resolve(baseFile), target))
        {
            throw new IOException($"--output {output} is the --base file ({baseFile}); a merge cannot write onto its own input, even with --force");
        }
        if (baseFile is null)
        {
            if (File.Exists(target))
            {
                throw new IOException($"--output {output} is a file; the merged adapter is written as a directory");
            }
            if (!force && (File.Exists(Path.Combine(target, PeftAdapter.ConfigFileName)) || File.Exists(Path.Combine(target, PeftAdapter.WeightsFileName))))
            {
                throw new IOException($"--output {output} already holds an adapter; give --force to replace it");
            }
        }
        else if (Directory.Exists(target))
        {
            throw new IOException($"--output {output} is a directory; with --base the output is a safetensors file");
        }
        else if (!force && File.Exists(target))
        {
            throw new IOException($"--output {output} already exists; give --force to replace it");
        }
    }

    private static string Details(MergeOptions o)
    {
        var parts = new List<string>();
        if (o.Density is double d)
        {
            parts.Add(string.Create(CultureInfo.InvariantCulture, $"density {d}"));
        }
        if (o.Method is MergeMethod.DareLinear or MergeMethod.DareTies)
        {
            parts.Add($"seed {o.Seed}");
        }
        return parts.Count == 0 ? "" : $" ({string.Join(", ", parts)})";
    }

    /// <summary>Forwards merge progress to the bar, on the merging thread.</summary>
    private sealed class Reporter(ProgressBar bar) : IProgress<MergeProgress>
    {
        public void Report(MergeProgress value) => bar.Update(value.Fraction, value.ModuleName);
    }
}
