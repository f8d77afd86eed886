using ILGPU;
using ILGPU.Runtime;
using MoErging.Kernels;
using MoErging.Routing;
using Half = System.Half;

namespace MoErging.Tests.Kernels;

/// <summary>
/// The gating kernel against float64 scores: the kept experts must be a valid top-k (slack 1e-4 for near
/// ties), in order, and the weights within 1e-5 of the float64 softmax over them. Outputs are poisoned first.
/// </summary>
public abstract class GatingKernelTests(DeviceFixture fixture)
{
    public static TheoryData<int, int, int, int, bool, bool, bool> Cases() => new()
    {
        // tokens, experts, k, normalization (0 none, 1 LayerNorm, 2 L2), |·|, bias, F16 x
        { 1, 5, 1, 0, true, false, false },
        { 9, 5, 2, 1, false, true, false },
        { 5, 5, 5, 2, false, false, false },
        { 3, 37, 2, 0, true, false, true },
        { 6, 7, 3, 1, true, true, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesTheFloat64Reference(int tokens, int experts, int k, int normalization, bool absolute, bool bias, bool half)
    {
        GpuDevice device = fixture.Device;
        var data = new TestData();
        const int n = 37;
        float[] x = data.Normal(tokens * n, 2), p = data.Normal(experts * n), b = bias ? data.Normal(experts) : [];
        if (half)
        {
            x = DeviceIo.FromHalfBits(DeviceIo.ToHalfBits(x));
        }
        float temperature = 0.5f + (float)data.Rng.NextDouble();
        Accelerator accelerator = device.Accelerator;
        using var prototypes = DeviceIo.Upload(accelerator, p);
        using var biasBuffer = DeviceIo.Upload(accelerator, b);
        using var ids = DeviceIo.Poisoned(accelerator, tokens * k, int.MinValue);
        using var weights = DeviceIo.Poisoned(accelerator, tokens * k, float.NaN);
        using AcceleratorStream stream = accelerator.CreateStream();
        if (half)
        {
            using var xb = DeviceIo.Upload(accelerator, DeviceIo.ToHalfBits(x));
            device.Kernels.Gating.Launch(stream, Args<ushort>(xb.View));
        }
        else
        {
            using var xb = DeviceIo.Upload(accelerator, x);
            device.Kernels.Gating.Launch(stream, Args<float>(xb.View));
        }
        stream.Synchronize();
        int[] gotIds = ids.GetAsArray1D();
        float[] gotWeights = weights.GetAsArray1D();
        for (int t = 0; t < tokens; t++)
        {
            double[] scores = Reference.Scores(x.AsSpan(t * n, n), p, (InputNormalization)normalization,
                absolute ? ScoreFunction.AbsoluteValue : ScoreFunction.Identity, temperature, b);
            double[] expected = Reference.CheckTopKAndWeigh(scores, gotIds.AsSpan(t * k, k), 1e-4, $"{data}, token {t}");
            for (int s = 0; s < k; s++)
            {
                Assert.True(Math.Abs(gotWeights[t * k + s] - expected[s]) < 1e-5, $"{data}: token {t} slot {s}: weight {gotWeights[t * k + s]}, expected {expected[s]}");
            }
        }

        GatingArgs<TX> Args<TX>(ArrayView<TX> xv) where TX : unmanaged => new()
        {
            X = xv,
            Tokens = tokens,
            InputDim = n,
            Prototypes = prototypes.View,
            Bias = biasBuffer.View,
            HasBias = bias ? 1 : 0,
            Experts = experts,
            Normalization = normalization,
            Absolute = absolute ? 1 : 0,
            InverseTemperature = 1f / temperature,
            TopK = k,
            Ids = ids.View,
            Weights = weights.View,
        };
    }
}

/// <summary>More experts than one gating call scores is refused before anything is launched, saying the limit.</summary>
public abstract class GatingLimitTests(DeviceFixture fixture)
{
    [Fact]
    public void MoreExpertsThanTheKeysHoldAreRefusedBeforeLaunch()
    {
        GpuDevice device = fixture.Device;
        using AcceleratorStream stream = device.Accelerator.CreateStream();
        var args = new GatingArgs<float> { Tokens = 1, InputDim = 4, Experts = GatingKernel.MaxExperts + 1, TopK = 1 };
        var e = Assert.Throws<NotSupportedException>(() => device.Kernels.Gating.Launch(stream, args));
        Assert.Contains($"up to {GatingKernel.MaxExperts} experts", e.Message);
        Assert.Contains($"{GatingKernel.MaxExperts + 1}", e.Message);
    }
}

/// <summary>
/// The dispatch: every valid slot gets exactly one pair holding its token and w · s; invalid slots (empty,
/// zero weight, expert without factors) none; each expert's pairs are one contiguous segment, segments in
/// expert order; the work items tile every segment's rank rows and pairs exactly once.
/// </summary>
public abstract class DispatchKernelTests(DeviceFixture fixture)
{
    [Theory]
    [InlineData(13, 3, false, false)]
    [InlineData(1, 1, false, false)]
    [InlineData(40, 2, true, false)] // all tokens on one expert: its segment spans several pair tiles
    [InlineData(13, 3, false, true)] // parameter mixing: coefficients are w alone
    public void GroupsSlotsByExpertAndTilesTheWork(int tokens, int k, bool oneExpert, bool parameterMixing)
    {
        var data = new TestData();
        int[] ranks = [3, 0, 5, 9, 1, 2];
        RawFactors?[] experts = ranks.Select(r => r == 0 ? null : data.Factors(r, 4, 3)).ToArray();
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => oneExpert ? 3 : data.Rng.Next(-1, ranks.Length)).ToArray();
        float[] weights = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(5) == 0 ? 0f : (float)data.Rng.NextDouble()).ToArray();
        using var run = new KernelPipeline(fixture.Device, experts, ids, weights, k, halfWeights: false, parameterMixing);
        run.Dispatch();
        int[] slotPair = run.Read(run.SlotPair, ids.Length), pairToken = run.Read(run.PairToken, ids.Length);
        float[] coefficient = run.Read(run.PairCoefficient, ids.Length);
        int itemCount = run.Read(run.ItemCount, 1)[0];

        var pairsOf = new Dictionary<int, List<int>>();
        for (int i = 0; i < ids.Length; i++)
        {
            int e = ids[i];
            bool valid = e >= 0 && weights[i] != 0 && ranks[e] > 0;
            Assert.True(valid == slotPair[i] >= 0, $"{data}: slot {i} (expert {e}, weight {weights[i]}) has pair {slotPair[i]}");
            if (!valid)
            {
                continue;
            }
            int p = slotPair[i];
            Assert.Equal(i / k, pairToken[p]);
            Assert.Equal(parameterMixing ? weights[i] : weights[i] * experts[e]!.Scaling, coefficient[p]);
            (pairsOf.TryGetValue(e, out List<int>? list) ? list : pairsOf[e] = []).Add(p);
        }
        var all = pairsOf.Values.SelectMany(p => p).ToList();
        Assert.Equal(all.Count, all.Distinct().Count());
        Assert.True(all.Count == 0 || all.Max() == all.Count - 1, $"{data}: pairs are not 0..{all.Count - 1}");
        int previousEnd = 0;
        foreach (int e in pairsOf.Keys.Order())
        {
            List<int> segment = pairsOf[e];
            Assert.Equal(previousEnd, segment.Min());
            Assert.Equal(segment.Count, segment.Max() - segment.Min() + 1);
            previousEnd = segment.Max() + 1;
        }

        int[] itemExpert = run.Read(run.ItemExpert, itemCount), itemRow = run.Read(run.ItemRow, itemCount);
        int[] itemStart = run.Read(run.ItemPairStart, itemCount), itemEnd = run.Read(run.ItemPairEnd, itemCount);
        var covered = new HashSet<(int Row, int Pair)>();
        for (int item = 0; item < itemCount; item++)
        {
            int e = itemExpert[item];
            Assert.True(itemEnd[item] - itemStart[item] is > 0 and <= ShrinkKernel.PairsPerItem, $"{data}: item {item} has {itemEnd[item] - itemStart[item]} pairs");
            for (int row = itemRow[item]; row < Math.Min(ranks[e], itemRow[item] + run.RowsPerItem); row++)
            {
                for (int p = itemStart[item]; p < itemEnd[item]; p++)
                {
                    Assert.Contains(p, pairsOf[e]);
                    Assert.True(covered.Add((row, p)), $"{data}: row {row} of pair {p} is in two items");
                }
            }
        }
        Assert.Equal(pairsOf.Sum(s => s.Value.Count * ranks[s.Key]), covered.Count);
    }
}

