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
    private const string Help = """
        usage: moerge forward --experts DIR... --module NAME --input IN.safetensors --output OUT.safetensors
                              --router uniform|fixed|arrow|assigned [--top-k K] [--temperature T]
                              [--weights w1,w2,...] [--backend B]

        Experts are numbered in the order given. --module matches the module whose full PEFT name
        ends with NAME at a dot boundary.

        IN holds  x [T, d_in] (F32, F16 or BF16), optionally base [T, d_out] (added; zeros when absent),
                  and for --router assigned: expert_ids [T, k] (I32, -1 = no expert) and expert_weights [T, k] (F32).
        OUT holds y [T, d_out] F32, expert_ids [T, k] I32 and expert_weights [T, k] F32 (k = E for dense routers).

          --router        uniform (dense 1/E), fixed (dense, --weights), arrow (top-k of |x·p_e|), assigned (from IN)
          --top-k         arrow: experts kept per token (default min(3, E), PEFT's default)
          --temperature   arrow: softmax temperature (default 1)
          --weights       fixed: one weight per expert, comma-separated
          --backend       auto (default: CUDA, then OpenCL, then the CPU), cpu, cuda, opencl or gpu-simulator
        """;

    private static readonly Dictionary<string, OptionKind> Options = new()
    {
        ["experts"] = OptionKind.Many,
        ["module"] = OptionKind.Single,
        ["input"] = OptionKind.Single,
        ["output"] = OptionKind.Single,
        ["router"] = OptionKind.Single,
        ["top-k"] = OptionKind.Single,
        ["temperature"] = OptionKind.Single,
        ["weights"] = OptionKind.Single,
        ["backend"] = OptionKind.Single,
        ["help"] = OptionKind.Flag,
    };

    public static int Run(string[] args, TextWriter stdout)
    {
        if (Cli.Help(args, Help, stdout))
        {
            return 0;
        }
        CommandLine line = CommandLine.Parse(args, Options);
        line.NoPositionals();
        IReadOnlyList<string> dirs = line.Many("experts");
        if (dirs.Count == 0)
        {
            throw new UsageException("--experts is required");
        }
        string moduleName = line.Required("module"), input = line.Required("input"), output = line.Required("output");
        string router = line.Required("router");
        if (router is not ("uniform" or "fixed" or "arrow" or "assigned"))
        {
            throw new UsageException($"--router must be uniform, fixed, arrow or assigned, got '{router}'");
        }
        foreach (var (option, owner) in new[] { ("top-k", "arrow"), ("temperature", "arrow"), ("weights", "fixed") })
        {
            if (line.Has(option) && router != owner)
            {
                throw new UsageException($"--{option} applies only to --router {owner}");
            }
        }
        Backend backend = Cli.ParseBackend(line.Single("backend"));

        ExpertLibrary library = ExpertLibrary.Load(dirs);
        AdaptedModule module = library.Module(moduleName);
        int experts = library.ExpertCount;

        float[] x, yBase;
        int tokens;
        RoutingDecision decision = new();
        Router? chosen = null;
        using (SafeTensorsFile file = SafeTensorsFile.Open(input))
        {
            TensorInfo xInfo = Require(file, "x");
            if (xInfo.Rank != 2 || xInfo.Shape[1] != module.InputDim)
            {
                throw new InvalidDataException($"{input}: x has shape {xInfo.ShapeText}; module '{module.Name}' needs [T, {module.InputDim}]");
            }
            tokens = checked((int)xInfo.Shape[0]);
            x = file.ReadSingles(xInfo);
            yBase = new float[checked(tokens * module.OutputDim)];
            if (file.TryGetTensor("base", out TensorInfo? baseInfo))
            {
                if (baseInfo.Rank != 2 || baseInfo.Shape[0] != tokens || baseInfo.Shape[1] != module.OutputDim)
                {
                    throw new InvalidDataException($"{input}: base has shape {baseInfo.ShapeText}; expected [{tokens}, {module.OutputDim}]");
                }
                file.ReadSingles(baseInfo, yBase);
            }
            switch (router)
            {
                case "uniform":
                    chosen = new UniformRouter(experts);
                    break;
                case "fixed":
                    float[] weights = line.FloatList("weights");
                    if (weights.Length != experts)
                    {
                        throw new UsageException($"--weights needs one weight per expert ({experts}), got {weights.Length}");
                    }
                    chosen = new FixedRouter(weights);
                    break;
                case "arrow":
                    int topK = line.Int("top-k", Math.Min(3, experts), 1, experts);
                    chosen = new ArrowRouter(module, new RoutingOptions(topK, line.Float("temperature") ?? 1f));
                    break;
                default:
                    AssignFrom(file, tokens, experts, decision);
                    break;
            }
        }

        using Engine engine = Engine.Create(new EngineOptions { Backend = backend });
        using Session session = engine.CreateSession();
        float[] y = yBase;
        if (chosen is null)
        {
            session.Forward(module, decision, x, y);
        }
        else
        {
            session.Forward(module, chosen, x, decision, y);
        }

        var writer = new SafeTensorsWriter();
        writer.Add("y", y, [tokens, module.OutputDim]);
        writer.Add("expert_ids", decision.ExpertIds, [tokens, decision.TopK]);
        writer.Add("expert_weights", decision.Weights, [tokens, decision.TopK]);
        writer.WriteTo(output);
        stdout.WriteLine($"{tokens} tokens through '{module.Name}' ({module.InputDim} → {module.OutputDim}) with {router} routing over {experts} experts on {engine.Backend}: wrote {output}");
        return 0;
    }

    private static void AssignFrom(SafeTensorsFile file, int tokens, int experts, RoutingDecision decision)
    {
        TensorInfo ids = Require(file, "expert_ids"), weights = Require(file, "expert_weights");
        if (ids.Rank != 2 || ids.Shape[0] != tokens || weights.Rank != 2 || !ids.Shape.SequenceEqual(weights.Shape) || ids.Shape[1] < 1)
        {
            throw new InvalidDataException($"{file.Label}: expert_ids {ids.ShapeText} and expert_weights {weights.ShapeText} must both be [{tokens}, k] with k ≥ 1");
        }
        if (weights.DType != TensorDType.F32)
        {
            throw new InvalidDataException($"{file.Label}: expert_weights must be F32, not {TensorDTypes.Name(weights.DType)}");
        }
        try
        {
            decision.Assign(file.ReadInt32s(ids), file.ReadSingles(weights), (int)ids.Shape[1], experts);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{file.Label}: {e.Message}");
        }
    }

    private static TensorInfo Require(SafeTensorsFile file, string name) =>
        file.TryGetTensor(name, out TensorInfo? t) ? t : throw new InvalidDataException($"{file.Label}: no tensor named '{name}'");
}
