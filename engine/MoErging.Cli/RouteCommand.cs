using System.Globalization;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;

namespace MoErging.Cli;

/// <summary>
/// <c>moerge route</c>: routes the rows of x at one module and reports what the router did: load per expert,
/// entropy of the weights and top-1 shares, as a summary, as JSON, and as pictures.
/// </summary>
internal static class RouteCommand
{
    private const string Help = $"""
        usage: moerge route --experts [NAME=]DIR... --module NAME --input IN.safetensors
                            --router uniform|fixed|arrow|phatgoose|centroid|classifier|assigned [router options]
                            [--granularity token|example|task] [--sequence-lengths n1,n2,...] [--pool mean|last]
                            [--output OUT.safetensors] [--report DIR] [--json] [--backend B] [--device D]
                            [--weight-precision f32|bf16|f16]

        Routes x [T, d_in] from IN (as 'moerge forward' does, without applying the experts) and prints the
        routing statistics: per expert its load (slots), weight and top-1 tokens; the mean entropy of the
        weights (nats, at most ln k) and the mean weight of each token's top slot.

        {RoutingChoice.Help}
          --output        write expert_ids [T, k] I32 and expert_weights [T, k] F32
          --report        write heatmap.png (tokens × experts, |weight|), load.png and statistics.json into DIR
          --json          print the statistics as JSON
        {EngineChoice.Help}
        {ExpertsOption.Help}
        """;

    private static readonly Dictionary<string, OptionKind> Options = Without(EngineChoice.With(RoutingChoice.OptionsWith(new()
    {
        ["experts"] = OptionKind.Many,
        ["strict"] = OptionKind.Flag,
        ["module"] = OptionKind.Single,
        ["input"] = OptionKind.Single,
        ["output"] = OptionKind.Single,
        ["report"] = OptionKind.Single,
        ["json"] = OptionKind.Flag,
        ["help"] = OptionKind.Flag,
    })), "aggregation");

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
        string moduleName = line.Required("module"), input = line.Required("input");
        string kind = RoutingChoice.Check(line);
        RoutingGranularity granularity = RoutingChoice.Granularity(line);
        EngineOptions engineOptions = EngineChoice.Options(line);

        ExpertLibrary library = ExpertsOption.Load(line, stderr, precision: engineOptions.WeightPrecision).Library;
        var (router, module) = RoutingChoice.Build(line, kind, library.Module(moduleName));
        var decision = new RoutingDecision();
        float[] x;
        int tokens;
        using (SafeTensorsFile file = SafeTensorsFile.Open(input))
        {
            (x, _, tokens) = RoutingChoice.ReadInput(file, module);
            if (router is null)
            {
                RoutingChoice.AssignFrom(file, tokens, library.ExpertCount, decision);
            }
        }
        if (router is not null)
        {
            using Engine engine = Engine.Create(engineOptions);
            using Session session = engine.CreateSession();
            session.Route(module, router, granularity, x, decision);
        }

        string[] names = [.. library.Experts.Select(e => e.Name)];
        RoutingStatistics statistics = RoutingStatistics.Of(decision);
        var outputs = new OutputFiles();
        if (line.Single("output") is string output)
        {
            outputs.Add(output, new SafeTensorsWriter()
                .Add("expert_ids", decision.ExpertIds, [tokens, decision.TopK])
                .Add("expert_weights", decision.Weights, [tokens, decision.TopK])
                .WriteTo);
        }
        string[] written = line.Single("report") is string report ? RoutingReport.AddTo(outputs, report, decision, names) : [];
        outputs.Commit();
        if (line.Flag("json"))
        {
            stdout.WriteLine(RoutingReport.Json(statistics, names));
            return 0;
        }
        Summary(statistics, names, kind, module, stdout);
        foreach (string path in written)
        {
            stdout.WriteLine($"wrote {path}");
        }
        return 0;
    }

    private static void Summary(RoutingStatistics s, string[] names, string kind, AdaptedModule module, TextWriter stdout)
    {
        var c = CultureInfo.InvariantCulture;
        stdout.WriteLine($"{s.TokenCount} tokens routed with {kind} at '{module.Name}' (k = {s.TopK} of {s.ExpertCount} experts)");
        stdout.WriteLine(string.Create(c, $"mean entropy of the weights {s.MeanEntropy:F3} nats (max ln k = {s.MaxEntropy:F3}); mean top-1 weight {s.MeanTopOneWeight:F3}; {s.UnusedExperts} experts unused"));
        int width = Math.Max(6, names.Max(n => n.Length));
        stdout.WriteLine($"  {"expert".PadRight(width)}  {"load",6}  {"weight",9}  {"top-1",6}  {"top-1 share",11}");
        for (int e = 0; e < s.ExpertCount; e++)
        {
            double share = s.TokenCount == 0 ? 0 : (double)s.TopOneCount[e] / s.TokenCount;
            stdout.WriteLine(string.Create(c, $"  {names[e].PadRight(width)}  {s.Load[e],6}  {s.WeightMass[e],9:F3}  {s.TopOneCount[e],6}  {100 * share,10:F1}%"));
        }
    }

    private static Dictionary<string, OptionKind> Without(Dictionary<string, OptionKind> options, string name)
    {
        options.Remove(name);
        return options;
    }
}
