using System.Diagnostics;
using System.Globalization;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;
using MoErging.Samples;

namespace MoErging.Cli;

/// <summary>
/// <c>moerge evaluate</c>: runs every applicable router on a labelled routing set and prints one table side by
/// side: top-1 accuracy against the label, mean weight on the true expert, time per token, and the top-1
/// accuracy per task. With <c>--synthetic</c> the library, the routers' data and the set are drawn from a seed.
/// </summary>
internal static class EvaluateCommand
{
    private const string Help = $"""
        usage: moerge evaluate --experts [NAME=]DIR... --module NAME --data SET.safetensors [--classifier FILE] [--backend B]
               moerge evaluate --synthetic [--experts E] [--dim D] [--rank R] [--rows N] [--held-out H]
                               [--strength S] [--seed S] [--backend B]
               (either form also takes [--device D] [--weight-precision f32|bf16|f16])

        Routes every row of a labelled routing set (x [N, d_in], expert [N] I32: the true expert, task [N] I32
        with task names in the metadata; see 'moerge train-router') with each router that applies, at its
        default options, and prints per router: top-1 accuracy (the top slot is the labelled expert), the mean
        weight the router gives the labelled expert, the routing time per token, and the top-1 accuracy per task.
        Routers: uniform (the baseline), arrow, phatgoose (when every expert ships gates for the module),
        centroid (when every expert ships centroids), classifier (with --classifier).

        --synthetic draws everything from --seed instead: E experts (default 8) of rank R (default 4) at
        d_in = D (default 64) with distinct dominant input directions; PHATGOOSE gates near those directions;
        centroids from N (default 200) samples of each expert's task; a classifier trained on N other rows
        per expert; and a test set of N rows per expert task plus H (default 4) held-out tasks, 45° from
        their nearest expert. Rows are S (default 3) along the task direction plus unit Gaussian noise.

        {EngineChoice.Help}
        {ExpertsOption.Help}
        """;

    private static readonly Dictionary<string, OptionKind> Options = EngineChoice.With(new()
    {
        ["experts"] = OptionKind.Many,
        ["strict"] = OptionKind.Flag,
        ["module"] = OptionKind.Single,
        ["data"] = OptionKind.Single,
        ["classifier"] = OptionKind.Single,
        ["synthetic"] = OptionKind.Flag,
        ["dim"] = OptionKind.Single,
        ["rank"] = OptionKind.Single,
        ["rows"] = OptionKind.Single,
        ["held-out"] = OptionKind.Single,
        ["strength"] = OptionKind.Single,
        ["seed"] = OptionKind.Single,
        ["help"] = OptionKind.Flag,
    });

    private const string SyntheticModule = "base_model.model.model.layers.0.self_attn.q_proj";

    private sealed record Candidate(string Name, Router? Router, string? Skipped);

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (Cli.Help(args, Help, stdout))
        {
            return 0;
        }
        CommandLine line = CommandLine.Parse(args, Options);
        line.NoPositionals();
        EngineOptions engineOptions = EngineChoice.Options(line);
        bool synthetic = line.Flag("synthetic");
        foreach (string option in synthetic ? ["module", "data", "classifier"] : new[] { "dim", "rank", "rows", "held-out", "strength", "seed" })
        {
            if (line.Has(option))
            {
                throw new UsageException(synthetic ? $"--{option} does not apply to --synthetic" : $"--{option} applies only to --synthetic");
            }
        }
        var (module, set, candidates, description) = synthetic ? Synthetic(line, engineOptions.WeightPrecision) : FromFiles(line, stderr, engineOptions.WeightPrecision);

