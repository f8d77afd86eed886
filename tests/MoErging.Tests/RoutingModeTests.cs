using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>
/// Routing granularity (token, example with mean or last pooling, task) and per-token parameter mixing,
/// through the session on each backend, against float64: pooled rows are formed in the test, scored by the
/// router's formula, and the reference forward applies the decision to every row of its group. Tolerances
/// as in <see cref="ForwardTests"/>; pooled scores get slack 1e-4 for near ties (the engine pools in float32).
/// The reference takes the factors and prototypes as the fixture's engines store them (<see cref="Stored"/>).
/// </summary>
public abstract class RoutingModeTests(EngineFixture engines)
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";
    private const int InputDim = 19, OutputDim = 11;

    public static TheoryData<string, int[], Pooling> GranularityCases() => new()
    {
        { "example", [2, 4, 1, 3], Pooling.Mean },
        { "example", [2, 4, 1, 3], Pooling.Last },
        { "example", [10], Pooling.Last },
        { "task", [10], Pooling.Mean },
    };

    [Theory]
    [MemberData(nameof(GranularityCases))]
    public void EveryRowOfAGroupGetsTheDecisionOfItsPooledRow(string kind, int[] lengths, Pooling pool)
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 5, InputDim, OutputDim, ranks: [3, 1, 6]);
        AdaptedModule module = lib.Module(Module);
        var router = new ArrowRouter(module, new RoutingOptions(2, 0.8f));
        int tokens = lengths.Sum();
        float[] x = data.Normal(tokens * InputDim), yBase = data.Normal(tokens * OutputDim);
        RoutingGranularity granularity = kind == "task" ? RoutingGranularity.Task : RoutingGranularity.Example(lengths, pool);
        string where = $"{data} ({kind}, {pool}, lengths {string.Join(",", lengths)})";

        using Session session = engines.CreateSession(2);
        var decision = new RoutingDecision();
        float[] y = (float[])yBase.Clone();
        session.Forward(module, router, granularity, Aggregation.Output, x, decision, y);
        Assert.Equal(tokens, decision.TokenCount);

        var weights = new double[tokens * 2];
        float[] prototypes = engines.StoredPrototypes(router.Prototypes);
        int start = 0;
        foreach (int length in lengths)
        {
            float[] pooled = Pooled(x, start, length, pool);
            double[] scores = Reference.Scores(pooled, prototypes, InputNormalization.None, ScoreFunction.AbsoluteValue, 0.8, default);
            double[] w = Reference.CheckTopKAndWeigh(scores, decision.ExpertIdsOf(start), 1e-4, where);
            for (int t = start; t < start + length; t++)
            {
                Assert.Equal(decision.ExpertIdsOf(start).ToArray(), decision.ExpertIdsOf(t).ToArray());
                Assert.Equal(decision.WeightsOf(start).ToArray(), decision.WeightsOf(t).ToArray());
                for (int s = 0; s < 2; s++)
                {
                    Assert.True(Math.Abs(decision.WeightsOf(t)[s] - w[s]) < 1e-5, $"{where}: token {t} slot {s}: {decision.WeightsOf(t)[s]} vs {w[s]}");
                    weights[t * 2 + s] = w[s];
                }
            }
            start += length;
        }
        ReferenceOutput expected = Reference.Forward(engines.Stored(lib.Raw[Module]), x, yBase, tokens, decision.ExpertIds.ToArray(), weights, 2);
        Reference.CheckFloat32(y, expected, yBase, 2, where);

        // Routing alone, from Half rows, gives the same groups.
        var fromHalf = new RoutingDecision();
        session.Route(module, router, granularity, x.Select(v => (Half)v).ToArray(), fromHalf);
        for (int t = 0, g = 0; g < lengths.Length; t += lengths[g++])
        {
            Assert.Equal(fromHalf.ExpertIdsOf(t).ToArray(), fromHalf.ExpertIdsOf(t + lengths[g] - 1).ToArray());
        }
    }

    [Fact]
    public void SequenceLengthsMustSumToTheRows()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, InputDim, OutputDim, ranks: [2]);
        AdaptedModule module = lib.Module(Module);
        using Session session = engines.CreateSession(1);
        var decision = new RoutingDecision();
        float[] y = new float[3 * OutputDim];
        var bad = Assert.Throws<ArgumentException>(() =>
            session.Forward(module, new UniformRouter(3), RoutingGranularity.Example([1, 1]), Aggregation.Output, new float[3 * InputDim], decision, y));
        Assert.Contains("the sequence lengths sum to 2 but x holds 3 rows", bad.Message);
        Assert.Contains("sequence 1 has length 0", Assert.Throws<ArgumentOutOfRangeException>(() => RoutingGranularity.Example([3, 0])).Message);
        Assert.All(y, v => Assert.Equal(0f, v));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ParameterMixingMatchesTheFloat64Reference(bool half)
    {
        var data = new TestData();
        // One rank and scaling for the experts chosen; expert 3 has another rank and is never chosen.
        RawFactors[] raw = [data.Factors(4, InputDim, OutputDim, 1.5f), data.Factors(4, InputDim, OutputDim, 1.5f),
            data.Factors(4, InputDim, OutputDim, 1.5f), data.Factors(7, InputDim, OutputDim, 1.5f)];
        var library = new ExpertLibrary(raw.Select((f, e) => new Expert($"e{e}", [new(Module, new LoraFactors(f.A, f.B, f.Rank, InputDim, OutputDim, f.Scaling))])));
        AdaptedModule module = library.Module(Module);
        const int tokens = 9, k = 3;
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(-1, 3)).ToArray();
        ids[0] = ids[1] = 1; // repeats add up
        float[] weights = data.Normal(tokens * k);
        weights[5] = 0; // a zero weight contributes to neither sum
        float[] x = data.Normal(tokens * InputDim), yBase = data.Normal(tokens * OutputDim);
        if (half)
        {
            x = x.Select(v => (float)(Half)v).ToArray();
            yBase = yBase.Select(v => (float)(Half)v).ToArray();
        }
        var decision = new RoutingDecision();
        decision.Assign(ids, weights, k, 4);
        using Session session = engines.CreateSession(2);
        ReferenceOutput expected = Reference.ForwardParameterMixing(engines.Stored(raw), x, yBase, tokens, decision.ExpertIds.ToArray(),
            decision.Weights.ToArray().Select(w => (double)w).ToArray(), k);
        string where = $"{data} (parameter mixing, Half {half}, {engines.Precision})";
        if (half)
        {
            Half[] y = yBase.Select(v => (Half)v).ToArray();
            session.Forward(module, decision, Aggregation.Parameter, x.Select(v => (Half)v).ToArray(), y);
            Reference.CheckHalf(y, expected, yBase, where);
        }
        else
        {
            float[] y = (float[])yBase.Clone();
            session.Forward(module, decision, Aggregation.Parameter, x, y);
            Reference.CheckFloat32(y, expected, yBase, k, where);
        }

        // It is a different function from output mixing (cross terms), which the same decision gives here.
        float[] output = (float[])yBase.Clone();
        session.Forward(module, decision, Aggregation.Output, x, output);
        ReferenceOutput outputExpected = Reference.Forward(engines.Stored(raw), x, yBase, tokens, decision.ExpertIds.ToArray(), decision.Weights.ToArray().Select(w => (double)w).ToArray(), k);
        Reference.CheckFloat32(output, outputExpected, yBase, k, where);
        Assert.True(expected.Values.Zip(outputExpected.Values).Max(p => Math.Abs(p.First - p.Second)) > 1e-3, $"{where}: parameter and output mixing should differ");
    }

    [Fact]
    public void ParameterMixingWithARouterAndTaskGranularity()
    {
        var data = new TestData();
        RawFactors[] raw = Enumerable.Range(0, 4).Select(_ => data.Factors(5, InputDim, OutputDim, 2f)).ToArray();
        var library = new ExpertLibrary(raw.Select((f, e) => new Expert($"e{e}", [new(Module, new LoraFactors(f.A, f.B, f.Rank, InputDim, OutputDim, f.Scaling))])));
        AdaptedModule module = library.Module(Module);
        var router = new CentroidRouter(module, data.Normal(4 * InputDim), new RoutingOptions(2));
        const int tokens = 6;
        float[] x = data.Normal(tokens * InputDim), yBase = data.Normal(tokens * OutputDim), y = (float[])yBase.Clone();
        using Session session = engines.CreateSession(2);
        var decision = new RoutingDecision();
        foreach (RoutingGranularity granularity in new[] { RoutingGranularity.Token, RoutingGranularity.Task })
        {
            y = (float[])yBase.Clone();
            session.Forward(module, router, granularity, Aggregation.Parameter, x, decision, y);
            ReferenceOutput expected = Reference.ForwardParameterMixing(engines.Stored(raw), x, yBase, tokens, decision.ExpertIds.ToArray(),
                decision.Weights.ToArray().Select(w => (double)w).ToArray(), 2);
            Reference.CheckFloat32(y, expected, yBase, 2, $"{data} ({granularity.Kind}, {engines.Precision})");
        }
        Assert.Equal(decision.ExpertIdsOf(0).ToArray(), decision.ExpertIdsOf(tokens - 1).ToArray());
    }

    [Fact]
    public void ParameterMixingRejectsChosenExpertsOfDifferentRankOrScaling()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, InputDim, OutputDim, ranks: [4, 4, 2]);
        AdaptedModule module = lib.Module(Module);
        using Session session = engines.CreateSession(1);
        var decision = new RoutingDecision();
        decision.Assign([0, 2], [0.5f, 0.5f], 2, 3);
        float[] y = new float[OutputDim];
        var error = Assert.Throws<ArgumentException>(() => session.Forward(module, decision, Aggregation.Parameter, new float[InputDim], y));
        Assert.Contains($"parameter mixing needs one rank and one scaling across the chosen experts at module '{Module}'", error.Message);
        Assert.Contains("expert 'e0' has rank 4", error.Message);
        Assert.Contains("expert 'e2' has rank 2", error.Message);
        Assert.All(y, v => Assert.Equal(0f, v)); // nothing written

        // Experts 0 and 1 share the rank but (drawn at random) not the scaling.
        decision.Assign([0, 1], [0.5f, 0.5f], 2, 3);
        Assert.Contains("expert 'e1' has rank 4, scaling", Assert.Throws<ArgumentException>(() => session.Forward(module, decision, Aggregation.Parameter, new float[InputDim], y)).Message);
    }

    private static float[] Pooled(float[] x, int start, int length, Pooling pool)
    {
        var row = new float[InputDim];
        for (int i = 0; i < InputDim; i++)
        {
            row[i] = pool == Pooling.Last
                ? x[(start + length - 1) * InputDim + i]
                : (float)Enumerable.Range(start, length).Average(t => (double)x[t * InputDim + i]);
        }
        return row;
    }
}

