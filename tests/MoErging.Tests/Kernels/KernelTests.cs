using ILGPU;
using ILGPU.Runtime;
using MoErging.Execution;
using MoErging.Kernels;
using MoErging.Routing;
using Half = System.Half;

namespace MoErging.Tests.Kernels;

/// <summary>
/// The gating's scores and selection against float64: each score within 1e-4 of the float64 score (relative,
/// floored at 1), the kept experts a valid top-k (slack 1e-4 for near ties) in order, and the weights within
/// 1e-5 of the float64 softmax over them; d_in 37 takes the bounded scalar loads, 40 the vector loads. With F16 or BF16
/// prototypes the reference scores the rounded prototypes, the values the kernel reads, with the same tolerances.
/// Outputs are poisoned first.
/// </summary>
public abstract class GatingKernelTests(DeviceFixture fixture)
{
    public static TheoryData<int, int, int, int, bool, bool, bool, int, WeightPrecision> Cases() => new()
    {
        // tokens, experts, k, normalization (0 none, 1 LayerNorm, 2 L2), |·|, bias, F16 x, d_in, prototype storage
        { 1, 5, 1, 0, true, false, false, 37, WeightPrecision.Float32 },
        { 9, 5, 2, 1, false, true, false, 37, WeightPrecision.Float32 },
        { 5, 5, 5, 2, false, false, false, 40, WeightPrecision.Float32 },
        { 3, 37, 2, 0, true, false, true, 37, WeightPrecision.Float32 },
        { 6, 7, 3, 1, true, true, true, 40, WeightPrecision.Float32 },
        { 13, 70, 4, 2, true, false, true, 16, WeightPrecision.Float32 },
        { 8, 6, 2, 2, true, true, false, 40, WeightPrecision.Float16 },
        { 5, 37, 3, 1, false, false, false, 37, WeightPrecision.Float16 },
        { 6, 9, 2, 0, true, true, true, 40, WeightPrecision.Float16 },
        { 3, 11, 4, 1, false, true, true, 37, WeightPrecision.Float16 },
        { 9, 6, 2, 1, false, true, false, 40, WeightPrecision.BFloat16 },
        { 4, 37, 3, 0, true, false, false, 37, WeightPrecision.BFloat16 },
        { 7, 9, 2, 2, true, true, true, 40, WeightPrecision.BFloat16 },
        { 5, 11, 4, 1, false, false, true, 37, WeightPrecision.BFloat16 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesTheFloat64Reference(int tokens, int experts, int k, int normalization, bool absolute, bool bias, bool half, int n,
        WeightPrecision storage)
    {
        GpuDevice device = fixture.Device;
        var data = new TestData();
        float[] x = data.Normal(tokens * n, 2), p = data.Normal(experts * n), b = bias ? data.Normal(experts) : [];
        if (half)
        {
            x = DeviceIo.FromHalfBits(DeviceIo.ToHalfBits(x));
        }
        p = Stored.Values(p, storage);
        float temperature = 0.5f + (float)data.Rng.NextDouble();
        int pitch = VectorRows.Pitch(n);
        var padded = new float[experts * pitch];
        for (int e = 0; e < experts; e++)
        {
            p.AsSpan(e * n, n).CopyTo(padded.AsSpan(e * pitch));
        }
        Accelerator accelerator = device.Accelerator;
        using MemoryBuffer prototypes = storage switch
        {
            WeightPrecision.Float16 => DeviceIo.Upload(accelerator, DeviceIo.ToHalfBits(padded)),
            WeightPrecision.BFloat16 => DeviceIo.Upload(accelerator, DeviceIo.ToBFloat16Bits(padded)),
            _ => DeviceIo.Upload(accelerator, padded),
        };
        using var biasBuffer = DeviceIo.Upload(accelerator, b);
        using var scores = DeviceIo.Poisoned(accelerator, experts * tokens, float.NaN);
        using var ids = DeviceIo.Poisoned(accelerator, tokens * k, int.MinValue);
        using var weights = DeviceIo.Poisoned(accelerator, tokens * k, float.NaN);
        using AcceleratorStream stream = accelerator.CreateStream();
        if (half)
        {
            Score(DeviceIo.ToHalfBits(x));
        }
        else
        {
            Score(x);
        }
        device.Kernels.Gating.LaunchSelect(stream, new SelectArgs { Scores = scores.View, Tokens = tokens, Experts = experts, TopK = k, Ids = ids.View, Weights = weights.View });
        stream.Synchronize();
        KernelAssertions.AssertNone($"{data}");
        float[] gotScores = scores.GetAsArray1D();
        int[] gotIds = ids.GetAsArray1D();
        float[] gotWeights = weights.GetAsArray1D();
        for (int t = 0; t < tokens; t++)
        {
            double[] expectedScores = Reference.Scores(x.AsSpan(t * n, n), p, (InputNormalization)normalization,
                absolute ? ScoreFunction.AbsoluteValue : ScoreFunction.Identity, temperature, b);
            for (int e = 0; e < experts; e++)
            {
                double got = gotScores[e * tokens + t];
                Assert.True(Math.Abs(got - expectedScores[e]) <= 1e-4 * Math.Max(1, Math.Abs(expectedScores[e])),
                    $"{data}: token {t} expert {e}: score {got}, expected {expectedScores[e]}");
            }
            double[] expected = Reference.CheckTopKAndWeigh(expectedScores, gotIds.AsSpan(t * k, k), 1e-4, $"{data}, token {t}");
            for (int s = 0; s < k; s++)
            {
                Assert.True(Math.Abs(gotWeights[t * k + s] - expected[s]) < 1e-5, $"{data}: token {t} slot {s}: weight {gotWeights[t * k + s]}, expected {expected[s]}");
            }
        }

        void Score<TX>(TX[] xValues) where TX : unmanaged
        {
            using var xb = DeviceIo.Upload(accelerator, xValues);
            switch (storage)
            {
                case WeightPrecision.Float16:
                    device.Kernels.Gating.LaunchScores(stream, Args(xb.View.BaseView, Prototypes<ushort>()));
                    break;
                case WeightPrecision.BFloat16:
                    device.Kernels.Gating.LaunchScores(stream, Args(xb.View.BaseView, Prototypes<BFloat16Bits>()));
                    break;
                default:
                    device.Kernels.Gating.LaunchScores(stream, Args(xb.View.BaseView, Prototypes<float>()));
                    break;
            }
            stream.Synchronize();
        }

        ArrayView<TP> Prototypes<TP>() where TP : unmanaged => prototypes.AsArrayView<TP>(0, prototypes.LengthInBytes / prototypes.ElementSize);

        ScoresArgs<TX, TP> Args<TX, TP>(ArrayView<TX> xv, ArrayView<TP> pv)
            where TX : unmanaged
            where TP : unmanaged => new()
            {
                X = xv,
                Tokens = tokens,
                InputDim = n,
                XVector = VectorRows.Aligned(xv, n, accelerator) ? 1 : 0,
                Experts = experts,
                Prototypes = pv,
                PrototypePitch = pitch,
                Normalization = normalization,
                Absolute = absolute ? 1 : 0,
                InverseTemperature = 1f / temperature,
                HasBias = bias ? 1 : 0,
                Bias = biasBuffer.View,
                Scores = scores.View,
            };
    }
}

/// <summary>
/// The shrink: V[slot, r] = c · (A_e[r] · x_t) against float64 (from A as stored) for every contributing slot, for F32, F16 and BF16 storage,
/// with vector (d_in 40) and bounded scalar (d_in 37, or a view that starts mid-vector) loads of X; slots that add
/// nothing are left as they were. And the selection the shrink runs itself gives the selection kernel's decision
/// and the same V, bit for bit.
/// </summary>
public abstract class ShrinkKernelTests(DeviceFixture fixture)
{
    [Theory]
    [InlineData(false, WeightPrecision.Float32, 37, 0)]
    [InlineData(true, WeightPrecision.Float32, 37, 0)]
    [InlineData(false, WeightPrecision.Float16, 40, 0)]
    [InlineData(true, WeightPrecision.Float16, 40, 0)]
    [InlineData(false, WeightPrecision.Float32, 40, 1)] // the view starts one element in: not 16-byte aligned, so scalar loads
    [InlineData(true, WeightPrecision.Float16, 40, 3)]
    [InlineData(false, WeightPrecision.BFloat16, 40, 0)]
    [InlineData(true, WeightPrecision.BFloat16, 37, 0)]
    [InlineData(false, WeightPrecision.BFloat16, 40, 1)]
    [InlineData(true, WeightPrecision.BFloat16, 40, 0)]
    public void MatchesTheFloat64Reference(bool halfX, WeightPrecision storage, int n, int offset) => Check(11, 2, [16, 1, 3, 8, 0], halfX, storage, n, offset);

    /// <summary>More slots than one scan chunk holds (8 per thread of a group): the shrink's list is refilled several times.</summary>
    [Fact]
    public void SlotsSpanSeveralScanChunks()
    {
        int chunk = ShrinkKernel.SlotsPerThread * fixture.Device.Kernels.Shrink.GroupSize;
        Check(chunk * 5 / 4, 2, [2, 1, 0], halfX: false, WeightPrecision.Float32, n: 8, offset: 0);
    }

    private void Check(int tokens, int k, int[] ranks, bool halfX, WeightPrecision storage, int n, int offset)
    {
        var data = new TestData();
        RawFactors?[] experts = ranks.Select(r => r == 0 ? null : data.Factors(r, n, 5)).ToArray();
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(-1, ranks.Length)).ToArray();
        float[] weights = data.Normal(tokens * k).Select((w, i) => i % 7 == 3 ? 0f : w).ToArray(), x = data.Normal(tokens * n);
        using var run = new KernelPipeline(fixture.Device, experts, ids, weights, k, storage);
        if (halfX)
        {
            x = DeviceIo.FromHalfBits(DeviceIo.ToHalfBits(x));
            run.Shrink(DeviceIo.ToHalfBits(x), offset);
        }
        else
        {
            run.Shrink(x, offset);
        }
        KernelAssertions.AssertNone($"{data}");
        float[] v = run.Read(run.V, (long)ids.Length * run.MaxRank);
        for (int i = 0; i < ids.Length; i++)
        {
            int e = ids[i];
            bool contributes = e >= 0 && weights[i] != 0 && ranks[e] > 0;
            for (int r = 0; r < run.MaxRank; r++)
            {
                double got = v[(long)i * run.MaxRank + r];
                if (!contributes || r >= ranks[e])
                {
                    Assert.True(double.IsNaN(got), $"{data}: slot {i} (expert {e}, weight {weights[i]}) row {r} was written: {got}");
                    continue;
                }
                double c = (double)weights[i] * experts[e]!.Scaling, dot = 0, magnitude = 0;
                for (int j = 0; j < n; j++)
                {
                    double term = (double)run.PaddedA[run.AOffsets[e] + r * run.APitch + j] * x[(i / k) * n + j];
                    dot += term;
                    magnitude += Math.Abs(term);
                }
                double expected = c * dot;
                Assert.True(Math.Abs(got - expected) <= 1e-5 * Math.Abs(c) * magnitude + 1e-30,
                    $"{data}: slot {i} (expert {e}) row {r}: V = {got}, expected {expected}");
            }
        }
    }

    [Theory]
    [InlineData(5, 6, 2)]
    [InlineData(40, 9, 3)] // more tokens than a group has threads on some drivers: several chunks
    public void ChoosingInTheShrinkGivesTheSelectionKernelsDecision(int tokens, int expertCount, int k)
    {
        var data = new TestData();
        const int n = 16;
        RawFactors?[] experts = Enumerable.Range(0, expertCount).Select(e => e == 1 ? null : (RawFactors?)data.Factors(1 + e % 4, n, 3)).ToArray();
        GpuDevice device = fixture.Device;
        Accelerator accelerator = device.Accelerator;
        float[] scoreValues = data.Normal(expertCount * tokens), x = data.Normal(tokens * n);
        scoreValues[3] = scoreValues[3 + tokens]; // a tie: the lower expert wins in both
        using var scores = DeviceIo.Upload(accelerator, scoreValues);
        using var ids = DeviceIo.Poisoned(accelerator, tokens * k, int.MinValue);
        using var weights = DeviceIo.Poisoned(accelerator, tokens * k, float.NaN);
        using AcceleratorStream stream = accelerator.CreateStream();
        device.Kernels.Gating.LaunchSelect(stream, new SelectArgs { Scores = scores.View, Tokens = tokens, Experts = expertCount, TopK = k, Ids = ids.View, Weights = weights.View });
        stream.Synchronize();
        int[] chosen = ids.GetAsArray1D();
        float[] chosenWeights = weights.GetAsArray1D();

        using var given = new KernelPipeline(device, experts, chosen, chosenWeights, k, WeightPrecision.Float32);
        given.Shrink(x);
        using var choosing = new KernelPipeline(device, experts, new int[tokens * k], new float[tokens * k], k, WeightPrecision.Float32);
        choosing.ShrinkChoosing(x, scores.View, expertCount);
        KernelAssertions.AssertNone($"{data}");
        Assert.Equal(chosen, choosing.Read(choosing.IdsBuffer, tokens * k));
        Assert.Equal(chosenWeights, choosing.Read(choosing.WeightsBuffer, tokens * k));
        float[] expected = given.Read(given.V, (long)tokens * k * given.MaxRank), got = choosing.Read(choosing.V, (long)tokens * k * given.MaxRank);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(got[i]), $"{data}: V[{i}] is {got[i]} choosing, {expected[i]} given");
        }
    }
}