        using Engine engine = Engine.Create(engineOptions);
        using Session session = engine.CreateSession();
        stdout.WriteLine(description);
        stdout.WriteLine($"backend: {engine.Backend} ({engine.BackendReason}); {engine.CpuThreads} CPU threads");
        stdout.WriteLine();
        Table(session, module, set, candidates, stdout);
        return 0;
    }

    private static (AdaptedModule, RoutingDataset, List<Candidate>, string) Synthetic(CommandLine line, WeightPrecision precision)
    {
        IReadOnlyList<string> given = line.Many("experts");
        int experts = 8;
        if (given.Count > 1 || (given.Count == 1 && !int.TryParse(given[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out experts)) || experts is < 2 or > 1024)
        {
            throw new UsageException("with --synthetic, --experts is the number of experts, in [2, 1024]");
        }
        int dim = line.Int("dim", 64, 2, 1 << 14), rank = line.Int("rank", 4, 1, 256), rows = line.Int("rows", 200, 1, 100_000);
        int heldOut = line.Int("held-out", 4, 0, 1024), seed = line.Int("seed", 1, 0);
        float strength = line.Float("strength") ?? 3f;
        if (!float.IsFinite(strength) || strength <= 0)
        {
            throw new UsageException("--strength must be a positive number");
        }

        SyntheticExperts library = SyntheticExperts.Create(experts, dim, rank, [SyntheticModule], seed, precision);
        AdaptedModule module = library.Library.Module(SyntheticModule);
        // Each router gets data of its own kind, each drawn from its own seed.
        RoutingDataset expertData = library.RoutingSet(rows, 0, strength, seed + 1);
        var centroids = new float[experts * dim];
        for (int e = 0; e < experts; e++)
        {
            CentroidRouter.Centroid(expertData.Rows.Slice(e * rows * dim, rows * dim), dim).CopyTo(centroids, e * dim);
        }
        RoutingDataset training = library.RoutingSet(rows, 0, strength, seed + 2);
        RoutingDataset test = library.RoutingSet(rows, heldOut, strength, seed + 3);
        List<Candidate> candidates =
        [
            new("uniform", new UniformRouter(experts), null),
            new("arrow", new ArrowRouter(module, new RoutingOptions(RoutingContract.DefaultTopK(ArrowRouter.DefaultOptions.TopK, experts))), null),
            new("phatgoose", new PhatgooseRouter(module, library.Gates(seed + 4), PhatgooseRouter.DefaultOptionsFor(experts)), null),
            new("centroid", new CentroidRouter(module, centroids), null),
            new("classifier", ClassifierRouter.Train(training.Rows, training.Experts, dim, experts), null),
        ];
        string description = string.Create(CultureInfo.InvariantCulture,
            $"synthetic (seed {seed}): {experts} experts of rank {rank} at d_in = {dim}; {experts} expert tasks + {heldOut} held-out × {rows} rows, strength {strength}");
        return (module, test, candidates, description);
    }

    private static (AdaptedModule, RoutingDataset, List<Candidate>, string) FromFiles(CommandLine line, TextWriter stderr, WeightPrecision precision)
    {
        IReadOnlyList<string> dirs = ExpertsOption.Parse(line.Many("experts")).Directories;
        if (dirs.Count == 0)
        {
            throw new UsageException("give --experts DIR... --module NAME --data SET, or --synthetic");
        }
        string data = line.Required("data");
        ExpertLibrary library = ExpertsOption.Load(line, stderr, precision: precision).Library;
        AdaptedModule module = library.Module(line.Required("module"));
        RoutingDataset set = RoutingChoice.LoadSet(data, module);
        int experts = library.ExpertCount;
        List<Candidate> candidates =
        [
            new("uniform", new UniformRouter(experts), null),
            new("arrow", new ArrowRouter(module, new RoutingOptions(RoutingContract.DefaultTopK(ArrowRouter.DefaultOptions.TopK, experts))), null),
            Optional("phatgoose", () => PhatgooseRouter.Load(module, PhatgooseRouter.DefaultOptionsFor(experts))),
            Optional("centroid", () => CentroidRouter.Load(module)),
            line.Single("classifier") is string classifier
                ? new("classifier", ClassifierRouter.Load(classifier, module, new RoutingOptions(experts)), null)
                : new("classifier", null, "no --classifier given"),
        ];
        return (module, set, candidates, $"{data}: {set.RowCount} rows of {set.InputDim} in {set.TaskNames.Count} tasks; {experts} experts at '{module.Name}'");
    }

    /// <summary>A router whose files may be absent: absent files skip it (with the reason), bad files fail.</summary>
    private static Candidate Optional(string name, Func<Router> load)
    {
        try
        {
            return new(name, load(), null);
        }
        catch (FileNotFoundException e)
        {
            return new(name, null, e.Message);
        }
    }

    private static void Table(Session session, AdaptedModule module, RoutingDataset set, List<Candidate> candidates, TextWriter stdout)
    {
        var c = CultureInfo.InvariantCulture;
        List<Candidate> run = candidates.Where(x => x.Router is not null).ToList();
        int rows = set.RowCount, tasks = set.TaskNames.Count;
        var top1 = new double[run.Count];
        var trueWeight = new double[run.Count];
        var microseconds = new double[run.Count];
        var perTask = new double[run.Count, tasks];
        var rowsPerTask = new int[tasks];
        foreach (int task in set.Tasks)
        {
            rowsPerTask[task]++;
        }
        var decision = new RoutingDecision();
        for (int r = 0; r < run.Count; r++)
        {
            microseconds[r] = TimeRoute(session, module, run[r].Router!, set.Rows, decision) / Math.Max(1, rows) * 1e6;
            for (int t = 0; t < rows; t++)
            {
                int label = set.Experts[t];
                ReadOnlySpan<int> ids = decision.ExpertIdsOf(t);
                bool hit = ids[0] == label;
                top1[r] += hit ? 1 : 0;
                perTask[r, set.Tasks[t]] += hit ? 1 : 0;
                for (int s = 0; s < ids.Length; s++)
                {
                    trueWeight[r] += ids[s] == label ? decision.WeightsOf(t)[s] : 0;
                }
            }
        }

        int first = Math.Max(32, set.TaskNames.Max(n => n.Length) + 6);
        string Row(string label, Func<int, string> cell) => label.PadRight(first) + string.Concat(Enumerable.Range(0, run.Count).Select(r => cell(r).PadLeft(12)));
        stdout.WriteLine(Row("", r => run[r].Name));
        stdout.WriteLine(Row("top-1 accuracy", r => string.Create(c, $"{100 * top1[r] / rows:F1}%")));
        stdout.WriteLine(Row("mean weight on the true expert", r => string.Create(c, $"{trueWeight[r] / rows:F3}")));
        stdout.WriteLine(Row("µs per token (routing)", r => string.Create(c, $"{microseconds[r]:F3}")));
        stdout.WriteLine("top-1 accuracy per task:");
        for (int task = 0; task < tasks; task++)
        {
            stdout.WriteLine(Row($"  {set.TaskNames[task]}", r => rowsPerTask[task] == 0 ? "-" : string.Create(c, $"{100 * perTask[r, task] / rowsPerTask[task]:F1}%")));
        }
        foreach (Candidate skipped in candidates.Where(x => x.Router is null))
        {
            stdout.WriteLine($"{skipped.Name}: not run ({skipped.Skipped})");
        }
    }

    /// <summary>Median seconds of five routings of all rows, after one warm-up; the last decision stays in <paramref name="decision"/>.</summary>
    private static double TimeRoute(Session session, AdaptedModule module, Router router, ReadOnlySpan<float> rows, RoutingDecision decision)
    {
        session.Route(module, router, rows, decision);
        var seconds = new double[5];
        for (int i = 0; i < seconds.Length; i++)
        {
            long start = Stopwatch.GetTimestamp();
            session.Route(module, router, rows, decision);
            seconds[i] = Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        Array.Sort(seconds);
        return seconds[seconds.Length / 2];
    }
}