public sealed class RoutingModeTestsOnCpu(CpuEngines engines) : RoutingModeTests(engines), IClassFixture<CpuEngines>;

public sealed class RoutingModeTestsOnCpuBFloat16(CpuBFloat16Engines engines) : RoutingModeTests(engines), IClassFixture<CpuBFloat16Engines>;

public sealed class RoutingModeTestsOnCpuFloat16(CpuFloat16Engines engines) : RoutingModeTests(engines), IClassFixture<CpuFloat16Engines>;

public sealed class RoutingModeTestsOnGpuSimulator(SimulatorEngine engines) : RoutingModeTests(engines), IClassFixture<SimulatorEngine>;

public sealed class RoutingModeTestsOnFourWarpSimulator(FourWarpSimulatorEngine engines) : RoutingModeTests(engines), IClassFixture<FourWarpSimulatorEngine>;

[Trait("Backend", "OpenCL")]
public sealed class RoutingModeTestsOnRusticl(RusticlEngine engines) : RoutingModeTests(engines), IClassFixture<RusticlEngine>;

[Trait("Backend", "OpenCL")]
public sealed class RoutingModeTestsOnPocl(PoclEngine engines) : RoutingModeTests(engines), IClassFixture<PoclEngine>;

[Trait("Backend", "Cuda")]
public sealed class RoutingModeTestsOnCuda(CudaEngine engines) : RoutingModeTests(engines), IClassFixture<CudaEngine>;