/// <summary>The shrink: V[pair, r] = w · s · (A_e[r] · x_t) against float64, for F32 and F16 storage.</summary>
public abstract class ShrinkKernelTests(DeviceFixture fixture)
{
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void MatchesTheFloat64Reference(bool halfX, bool halfWeights)
    {
        var data = new TestData();
        const int tokens = 11, k = 2, n = 37;
        int[] ranks = [16, 1, 3, 8];
        RawFactors?[] experts = ranks.Select(r => data.Factors(r, n, 5)).ToArray();
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(ranks.Length)).ToArray();
        float[] weights = data.Normal(tokens * k), x = data.Normal(tokens * n);
        using var run = new KernelPipeline(fixture.Device, experts, ids, weights, k, halfWeights);
        if (halfX)
        {
            x = DeviceIo.FromHalfBits(DeviceIo.ToHalfBits(x));
            run.Shrink(DeviceIo.ToHalfBits(x));
        }
        else
        {
            run.Shrink(x);
        }
        int[] slotPair = run.Read(run.SlotPair, ids.Length);
        float[] v = run.Read(run.V, (long)ids.Length * run.MaxRank);
        long aOffset = 0;
        var offsets = new long[ranks.Length];
        for (int e = 0; e < ranks.Length; e++)
        {
            offsets[e] = aOffset;
            aOffset += ranks[e] * n;
        }
        for (int i = 0; i < ids.Length; i++)
        {
            int e = ids[i], p = slotPair[i];
            double c = (double)weights[i] * experts[e]!.Scaling;
            for (int r = 0; r < ranks[e]; r++)
            {
                double dot = 0, magnitude = 0;
                for (int j = 0; j < n; j++)
                {
                    double term = (double)run.AWeights[offsets[e] + r * n + j] * x[(i / k) * n + j];
                    dot += term;
                    magnitude += Math.Abs(term);
                }
                double got = v[(long)p * run.MaxRank + r], expected = c * dot;
                Assert.True(Math.Abs(got - expected) <= 1e-5 * Math.Abs(c) * magnitude + 1e-30,
                    $"{data}: slot {i} (expert {e}) row {r}: V = {got}, expected {expected}");
            }
        }
    }
}

