using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>
/// The routed forward against the float64 reference, for every router, on odd shapes and mixed ranks, at the fixture's
/// weight precision: the reference takes the factors and prototypes as the engine stores them (rounded to the
/// precision by the test's own rounding, <see cref="Stored"/>), so the tolerances are those of float32 arithmetic
/// and of the activations' rounding, at every precision. Float32 outputs within 1e-5 of the size of the update, plus
/// the rounding of y itself (<see cref="Reference.CheckFloat32"/>); Half outputs within half a Half ulp of the float64
/// result (<see cref="Reference.CheckHalf"/>).
/// </summary>
public abstract class ForwardTests(EngineFixture engines)
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    public static TheoryData<string, int, int> RouterCases() => new()
    {
        { "uniform", 0, 7 },
        { "fixed", 0, 7 },
        { "arrow", 1, 7 },
        { "arrow", 2, 7 },
        { "arrow", 5, 7 },
        { "arrow", 2, 1 },
        { "arrow", 1, 33 },
        { "layernorm-bias", 2, 9 },
        { "l2-identity", 3, 9 },
        { "assigned", 2, 7 },
        { "assigned", 1, 1 },
    };

    [Theory]
    [MemberData(nameof(RouterCases))]
    public void Float32ForwardMatchesReference(string router, int k, int tokens)
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 5, dIn: 37, dOut: 53, ranks: [1, 3, 8, 16, 3]);
        var (x, yBase) = (data.Normal(tokens * 37), data.Normal(tokens * 53));
        Check(data, lib, MakeRouter(data, lib, router, k, tokens), x, yBase, threads: 2);
    }

    [Theory]
    [MemberData(nameof(RouterCases))]
    public void HalfForwardMatchesReference(string router, int k, int tokens)
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 5, dIn: 37, dOut: 53, ranks: [16, 1, 8, 3, 8]);
        AdaptedModule module = lib.Module(Module);
        float[] x = RoundToHalf(data.Normal(tokens * 37)), yBase = RoundToHalf(data.Normal(tokens * 53));
        object r = MakeRouter(data, lib, router, k, tokens);

        using Session session = engines.CreateSession(2);
        Half[] xh = x.Select(v => (Half)v).ToArray(), yh = yBase.Select(v => (Half)v).ToArray();
        var decision = new RoutingDecision();
        if (r is Router router1)
        {
            session.Forward(module, router1, xh, decision, yh);
        }
        else
        {
            var (ids, weights, kk) = ((int[], float[], int))r;
            decision.Assign(ids, weights, kk, 5);
            session.Forward(module, decision, xh, yh);
        }
        var (refIds, refWeights) = ReferenceDecision(data, r, x, decision);
        ReferenceOutput expected = Reference.Forward(engines.Stored(lib.Raw[Module]), x, yBase, tokens, refIds, refWeights, decision.TopK);
        Reference.CheckHalf(yh, expected, yBase, $"{data} ({router}, k={k}, T={tokens}, {engines.Precision})");
    }

    [Fact]
    public void LargerShapesCrossEveryVectorAndBlockBoundary()
    {
        var data = new TestData();
        // d_out 1100 spans three 512-column blocks with a ragged tail; 37 tokens make groups of four plus a remainder.
        TestLibrary lib = data.Library(experts: 7, dIn: 301, dOut: 1100, ranks: [16, 5, 9, 1, 12, 4, 7]);
        Check(data, lib, new ArrowRouter(lib.Module(Module), new RoutingOptions(3, 0.7f)), data.Normal(37 * 301), data.Normal(37 * 1100), threads: 3);
    }

    [Fact]
    public void ManyExpertsAndTokensSpanEveryWorkItemBoundary()
    {
        var data = new TestData();
        // 37 experts (more than a warp's lanes) and 150 tokens cross the CPU scoring blocks (16 × 16) and the
        // GPU scores' 4 × 4 tiles; the assignment sends every token to expert 0, crossing the CPU shrink's
        // 64-token blocks and the GPU shrink's 8-token batches, with rank 19 crossing both row blocks. The
        // GPU simulator, which pays for every warp shuffle, runs 40 tokens: still five batches and every GPU boundary.
        int tokens = Simulated ? 40 : 150;
        TestLibrary lib = data.Library(experts: 37, dIn: 45, dOut: 70, ranks: [19, 2, 7]);
        AdaptedModule module = lib.Module(Module);
        Check(data, lib, new ArrowRouter(module, new RoutingOptions(4, 0.5f)), data.Normal(tokens * 45), data.Normal(tokens * 70), threads: 3);
        int[] ids = Enumerable.Range(0, tokens * 2).Select(i => i % 2 == 0 ? 0 : data.Rng.Next(37)).ToArray();
        Check(data, lib, (ids, data.Normal(tokens * 2), 2), data.Normal(tokens * 45), data.Normal(tokens * 70), threads: 2);
    }

    /// <summary>More than 1,024 experts: no launch limits E to that (the selection has no shared list), so every backend routes and forwards them.</summary>
    [Fact]
    public void MoreThanAThousandExpertsRouteAndForward()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 1100, dIn: 16, dOut: 9, ranks: [1, 2]);
        AdaptedModule module = lib.Module(Module);
        Check(data, lib, new ArrowRouter(module, new RoutingOptions(3)), data.Normal(5 * 16), data.Normal(5 * 9), threads: 2);
    }

    /// <summary>ILGPU's CPU accelerator: correct but slow, so a few cases run smaller there.</summary>
    private bool Simulated => engines.Backend == Backend.GpuSimulator;

    [Fact]
    public void AllTokensOnOneExpertAndExpertsNoTokenSelects()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 6, dIn: 37, dOut: 53, ranks: [3, 8, 16, 1]);
        AdaptedModule module = lib.Module(Module);
        int tokens = 11;
        // Every token's input lies along expert 2's prototype, so Arrow top-1 sends every token there.
        var arrow = new ArrowRouter(module, new RoutingOptions(1));
        float[] x = new float[tokens * 37];
        for (int t = 0; t < tokens; t++)
        {
            float scale = (float)(1 + data.Rng.NextDouble());
            for (int i = 0; i < 37; i++)
            {
                x[t * 37 + i] = scale * arrow.Prototypes[2 * 37 + i];
            }
        }
        RoutingDecision decision = Check(data, lib, arrow, x, data.Normal(tokens * 53), threads: 2);
        Assert.All(decision.ExpertIds.ToArray(), id => Assert.Equal(2, id));
        Assert.Equal(1, ForwardCost.Of(module, decision).SelectedExperts);

        // Host-given assignments that leave experts 0 and 5 without tokens.
        int[] ids = Enumerable.Range(0, tokens * 2).Select(i => 1 + data.Rng.Next(4)).ToArray();
        Check(data, lib, (ids, data.Normal(tokens * 2), 2), data.Normal(tokens * 37), data.Normal(tokens * 53), threads: 2);
    }

    [Fact]
    public void ExpertWithoutTheModuleContributesNothing()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 4, dIn: 37, dOut: 53, ranks: [4, 8],
            modules: [Module, "base_model.model.layers.0.mlp.up_proj"], skip: [(1, Module)]);
        Assert.Null(lib.Module(Module).Factors(1));
        Check(data, lib, new UniformRouter(4), data.Normal(5 * 37), data.Normal(5 * 53), threads: 2);
        int[] ids = [1, 0, 1, 1, 3, 1];
        Check(data, lib, (ids, data.Normal(6), 2), data.Normal(3 * 37), data.Normal(3 * 53), threads: 1);
    }

    /// <summary>
    /// The routing contract's dispatch: an expert repeated within a token is one term per slot, and the terms add
    /// up (a repeat with the opposite weight cancels), in float32 and Half, on every backend alike.
    /// </summary>
    [Fact]
    public void RepeatedExpertsInATokenAddUpOnEveryBackend()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 4, dIn: 40, dOut: 53, ranks: [3, 8, 1, 5]);
        AdaptedModule module = lib.Module(Module);
        const int tokens = 5, k = 4;
        int[] ids =
        [
            2, 2, 2, 2,    // one expert in every slot
            1, 3, 1, -1,   // a repeat beside another expert and an empty slot
            0, 0, 3, 3,    // two repeated pairs
            3, 3, 1, 0,    // a repeat whose weights cancel (set below)
            1, 1, 1, 2,
        ];
        float[] weights = data.Normal(tokens * k);
        weights[13] = -weights[12];
        float[] x = RoundToHalf(data.Normal(tokens * 40)), yBase = RoundToHalf(data.Normal(tokens * 53));
        var decision = new RoutingDecision();
        decision.Assign(ids, weights, k, module.ExpertCount);
        // The reference reads the slots the decision holds (Assign orders each token's slots), in float64.
        double[] given = decision.Weights.ToArray().Select(w => (double)w).ToArray();
        ReferenceOutput expected = Reference.Forward(engines.Stored(lib.Raw[Module]), x, yBase, tokens, decision.ExpertIds.ToArray(), given, k);
        using Session session = engines.CreateSession(2);

        var y = (float[])yBase.Clone();
        session.Forward(module, decision, x, y);
        Reference.CheckFloat32(y, expected, yBase, k, $"{data} (repeated experts, float32)");

        Half[] yh = yBase.Select(v => (Half)v).ToArray();
        session.Forward(module, decision, x.Select(v => (Half)v).ToArray(), yh);
        Reference.CheckHalf(yh, expected, yBase, $"{data} (repeated experts, Half)");
    }

    [Fact]
    public void ResultsAreBitwiseIdenticalAcrossRunsAndSessions()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 9, dIn: 200, dOut: 1500, ranks: [16, 3, 8]);
        AdaptedModule module = lib.Module(Module);
        var router = new ArrowRouter(module, new RoutingOptions(3));
        float[] x = data.Normal(29 * 200), yBase = data.Normal(29 * 1500);
        float[]? first = null;
        foreach (int threads in Simulated ? new[] { 1, 2 } : [1, 2, 4, 2])
        {
            using Session session = engines.CreateSession(threads);
            var y = (float[])yBase.Clone();
            session.Forward(module, router, x, new RoutingDecision(), y);
            first ??= y;
            Assert.True(first.AsSpan().SequenceEqual(y), $"{data}: result with {threads} threads (CPU) or a new session differs from the first run");
        }
    }

    [Fact]
    public void RoutingDecisionIsReusableAtOtherModules()
    {
        var data = new TestData();
        string other = "base_model.model.layers.1.mlp.down_proj";
        TestLibrary lib = data.Library(experts: 4, dIn: 37, dOut: 53, ranks: [2, 5], modules: [Module, other]);
        using Session session = engines.CreateSession(2);
        float[] x = data.Normal(6 * 37), yBase = data.Normal(6 * 53);
        var decision = new RoutingDecision();
        session.Route(lib.Module(Module), new ArrowRouter(lib.Module(Module), new RoutingOptions(2)), x, decision);
        var y = (float[])yBase.Clone();
        session.Forward(lib.Module(other), decision, x, y);
        double[] weights = decision.Weights.ToArray().Select(w => (double)w).ToArray();
        ReferenceOutput expected = Reference.Forward(engines.Stored(lib.Raw[other]), x, yBase, 6, decision.ExpertIds.ToArray(), weights, 2);
        Reference.CheckFloat32(y, expected, yBase, 2, $"{data} ({engines.Precision})");
    }

    private static object MakeRouter(TestData data, TestLibrary lib, string kind, int k, int tokens)
    {
        AdaptedModule module = lib.Module(Module);
        int e = module.ExpertCount;
        return kind switch
        {
            "uniform" => new UniformRouter(e),
            // Random weights with a negative and an exact zero, which must be listed but never read.
            "fixed" => new FixedRouter([0.7f, -0.3f, 0f, (float)data.Rng.NextDouble(), 1.25f]),
            "arrow" => new ArrowRouter(module, new RoutingOptions(k, (float)(0.5 + data.Rng.NextDouble()))),
            "layernorm-bias" => new LinearRouter(data.Normal(e * module.InputDim), module.InputDim, new RoutingOptions(k, 1.3f),
                InputNormalization.LayerNorm, ScoreFunction.Identity, data.Normal(e)),
            "l2-identity" => new LinearRouter(data.Normal(e * module.InputDim), module.InputDim, new RoutingOptions(k, 0.2f),
                InputNormalization.L2, ScoreFunction.Identity),
            // Host-given ids in [-1, E): empty slots and repeated experts within a token included.
            "assigned" => (Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(-1, e)).ToArray(), data.Normal(tokens * k), k),
            _ => throw new ArgumentException(kind),
        };
    }

    /// <summary>Runs the engine, derives the reference decision, and compares y. Returns the engine's decision.</summary>
    private RoutingDecision Check(TestData data, TestLibrary lib, object router, float[] x, float[] yBase, int threads)
    {
        AdaptedModule module = lib.Module(Module);
        int tokens = x.Length / module.InputDim;
        using Session session = engines.CreateSession(threads);
        var y = (float[])yBase.Clone();
        var decision = new RoutingDecision();
        if (router is Router r)
        {
            session.Forward(module, r, x, decision, y);
        }
        else
        {
            var (ids, weights, k) = ((int[], float[], int))router;
            decision.Assign(ids, weights, k, module.ExpertCount);
            session.Forward(module, decision, x, y);
        }
        var (refIds, refWeights) = ReferenceDecision(data, router, x, decision);
        ReferenceOutput expected = Reference.Forward(engines.Stored(lib.Raw[Module]), x, yBase, tokens, refIds, refWeights, decision.TopK);
        Reference.CheckFloat32(y, expected, yBase, decision.TopK, $"{data} ({router.GetType().Name}, T={tokens}, {engines.Precision})");
        return decision;
    }

    /// <summary>
    /// The decision the reference applies, checked against the engine's: fixed weights exactly, in the
    /// documented order; score-based routers through float64 scores of the prototypes as the engine stores them (the
    /// engine's top-k must be a valid top-k, its weights within 1e-5 of the float64 softmax); assignments as the host gave them.
    /// </summary>
    private (int[] Ids, double[] Weights) ReferenceDecision(TestData data, object router, float[] x, RoutingDecision decision)
    {
        int tokens = decision.TokenCount, k = decision.TopK;
        var ids = new int[tokens * k];
        var weights = new double[tokens * k];
        switch (router)
        {
            case FixedRouter f:
                int[] order = Enumerable.Range(0, f.ExpertCount).OrderByDescending(e => f.Weights[e]).ThenBy(e => e).ToArray();
                for (int t = 0; t < tokens; t++)
                {
                    Assert.Equal(order, decision.ExpertIdsOf(t).ToArray());
                    for (int s = 0; s < k; s++)
                    {
                        Assert.Equal(f.Weights[order[s]], decision.WeightsOf(t)[s]);
                        ids[t * k + s] = order[s];
                        weights[t * k + s] = f.Weights[order[s]];
                    }
                }
                break;
            case LinearRouter lr:
                float[] prototypes = engines.StoredPrototypes(lr.Prototypes);
                for (int t = 0; t < tokens; t++)
                {
                    double[] scores = Reference.Scores(x.AsSpan(t * lr.InputDim, lr.InputDim), prototypes, lr.Normalization,
                        lr.ScoreFunction, lr.Options.Temperature, lr.Bias);
                    double[] w = Reference.CheckTopKAndWeigh(scores, decision.ExpertIdsOf(t), 1e-4, $"{data}, token {t}");
                    for (int s = 0; s < k; s++)
                    {
                        ids[t * k + s] = decision.ExpertIdsOf(t)[s];
                        weights[t * k + s] = w[s];
                        Assert.True(Math.Abs(decision.WeightsOf(t)[s] - w[s]) < 1e-5, $"{data}: token {t} slot {s} weight {decision.WeightsOf(t)[s]} vs {w[s]}");
                    }
                }
                break;
            default:
                var (given, givenWeights, _) = ((int[], float[], int))router;
                Assert.Equal(given.Length, ids.Length);
                return (given, givenWeights.Select(w => (double)w).ToArray());
        }
        return (ids, weights);
    }

    private static float[] RoundToHalf(float[] values) => values.Select(v => (float)(Half)v).ToArray();
}