/// <summary>
/// The expert path (shrink, expand) against the float64 forward of the factors as stored, in every storage
/// combination, with T = 1, an expert no token selects, empty slots and mixed ranks; and in
/// parameter-mixing mode against the float64 s · (Σ w B)(Σ w A) x, repeated experts in a token included.
/// </summary>
public abstract class ExpandKernelTests(DeviceFixture fixture)
{
    [Theory]
    [InlineData(7, 2, false, WeightPrecision.Float32, 23, 45)]
    [InlineData(1, 1, false, WeightPrecision.Float32, 23, 45)]
    [InlineData(5, 5, false, WeightPrecision.Float16, 23, 45)]
    [InlineData(6, 2, true, WeightPrecision.Float32, 23, 45)]
    [InlineData(4, 3, true, WeightPrecision.Float16, 23, 45)]
    [InlineData(6, 2, false, WeightPrecision.Float32, 32, 48)] // whole vectors: 16-byte loads and stores of x and y
    [InlineData(3, 2, true, WeightPrecision.Float16, 24, 1040)] // F16 y in vectors, more outputs than one group covers
    [InlineData(5, 5, false, WeightPrecision.BFloat16, 23, 45)]
    [InlineData(4, 3, true, WeightPrecision.BFloat16, 23, 45)]
    [InlineData(6, 2, false, WeightPrecision.BFloat16, 32, 48)]
    [InlineData(3, 2, true, WeightPrecision.BFloat16, 24, 1040)]
    public void MatchesTheFloat64Forward(int tokens, int k, bool halfActivations, WeightPrecision storage, int n, int m)
    {
        var data = new TestData();
        int[] ranks = [3, 16, 1, 8, 5];
        RawFactors?[] experts = ranks.Select(r => data.Factors(r, n, m)).ToArray();
        // Expert 4 never chosen; some slots empty.
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(-1, 4)).ToArray();
        float[] weights = data.Normal(tokens * k), x = data.Normal(tokens * n), yBase = data.Normal(tokens * m);
        using var run = new KernelPipeline(fixture.Device, experts, ids, weights, k, storage);
        RawFactors?[] seen = MoErging.Tests.Stored.Factors(experts, storage); // the factors as the kernels read them
        string where = $"{data} (T={tokens}, k={k}, F16 activations {halfActivations}, {storage} weights)";
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
    [InlineData(false, WeightPrecision.Float32)]
    [InlineData(true, WeightPrecision.Float16)]
    [InlineData(false, WeightPrecision.BFloat16)]
    [InlineData(true, WeightPrecision.BFloat16)]
    public void ParameterMixingMatchesTheFloat64Forward(bool halfActivations, WeightPrecision storage)
    {
        var data = new TestData();
        const int tokens = 5, k = 3, n = 23, m = 45, rank = 6;
        RawFactors?[] experts = Enumerable.Range(0, 4).Select(_ => (RawFactors?)data.Factors(rank, n, m, scaling: 1.5f)).ToArray();
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(-1, 4)).ToArray();
        ids[0] = ids[1] = 2; // a repeated expert adds up in both sums
        float[] weights = data.Normal(tokens * k), x = data.Normal(tokens * n), yBase = data.Normal(tokens * m);
        using var run = new KernelPipeline(fixture.Device, experts, ids, weights, k, storage, parameterMixing: true);
        RawFactors?[] seen = MoErging.Tests.Stored.Factors(experts, storage); // the factors as the kernels read them
        string where = $"{data} (parameter mixing, F16 activations {halfActivations}, {storage} weights)";
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

/// <summary>
/// The simulator checks the alignment of every vector access: a shrink told that X may take vector loads,
/// given a view that starts one element into its buffer, is caught (and nothing else is). On a GPU the same
/// launch would fault; the launchers decide vector loads from <see cref="VectorRows.Aligned"/> instead.
/// </summary>
public sealed class AlignmentChecks(SimulatorFixture fixture) : IClassFixture<SimulatorFixture>
{
    [Fact]
    public void AMisalignedVectorLoadIsCaughtOnTheSimulator()
    {
        var data = new TestData();
        const int n = 16;
        RawFactors?[] experts = [data.Factors(2, n, 3)];
        using var run = new KernelPipeline(fixture.Device, experts, [0, 0], [1f, 0.5f], 1, WeightPrecision.Float32);
        KernelAssertions.AssertNone("before the launch");
        run.Shrink(data.Normal(2 * n), offset: 1, forceVector: true);
        string[] failures = KernelAssertions.Take();
        Assert.NotEmpty(failures);
        Assert.Contains(failures, f => f.Contains("assumed pointer or view", StringComparison.Ordinal)); // ILGPU's AsAligned message
        run.Shrink(data.Normal(2 * n), offset: 4, forceVector: true); // 16 bytes in: aligned
        KernelAssertions.AssertNone($"{data}: an aligned view");
    }
}