/// <summary>
/// The whole expert path (dispatch, shrink, expand) against the float64 forward, in every storage
/// combination, with T = 1, an expert no token selects, empty slots and mixed ranks; and in
/// parameter-mixing mode against the float64 s · (Σ w B)(Σ w A) x, repeated experts in a token included.
/// </summary>
public abstract class ExpandKernelTests(DeviceFixture fixture)
{
    [Theory]
    [InlineData(7, 2, false, false)]
    [InlineData(1, 1, false, false)]
    [InlineData(5, 5, false, true)]
    [InlineData(6, 2, true, false)]
    [InlineData(4, 3, true, true)]
    public void MatchesTheFloat64Forward(int tokens, int k, bool halfActivations, bool halfWeights)
    {
        var data = new TestData();
        const int n = 23, m = 45;
        int[] ranks = [3, 16, 1, 8, 5];
        RawFactors?[] experts = ranks.Select(r => data.Factors(r, n, m)).ToArray();
        // Expert 4 never chosen; some slots empty.
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(-1, 4)).ToArray();
        float[] weights = data.Normal(tokens * k), x = data.Normal(tokens * n), yBase = data.Normal(tokens * m);
        using var run = new KernelPipeline(fixture.Device, experts, ids, weights, k, halfWeights);
        RawFactors?[] seen = halfWeights
            ? experts.Select(f => f is null ? null : f with { A = Round(f.A), B = Round(f.B) }).ToArray()
            : experts;
        string where = $"{data} (T={tokens}, k={k}, F16 activations {halfActivations}, F16 weights {halfWeights})";
        ReferenceOutput expected;
        if (halfActivations)
        {
            x = Round(x);
            yBase = Round(yBase);
            ushort[] y = DeviceIo.ToHalfBits(yBase);
            run.Forward(DeviceIo.ToHalfBits(x), y);
            expected = Reference.Forward(seen, x, yBase, tokens, ids, weights.Select(w => (double)w).ToArray(), k);
            Reference.CheckHalf(y.Select(b => (Half)HalfBits.ToSingle(b)).ToArray(), expected, yBase, where);
        }
        else
        {
            float[] y = (float[])yBase.Clone();
            run.Forward(x, y);
            expected = Reference.Forward(seen, x, yBase, tokens, ids, weights.Select(w => (double)w).ToArray(), k);
            Reference.CheckFloat32(y, expected, yBase, k, where);
        }
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, true)]
    public void ParameterMixingMatchesTheFloat64Forward(bool halfActivations, bool halfWeights)
    {
        var data = new TestData();
        const int tokens = 5, k = 3, n = 23, m = 45, rank = 6;
        RawFactors?[] experts = Enumerable.Range(0, 4).Select(_ => (RawFactors?)data.Factors(rank, n, m, scaling: 1.5f)).ToArray();
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(-1, 4)).ToArray();
        ids[0] = ids[1] = 2; // a repeated expert adds up in both sums
        float[] weights = data.Normal(tokens * k), x = data.Normal(tokens * n), yBase = data.Normal(tokens * m);
        using var run = new KernelPipeline(fixture.Device, experts, ids, weights, k, halfWeights, parameterMixing: true);
        RawFactors?[] seen = halfWeights
            ? experts.Select(f => f is null ? null : f with { A = Round(f.A), B = Round(f.B) }).ToArray()
            : experts;
        string where = $"{data} (parameter mixing, F16 activations {halfActivations}, F16 weights {halfWeights})";
        if (halfActivations)
        {
            x = Round(x);
            yBase = Round(yBase);
            ushort[] y = DeviceIo.ToHalfBits(yBase);
            run.Forward(DeviceIo.ToHalfBits(x), y);
            ReferenceOutput expected = Reference.ForwardParameterMixing(seen, x, yBase, tokens, ids, weights.Select(w => (double)w).ToArray(), k);
            Reference.CheckHalf(y.Select(b => (Half)HalfBits.ToSingle(b)).ToArray(), expected, yBase, where);
        }
        else
        {
            float[] y = (float[])yBase.Clone();
            run.Forward(x, y);
            ReferenceOutput expected = Reference.ForwardParameterMixing(seen, x, yBase, tokens, ids, weights.Select(w => (double)w).ToArray(), k);
            Reference.CheckFloat32(y, expected, yBase, k, where);
        }
    }

    private static float[] Round(float[] values) => DeviceIo.FromHalfBits(DeviceIo.ToHalfBits(values));
}

