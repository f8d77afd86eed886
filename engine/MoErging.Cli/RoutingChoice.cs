using System.Globalization;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;
using MoErging.Samples;

namespace MoErging.Cli;

/// <summary>
/// The routing options <c>forward</c> and <c>route</c> share: which router (and its parameters), the
/// granularity and the aggregation; checked as usage first, then built once the experts are loaded.
/// </summary>
internal static class RoutingChoice
{
    public const string Routers = "uniform, fixed, arrow, phatgoose, centroid, classifier or assigned";

    public const string Help = """
          --router        uniform (dense 1/E), fixed (dense, --weights), arrow (top-k of |x·p_e|),
                          phatgoose (gates from each expert's phatgoose_gates.safetensors), centroid (centroids
                          from each expert's centroids.safetensors), classifier (--classifier FILE from
                          'moerge train-router'), assigned (expert_ids and expert_weights from IN)
          --top-k         arrow, phatgoose, centroid, classifier: experts kept per token
                          (defaults: arrow min(3, E) or the experts' arrow_config, phatgoose min(2, E), centroid and classifier E: dense)
          --temperature   the same routers: softmax temperature (default 1)
          --weights       fixed: one weight per expert, comma-separated
          --classifier    classifier: the router file
          --general DIR...  arrow: general experts whose mean A and mean B are subtracted from every expert
                          first (GenKnowSub); the forward then uses the subtracted experts, as PEFT does
          --granularity   token (default), example (one decision per sequence) or task (one for the batch,
                          from the mean row); expert_ids and expert_weights still have one row per token
          --sequence-lengths n1,n2,...  example: rows per sequence, summing to T
          --pool          example: mean (default) or last row of each sequence
        """;

    public const string AggregationHelp = """
          --aggregation   output (default: y += Σ w s B (A x)) or parameter (y += s (Σ w B)(Σ w A) x; the
                          chosen experts must share one rank and scaling)
        """;

    /// <summary>A command's own options together with the routing options.</summary>
    public static Dictionary<string, OptionKind> OptionsWith(Dictionary<string, OptionKind> own)
    {
        foreach (string single in new[] { "router", "top-k", "temperature", "weights", "classifier", "granularity", "sequence-lengths", "pool", "aggregation" })
        {
            own.Add(single, OptionKind.Single);
        }
        own.Add("general", OptionKind.Many);
        return own;
    }

    /// <summary>The router kind, with every option checked against it (usage errors, before any file is read).</summary>
    public static string Check(CommandLine line)
    {
        string router = line.Required("router");
        if (router is not ("uniform" or "fixed" or "arrow" or "phatgoose" or "centroid" or "classifier" or "assigned"))
        {
            throw new UsageException($"--router must be {Routers}, got '{router}'");
        }
        string[] scored = ["arrow", "phatgoose", "centroid", "classifier"];
        foreach (var (option, owners) in new[]
        {
            ("top-k", scored), ("temperature", scored), ("weights", ["fixed"]), ("classifier", ["classifier"]), ("general", ["arrow"]),
        })
        {
            if (line.Has(option) && !owners.Contains(router))
            {
                throw new UsageException($"--{option} applies only to --router {string.Join(", ", owners)}");
            }
        }
        if (line.Float("temperature") is float temperature)
        {
            try
            {
                RoutingOptions.ValidateTemperature(temperature);
            }
            catch (ArgumentOutOfRangeException e)
            {
                throw new UsageException($"--temperature {line.Single("temperature")}: {e.Message}");
            }
        }
        if (router == "classifier" && !line.Has("classifier"))
        {
            throw new UsageException("--router classifier needs --classifier FILE");
        }
        string granularity = line.Single("granularity") ?? "token";
        if (granularity is not ("token" or "example" or "task"))
        {
            throw new UsageException($"--granularity must be token, example or task, got '{granularity}'");
        }
        if (granularity != "token" && router == "assigned")
        {
            throw new UsageException("--granularity applies to routers; assigned decisions are given per token");
        }
        if (granularity == "example" && !line.Has("sequence-lengths"))
        {
            throw new UsageException("--granularity example needs --sequence-lengths n1,n2,...");
        }
        foreach (string option in new[] { "sequence-lengths", "pool" })
        {
            if (line.Has(option) && granularity != "example")
            {
                throw new UsageException($"--{option} applies only to --granularity example");
            }
        }
        _ = Granularity(line);
        _ = Aggregation(line);
        return router;
    }

