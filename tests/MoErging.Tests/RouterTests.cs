using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>
/// PHATGOOSE, centroid and classifier routers against their formulas written plainly in float64: the
/// softmax over ALL experts, then the kept ones renormalised (the papers' statement, not the engine's
/// softmax over the kept scores). The choice must be a valid top-k (slack 1e-4 for near ties) and the
/// weights within 1e-5. On the CPU and, through the GPU gating kernel, on the simulator (small shapes). Where the
/// engine stores prototypes at a 16-bit precision, it scores with them rounded: the reference is then the float64
/// linear score of the router's prototypes rounded by the test's own rounding (<see cref="Stored"/>), with the same
/// tolerances (the formulas themselves are checked by the float32 classes).
/// </summary>
public abstract class RouterTests(EngineFixture engines)
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";
    private const int Experts = 6, InputDim = 23, Tokens = 7;

    [Theory]
    [InlineData(2)]
    [InlineData(1)]
    [InlineData(Experts)]
    public void PhatgooseMatchesItsFormula(int k)
    {
        var data = new TestData();
        TestLibrary lib = data.Library(Experts, InputDim, 5, ranks: [2]);
        // Gates with an offset and scale of their own: LayerNorm must remove both.
        float[] gates = data.Normal(Experts * InputDim, 3).Select(g => g + 1.5f).ToArray();
        float[] x = data.Normal(Tokens * InputDim, 2).Select(v => v - 0.7f).ToArray();
        var router = new PhatgooseRouter(lib.Module(Module), gates, new RoutingOptions(k));
        Check(data, lib, router, x, t => Reference.PhatgooseScores(x.AsSpan(t * InputDim, InputDim), gates));
    }

    [Theory]
    [InlineData(null)]
    [InlineData(3)]
    public void CentroidMatchesItsFormula(int? k)
    {
        var data = new TestData();
        TestLibrary lib = data.Library(Experts, InputDim, 5, ranks: [2]);
        float[] centroids = data.Normal(Experts * InputDim, 4);
        float[] x = data.Normal(Tokens * InputDim, 3);
        var router = new CentroidRouter(lib.Module(Module), centroids, k is int kk ? new RoutingOptions(kk) : null);
        Assert.Equal(k ?? Experts, router.TopK);
        Check(data, lib, router, x, t => Reference.CentroidScores(x.AsSpan(t * InputDim, InputDim), centroids));
    }

    [Fact]
    public void ClassifierIsSoftmaxOfAnAffineMap()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(Experts, InputDim, 5, ranks: [2]);
        float[] w = data.Normal(Experts * InputDim, 0.5), b = data.Normal(Experts);
        float[] x = data.Normal(Tokens * InputDim);
        var router = new ClassifierRouter(w, b, InputDim);
        Assert.Equal(Experts, router.TopK);
        Check(data, lib, router, x, t => Enumerable.Range(0, Experts)
            .Select(e => Enumerable.Range(0, InputDim).Sum(i => (double)w[e * InputDim + i] * x[t * InputDim + i]) + b[e]).ToArray());
    }

    private void Check(TestData data, TestLibrary lib, LinearRouter router, float[] x, Func<int, double[]> formulaScores)
    {
        float[] stored = engines.StoredPrototypes(router.Prototypes);
        Func<int, double[]> referenceScores = engines.PrototypePrecision == WeightPrecision.Float32 ? formulaScores
            : t => Reference.Scores(x.AsSpan(t * InputDim, InputDim), stored, router.Normalization, router.ScoreFunction, router.Options.Temperature, router.Bias);
        using Session session = engines.CreateSession(2);
        var decision = new RoutingDecision();
        session.Route(lib.Module(Module), router, x, decision);
        Assert.Equal(Tokens, decision.TokenCount);
        for (int t = 0; t < Tokens; t++)
        {
            string where = $"{data}, {router.GetType().Name} k={router.TopK}, token {t}, {engines.PrototypePrecision} prototypes";
            double[] expected = Reference.RenormalisedTopK(referenceScores(t), decision.ExpertIdsOf(t), 1e-4, where);
            for (int s = 0; s < router.TopK; s++)
            {
                Assert.True(Math.Abs(decision.WeightsOf(t)[s] - expected[s]) < 1e-5, $"{where}: slot {s} weight {decision.WeightsOf(t)[s]}, expected {expected[s]}");
            }
        }
    }

    [Fact]
    public void NonFiniteRowsOrOverflowingScoresAreErrorsNamingTheToken()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(3, 16, 8, [2]);
        AdaptedModule module = lib.Module(Module);
        using Session session = engines.CreateSession(2);
        var router = new ArrowRouter(module, new RoutingOptions(2));
        float[] p0 = ArrowRouter.ComputePrototypes(module)[..16];
        double largest = p0.Max(MathF.Abs);
        foreach (string poison in new[] { "NaN", "infinity", "overflow" })
        {
            float[] x = data.Normal(Tokens * 16);
            int bad = data.Rng.Next(Tokens);
            Span<float> row = x.AsSpan(bad * 16, 16);
            row[data.Rng.Next(16)] = poison == "NaN" ? float.NaN : float.NegativeInfinity;
            if (poison == "overflow")
            {
                // Every entry finite, but along p_0 (a unit vector) the row's length, so its score, is beyond float32.
                for (int i = 0; i < 16; i++)
                {
                    row[i] = (float)(0.999 * float.MaxValue / largest * p0[i]);
                }
                Assert.True(System.Numerics.Tensors.TensorPrimitives.IsFiniteAll(row));
            }
            float[] y = data.Normal(Tokens * 8), before = (float[])y.Clone();
            var e = Assert.Throws<ArgumentException>(() => session.Forward(module, router, x, new RoutingDecision(), y));
            Assert.Contains($"token {bad}: its router scores are not finite", e.Message);
            Assert.Equal(before, y);
            Assert.Contains($"token {bad}:", Assert.Throws<ArgumentException>(() => session.Route(module, router, x, new RoutingDecision())).Message);
        }

        // A score of -inf is never chosen, and would get weight 0 if it were: the token is refused all the same. The
        // prototype is within every storage format's range (F16's ends at 65,504); the row's length makes the score overflow.
        float[] prototypes = data.Normal(3 * 16);
        prototypes.AsSpan(2 * 16, 16).Fill(-6e4f);
        var linear = new LinearRouter(prototypes, 16, new RoutingOptions(2));
        float[] rows = new float[Tokens * 16];
        int token = data.Rng.Next(Tokens);
        rows.AsSpan(token * 16, 16).Fill(1e35f);
        var refused = Assert.Throws<ArgumentException>(() => session.Forward(module, linear, rows, new RoutingDecision(), new float[Tokens * 8]));
        Assert.StartsWith($"token {token}: its router scores are not finite", refused.Message);
    }
}