public sealed class GatingKernelTestsOnSimulator(SimulatorFixture f) : GatingKernelTests(f), IClassFixture<SimulatorFixture>;

public sealed class GatingKernelTestsOnFourWarpSimulator(FourWarpSimulatorFixture f) : GatingKernelTests(f), IClassFixture<FourWarpSimulatorFixture>;

[Trait("Backend", "OpenCL")]
public sealed class GatingKernelTestsOnRusticl(RusticlFixture f) : GatingKernelTests(f), IClassFixture<RusticlFixture>;

[Trait("Backend", "OpenCL")]
public sealed class GatingKernelTestsOnPocl(PoclFixture f) : GatingKernelTests(f), IClassFixture<PoclFixture>;

[Trait("Backend", "Cuda")]
public sealed class GatingKernelTestsOnCuda(CudaFixture f) : GatingKernelTests(f), IClassFixture<CudaFixture>;

public sealed class DispatchKernelTestsOnSimulator(SimulatorFixture f) : DispatchKernelTests(f), IClassFixture<SimulatorFixture>;

public sealed class DispatchKernelTestsOnFourWarpSimulator(FourWarpSimulatorFixture f) : DispatchKernelTests(f), IClassFixture<FourWarpSimulatorFixture>;

[Trait("Backend", "OpenCL")]
public sealed class DispatchKernelTestsOnRusticl(RusticlFixture f) : DispatchKernelTests(f), IClassFixture<RusticlFixture>;