    /// <summary>The granularity the options ask for.</summary>
    public static RoutingGranularity Granularity(CommandLine line)
    {
        switch (line.Single("granularity") ?? "token")
        {
            case "token":
                return RoutingGranularity.Token;
            case "task":
                return RoutingGranularity.Task;
            default:
                Pooling pool = (line.Single("pool") ?? "mean") switch
                {
                    "mean" => Pooling.Mean,
                    "last" => Pooling.Last,
                    string other => throw new UsageException($"--pool must be mean or last, got '{other}'"),
                };
                string[] parts = line.Required("sequence-lengths").Split(',', StringSplitOptions.TrimEntries);
                var lengths = new int[parts.Length];
                for (int i = 0; i < parts.Length; i++)
                {
                    if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out lengths[i]) || lengths[i] < 1)
                    {
                        throw new UsageException($"--sequence-lengths: item {i + 1} ('{parts[i]}') is not a length of at least 1");
                    }
                }
                return RoutingGranularity.Example(lengths, pool);
        }
    }

    /// <summary>The aggregation the options ask for.</summary>
    public static Aggregation Aggregation(CommandLine line) => (line.Single("aggregation") ?? "output") switch
    {
        "output" => Execution.Aggregation.Output,
        "parameter" => Execution.Aggregation.Parameter,
        string other => throw new UsageException($"--aggregation must be output or parameter, got '{other}'"),
    };

    /// <summary>
    /// Builds the router (null for assigned). With --general the module returned is the one of the
    /// subtracted library, which the forward must then use.
    /// </summary>
    public static (Router? Router, AdaptedModule Module) Build(CommandLine line, string kind, AdaptedModule module)
    {
        int experts = module.ExpertCount;
        RoutingOptions Scored(int defaultTopK) => new(line.Int("top-k", defaultTopK, 1, experts), line.Float("temperature") ?? 1f);
        switch (kind)
        {
            case "uniform":
                return (new UniformRouter(experts), module);
            case "fixed":
                float[] weights = line.FloatList("weights");
                if (weights.Length != experts)
                {
                    throw new UsageException($"--weights needs one weight per expert ({experts}), got {weights.Length}");
                }
                return (new FixedRouter(weights), module);
            case "arrow":
                if (line.Has("general"))
                {
                    Expert[] general = line.Many("general").Select(d => Expert.Load(d)).ToArray();
                    module = GeneralKnowledgeSubtraction.Apply(module.Library, general).Module(module.Name);
                }
                RoutingOptions arrow = ArrowRouter.DefaultOptionsFor(module.Library);
                return (new ArrowRouter(module, new(line.Int("top-k", arrow.TopK, 1, experts), line.Float("temperature") ?? arrow.Temperature)), module);
            case "phatgoose":
                return (PhatgooseRouter.Load(module, Scored(PhatgooseRouter.DefaultOptionsFor(experts).TopK)), module);
            case "centroid":
                return (CentroidRouter.Load(module, Scored(experts)), module);
            case "classifier":
                return (ClassifierRouter.Load(line.Required("classifier"), module, Scored(experts)), module);
            default:
                return (null, module);
        }
    }

    /// <summary>Loads a labelled routing set for <paramref name="module"/>, checking it has rows, their width and that every label names an expert.</summary>
    public static RoutingDataset LoadSet(string path, AdaptedModule module)
    {
        RoutingDataset set = RoutingDataset.Load(path);
        if (set.RowCount == 0)
        {
            throw new InvalidDataException($"{path}: the routing set is empty (x has no rows)");
        }
        if (set.InputDim != module.InputDim)
        {
            throw new InvalidDataException($"{path}: rows of {set.InputDim} values, but module '{module.Name}' has d_in = {module.InputDim}");
        }
        int experts = module.ExpertCount;
        for (int t = 0; t < set.RowCount; t++)
        {
            if (set.Experts[t] >= experts)
            {
                throw new InvalidDataException($"{path}: row {t} is labelled expert {set.Experts[t]}, but there are {experts} experts");
            }
        }
        return set;
    }

    /// <summary>Reads x <c>[T, d_in]</c> from an input file and, when present, base <c>[T, d_out]</c> (zeros otherwise).</summary>
    public static (float[] X, float[] Base, int Tokens) ReadInput(SafeTensorsFile file, AdaptedModule module)
    {
        TensorInfo xInfo = Require(file, "x");
        if (xInfo.Rank != 2 || xInfo.Shape[1] != module.InputDim)
        {
            throw new InvalidDataException($"{file.Label}: x has shape {xInfo.ShapeText}; module '{module.Name}' needs [T, {module.InputDim}]");
        }
        int tokens = checked((int)xInfo.Shape[0]);
        float[] x = file.ReadSingles(xInfo);
        var yBase = new float[checked(tokens * module.OutputDim)];
        if (file.TryGetTensor("base", out TensorInfo? baseInfo))
        {
            if (baseInfo.Rank != 2 || baseInfo.Shape[0] != tokens || baseInfo.Shape[1] != module.OutputDim)
            {
                throw new InvalidDataException($"{file.Label}: base has shape {baseInfo.ShapeText}; expected [{tokens}, {module.OutputDim}]");
            }
            file.ReadSingles(baseInfo, yBase);
        }
        return (x, yBase, tokens);
    }

    /// <summary>Assigned routing: expert_ids <c>[T, k]</c> (I32) and expert_weights <c>[T, k]</c> (F32) from the input file.</summary>
    public static void AssignFrom(SafeTensorsFile file, int tokens, int experts, RoutingDecision decision)
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
