using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;

namespace MoErging.Cli;

/// <summary>
/// <c>moerge forward</c>: routes the rows of x among the experts at one module and writes
/// y = base + mixture with the routing decision.
/// </summary>
internal static class ForwardCommand
{
    private const string Help = $"""
        usage: moerge forward --experts [NAME=]DIR... --module NAME --input IN.safetensors --output OUT.safetensors
                              --router uniform|fixed|arrow|phatgoose|centroid|classifier|assigned [--top-k K]
                              [--temperature T] [--weights w1,w2,...] [--classifier FILE] [--general DIR...]
                              [--granularity token|example|task] [--sequence-lengths n1,n2,...] [--pool mean|last]
                              [--aggregation output|parameter] [--backend B] [--device D]
                              [--weight-precision f32|bf16|f16]

        Experts are numbered in the order given. --module matches the module whose full PEFT name
        ends with NAME at a dot boundary.

        IN holds  x [T, d_in] (F32, F16 or BF16), optionally base [T, d_out] (added; zeros when absent),
                  and for --router assigned: expert_ids [T, k] (I32, -1 = no expert) and expert_weights [T, k] (F32).
        OUT holds y [T, d_out] F32, expert_ids [T, k] I32 and expert_weights [T, k] F32 (k = E for dense routers).

        {RoutingChoice.Help}
        {RoutingChoice.AggregationHelp}
        {EngineChoice.Help}
        {ExpertsOption.Help}
        """;

    private static readonly Dictionary<string, OptionKind> Options = EngineChoice.With(RoutingChoice.OptionsWith(new()
    {
        ["experts"] = OptionKind.Many,
        ["strict"] = OptionKind.Flag,
        ["module"] = OptionKind.Single,
        ["input"] = OptionKind.Single,
        ["output"] = OptionKind.Single,
        ["help"] = OptionKind.Flag,
    }));

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
        string moduleName = line.Required("module"), input = line.Required("input"), output = line.Required("output");
        string kind = RoutingChoice.Check(line);
        RoutingGranularity granularity = RoutingChoice.Granularity(line);
        Aggregation aggregation = RoutingChoice.Aggregation(line);
        EngineOptions engineOptions = EngineChoice.Options(line);

        ExpertLibrary library = ExpertsOption.Load(line, stderr, precision: engineOptions.WeightPrecision).Library;
        var (router, module) = RoutingChoice.Build(line, kind, library.Module(moduleName));

        float[] x, y;
        int tokens;
        var decision = new RoutingDecision();
        using (SafeTensorsFile file = SafeTensorsFile.Open(input))
        {
            (x, y, tokens) = RoutingChoice.ReadInput(file, module);
            if (router is null)
            {
                RoutingChoice.AssignFrom(file, tokens, library.ExpertCount, decision);
            }
        }

        using Engine engine = Engine.Create(engineOptions);
        using Session session = engine.CreateSession();
        if (router is null)
        {
            session.Forward(module, decision, aggregation, x, y);
        }
        else
        {
            session.Forward(module, router, granularity, aggregation, x, decision, y);
        }

        var writer = new SafeTensorsWriter();
        writer.Add("y", y, [tokens, module.OutputDim]);
        writer.Add("expert_ids", decision.ExpertIds, [tokens, decision.TopK]);
        writer.Add("expert_weights", decision.Weights, [tokens, decision.TopK]);
        new OutputFiles().Add(output, writer.WriteTo).Commit();
        stdout.WriteLine($"{tokens} tokens through '{module.Name}' ({module.InputDim} → {module.OutputDim}) with {kind} routing ({granularity.Kind.ToString().ToLowerInvariant()} level, {aggregation.ToString().ToLowerInvariant()} mixing) over {library.ExpertCount} experts on {engine.Backend}: wrote {output}");
        return 0;
    }
}