[Trait("Backend", "OpenCL")]
public sealed class DispatchKernelTestsOnPocl(PoclFixture f) : DispatchKernelTests(f), IClassFixture<PoclFixture>;

[Trait("Backend", "Cuda")]
public sealed class DispatchKernelTestsOnCuda(CudaFixture f) : DispatchKernelTests(f), IClassFixture<CudaFixture>;

public sealed class ShrinkKernelTestsOnSimulator(SimulatorFixture f) : ShrinkKernelTests(f), IClassFixture<SimulatorFixture>;

public sealed class ShrinkKernelTestsOnFourWarpSimulator(FourWarpSimulatorFixture f) : ShrinkKernelTests(f), IClassFixture<FourWarpSimulatorFixture>;

[Trait("Backend", "OpenCL")]
public sealed class ShrinkKernelTestsOnRusticl(RusticlFixture f) : ShrinkKernelTests(f), IClassFixture<RusticlFixture>;

[Trait("Backend", "OpenCL")]
public sealed class ShrinkKernelTestsOnPocl(PoclFixture f) : ShrinkKernelTests(f), IClassFixture<PoclFixture>;

[Trait("Backend", "Cuda")]
public sealed class ShrinkKernelTestsOnCuda(CudaFixture f) : ShrinkKernelTests(f), IClassFixture<CudaFixture>;

public sealed class ExpandKernelTestsOnSimulator(SimulatorFixture f) : ExpandKernelTests(f), IClassFixture<SimulatorFixture>;

public sealed class ExpandKernelTestsOnFourWarpSimulator(FourWarpSimulatorFixture f) : ExpandKernelTests(f), IClassFixture<FourWarpSimulatorFixture>;

[Trait("Backend", "OpenCL")]
public sealed class ExpandKernelTestsOnRusticl(RusticlFixture f) : ExpandKernelTests(f), IClassFixture<RusticlFixture>;

[Trait("Backend", "OpenCL")]
public sealed class ExpandKernelTestsOnPocl(PoclFixture f) : ExpandKernelTests(f), IClassFixture<PoclFixture>;

[Trait("Backend", "Cuda")]
public sealed class ExpandKernelTestsOnCuda(CudaFixture f) : ExpandKernelTests(f), IClassFixture<CudaFixture>;

public sealed class GatingLimitTestsOnSimulator(SimulatorFixture f) : GatingLimitTests(f), IClassFixture<SimulatorFixture>;

public sealed class GatingLimitTestsOnFourWarpSimulator(FourWarpSimulatorFixture f) : GatingLimitTests(f), IClassFixture<FourWarpSimulatorFixture>;

[Trait("Backend", "OpenCL")]
public sealed class GatingLimitTestsOnRusticl(RusticlFixture f) : GatingLimitTests(f), IClassFixture<RusticlFixture>;

[Trait("Backend", "OpenCL")]
public sealed class GatingLimitTestsOnPocl(PoclFixture f) : GatingLimitTests(f), IClassFixture<PoclFixture>;

[Trait("Backend", "Cuda")]
public sealed class GatingLimitTestsOnCuda(CudaFixture f) : GatingLimitTests(f), IClassFixture<CudaFixture>;