public sealed class RouterTestsOnCpu(CpuEngines engines) : RouterTests(engines), IClassFixture<CpuEngines>;

public sealed class RouterTestsOnCpuBFloat16(CpuBFloat16Engines engines) : RouterTests(engines), IClassFixture<CpuBFloat16Engines>;

public sealed class RouterTestsOnCpuFloat16(CpuFloat16Engines engines) : RouterTests(engines), IClassFixture<CpuFloat16Engines>;

public sealed class RouterTestsOnGpuSimulator(SimulatorEngine engines) : RouterTests(engines), IClassFixture<SimulatorEngine>;

public sealed class RouterTestsOnFourWarpSimulator(FourWarpSimulatorEngine engines) : RouterTests(engines), IClassFixture<FourWarpSimulatorEngine>;

[Trait("Backend", "OpenCL")]
public sealed class RouterTestsOnRusticl(RusticlEngine engines) : RouterTests(engines), IClassFixture<RusticlEngine>;

[Trait("Backend", "OpenCL")]
public sealed class RouterTestsOnPocl(PoclEngine engines) : RouterTests(engines), IClassFixture<PoclEngine>;

[Trait("Backend", "Cuda")]
public sealed class RouterTestsOnCuda(CudaEngine engines) : RouterTests(engines), IClassFixture<CudaEngine>;
