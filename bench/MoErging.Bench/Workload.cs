using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;
using MoErging.Samples;

namespace MoErging.Bench;

/// <summary>
/// The standard CPU workload (BRIEF §6): E = 64 experts, d_in = d_out = 4096, r = 16, Arrow top-2, F32 unless
/// another precision is asked for (the library then holds its factors at it, rounded once, as an engine of that
/// precision reads them), tokens of random tasks. Everything is seeded, so the benchmark process and the reporting
/// process build the same library and routing decision.
/// </summary>
internal sealed class Workload
{
    public const int Experts = 64, Dim = 4096, Rank = 16, TopK = 2;
    public const string ModuleName = "base_model.model.model.layers.0.self_attn.q_proj";

    private static readonly Dictionary<(int Tokens, int Experts, WeightPrecision Precision), ForwardCost> Costs = [];

    public Workload(int tokens, int experts = Experts, int seed = 7, WeightPrecision precision = WeightPrecision.Float32)
    {
        Tokens = tokens;
        Synthetic = SyntheticExperts.Create(experts, Dim, Rank, [ModuleName], seed, precision);
        Module = Synthetic.Library.Module(ModuleName);
        Router = new ArrowRouter(Module, new RoutingOptions(TopK));
        var rng = new Random(seed + 1);
        int[] tasks = Enumerable.Range(0, tokens).Select(_ => rng.Next(experts)).ToArray();
        X = new float[tokens * Dim];
        Synthetic.Tokens(tasks, 6f, seed + 2, X);
        Y = new float[tokens * Dim];
        Decision = new RoutingDecision(tokens, TopK);
    }

    public int Tokens { get; }

    public SyntheticExperts Synthetic { get; }

    public AdaptedModule Module { get; }

    public ArrowRouter Router { get; }

    public float[] X { get; }

    public float[] Y { get; }

    public RoutingDecision Decision { get; }

    /// <summary>
    /// Workloads from consecutive seeds. Benchmarks rotate among them so that successive calls touch
    /// different weights: together they hold at least 128 MB of factors (four libraries of 64 experts),
    /// four times the last-level cache of the machines we run on, so the timings measure memory, not cache.
    /// </summary>
    public static Workload[] Set(int tokens, int experts = Experts, WeightPrecision precision = WeightPrecision.Float32) =>
        Enumerable.Range(0, Math.Max(1, 4 * Experts / experts)).Select(i => new Workload(tokens, experts, seed: 7 + 10 * i, precision)).ToArray();

    /// <summary>
    /// Mean minimum bytes and FLOPs of one routed forward (router included) over <see cref="Set"/>, with factors and
    /// prototypes counted at <paramref name="precision"/> (the bytes a CPU engine of that precision reads).
    /// </summary>
    public static ForwardCost CostOf(int tokens, int experts = Experts, WeightPrecision precision = WeightPrecision.Float32)
    {
        lock (Costs)
        {
            if (!Costs.TryGetValue((tokens, experts, precision), out ForwardCost cost))
            {
                using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, WeightPrecision = precision });
                using Session session = engine.CreateSession();
                var costs = Set(tokens, experts, precision).Select(w =>
                {
                    session.Route(w.Module, w.Router, w.X, w.Decision);
                    return ForwardCost.Of(engine, w.Module, w.Decision, w.Router);
                }).ToArray();
                Costs[(tokens, experts, precision)] = cost = new ForwardCost(
                    (long)costs.Average(c => c.MinimumBytes), (long)costs.Average(c => c.Flops), (int)Math.Round(costs.Average(c => c.SelectedExperts)));
            }
            return cost;
        }
    }
}