public sealed class ForwardTestsOnCpu(CpuEngines engines) : ForwardTests(engines), IClassFixture<CpuEngines>;

public sealed class ForwardTestsOnCpuBFloat16(CpuBFloat16Engines engines) : ForwardTests(engines), IClassFixture<CpuBFloat16Engines>;

public sealed class ForwardTestsOnCpuFloat16(CpuFloat16Engines engines) : ForwardTests(engines), IClassFixture<CpuFloat16Engines>;

public sealed class ForwardTestsOnGpuSimulator(SimulatorEngine engines) : ForwardTests(engines), IClassFixture<SimulatorEngine>;

public sealed class ForwardTestsOnFourWarpSimulator(FourWarpSimulatorEngine engines) : ForwardTests(engines), IClassFixture<FourWarpSimulatorEngine>;

[Trait("Backend", "OpenCL")]
public sealed class ForwardTestsOnRusticl(RusticlEngine engines) : ForwardTests(engines), IClassFixture<RusticlEngine>;

[Trait("Backend", "OpenCL")]
public sealed class ForwardTestsOnPocl(PoclEngine engines) : ForwardTests(engines), IClassFixture<PoclEngine>;

[Trait("Backend", "Cuda")]
public sealed class ForwardTestsOnCuda(CudaEngine engines) : ForwardTests(engines), IClassFixture<CudaEngine>;
