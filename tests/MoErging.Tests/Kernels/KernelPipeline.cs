using ILGPU;
using ILGPU.Runtime;
using MoErging.Execution;
using MoErging.Kernels;

namespace MoErging.Tests.Kernels;

/// <summary>
/// One module's experts and a batch of slots laid out for the kernels from the test's own raw factors
/// (not through the engine's upload): rows padded with zeros to whole 16-byte vectors, as the kernels
/// require; in F32, F16 or BF16 storage (<see cref="WeightPrecision"/>). V is poisoned before the launches, so a value
/// the shrink should write and did not shows up.
/// </summary>
public sealed class KernelPipeline : IDisposable
{
    private readonly List<IDisposable> _buffers = [];
    private readonly GpuDevice _device;
    private readonly AcceleratorStream _stream;

    public KernelPipeline(GpuDevice device, RawFactors?[] experts, int[] ids, float[] weights, int topK, WeightPrecision storage, bool parameterMixing = false)
    {
        ParameterMixing = parameterMixing;
        _device = device;
        Experts = experts;
        Ids = ids;
        Weights = weights;
        TopK = topK;
        Storage = storage;
        RawFactors first = experts.First(f => f is not null)!;
        InputDim = first.InputDim;
        OutputDim = first.OutputDim;
        MaxRank = experts.Max(f => f?.Rank ?? 0);
        APitch = (InputDim + 7) / 8 * 8;
        BPitch = (OutputDim + 7) / 8 * 8;
        Accelerator accelerator = device.Accelerator;
        _stream = accelerator.CreateStream();

        var aOffset = new long[experts.Length];
        var bOffset = new long[experts.Length];
        var rank = new int[experts.Length];
        var scaling = new float[experts.Length];
        var a = new List<float>();
        var bT = new List<float>();
        for (int e = 0; e < experts.Length; e++)
        {
            if (experts[e] is not RawFactors f)
            {
                continue;
            }
            aOffset[e] = a.Count;
            bOffset[e] = bT.Count;
            rank[e] = f.Rank;
            scaling[e] = f.Scaling;
            for (int k = 0; k < f.Rank; k++)
            {
                a.AddRange(f.A.AsSpan(k * InputDim, InputDim));
                a.AddRange(new float[APitch - InputDim]);
                for (int o = 0; o < BPitch; o++)
                {
                    bT.Add(o < OutputDim ? f.B[o * f.Rank + k] : 0f); // Bᵀ, as the kernels read it
                }
            }
        }
        PaddedA = Stored.Values([.. a], storage);
        PaddedBTransposed = Stored.Values([.. bT], storage);
        AOffsets = aOffset;
        AOffset = Own(DeviceIo.Upload(accelerator, aOffset));
        BOffset = Own(DeviceIo.Upload(accelerator, bOffset));
        Rank = Own(DeviceIo.Upload(accelerator, rank));
        Scaling = Own(DeviceIo.Upload(accelerator, scaling));
        IdsBuffer = Own(DeviceIo.Upload(accelerator, ids));
        WeightsBuffer = Own(DeviceIo.Upload(accelerator, weights));
        V = Own(DeviceIo.Poisoned(accelerator, (long)ids.Length * Math.Max(1, MaxRank), float.NaN));
    }

    public RawFactors?[] Experts { get; }

    public int[] Ids { get; }

    public float[] Weights { get; }

    public int TopK { get; }

    /// <summary>How the factors are stored.</summary>
    public WeightPrecision Storage { get; }

    /// <summary>Shrink and expand in parameter-mixing mode.</summary>
    public bool ParameterMixing { get; }

    public int InputDim { get; }

    public int OutputDim { get; }

    public int MaxRank { get; }

    public int APitch { get; }

    public int BPitch { get; }

    /// <summary>A as the kernels see it: padded rows, rounded to the <see cref="Storage"/>.</summary>
    public float[] PaddedA { get; }

    /// <summary>Bᵀ as the kernels see it.</summary>
    public float[] PaddedBTransposed { get; }

    public long[] AOffsets { get; }

    public MemoryBuffer1D<long, Stride1D.Dense> AOffset { get; }

    public MemoryBuffer1D<long, Stride1D.Dense> BOffset { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> Rank { get; }

    public MemoryBuffer1D<float, Stride1D.Dense> Scaling { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> IdsBuffer { get; }

    public MemoryBuffer1D<float, Stride1D.Dense> WeightsBuffer { get; }

    public MemoryBuffer1D<float, Stride1D.Dense> V { get; }

    /// <summary>The shrink alone, from the given decision; X in F32 or F16 bits, starting <paramref name="offset"/> elements into its buffer.</summary>
    public void Shrink<TX>(TX[] x, int offset = 0, bool forceVector = false) where TX : unmanaged
    {
        switch (Storage)
        {
            case WeightPrecision.Float16:
                Shrink<TX, ushort>(x, DeviceIo.ToHalfBits(PaddedA), offset, forceVector);
                break;
            case WeightPrecision.BFloat16:
                Shrink<TX, BFloat16Bits>(x, DeviceIo.ToBFloat16Bits(PaddedA), offset, forceVector);
                break;
            default:
                Shrink<TX, float>(x, PaddedA, offset, forceVector);
                break;
        }
    }

    /// <summary>The shrink choosing each token's experts from expert-major scores (F32 factors); it writes the decision into <see cref="IdsBuffer"/> and <see cref="WeightsBuffer"/>.</summary>
    public void ShrinkChoosing(float[] x, ArrayView<float> scores, int experts)
    {
        using var xBuffer = DeviceIo.Upload(_device.Accelerator, x);
        using var aBuffer = DeviceIo.Upload(_device.Accelerator, PaddedA);
        LaunchShrink(xBuffer.View.BaseView, aBuffer.View.BaseView, forceVector: false, scores, experts);
        _stream.Synchronize();
    }

    /// <summary>Shrink then expand into y (in place); activations in F32 or F16 bits.</summary>
    public void Forward<TX>(TX[] x, TX[] y) where TX : unmanaged
    {
        switch (Storage)
        {
            case WeightPrecision.Float16:
                Forward<TX, ushort>(x, y, DeviceIo.ToHalfBits(PaddedA), DeviceIo.ToHalfBits(PaddedBTransposed));
                break;
            case WeightPrecision.BFloat16:
                Forward<TX, BFloat16Bits>(x, y, DeviceIo.ToBFloat16Bits(PaddedA), DeviceIo.ToBFloat16Bits(PaddedBTransposed));
                break;
            default:
                Forward<TX, float>(x, y, PaddedA, PaddedBTransposed);
                break;
        }
    }

    private void Shrink<TX, TW>(TX[] x, TW[] a, int offset, bool forceVector) where TX : unmanaged where TW : unmanaged
    {
        using var xBuffer = DeviceIo.Upload(_device.Accelerator, new TX[offset].Concat(x).ToArray());
        using var aBuffer = DeviceIo.Upload(_device.Accelerator, a);
        ArrayView<TX> xv = xBuffer.View.SubView(offset, x.Length);
        LaunchShrink(xv, aBuffer.View.BaseView, forceVector);
        _stream.Synchronize();
    }

    private void Forward<TX, TW>(TX[] x, TX[] y, TW[] a, TW[] bT) where TX : unmanaged where TW : unmanaged
    {
        using var xBuffer = DeviceIo.Upload(_device.Accelerator, x);
        using var yBuffer = DeviceIo.Upload(_device.Accelerator, y);
        using var aBuffer = DeviceIo.Upload(_device.Accelerator, a);
        using var bBuffer = DeviceIo.Upload(_device.Accelerator, bT);
        LaunchShrink(xBuffer.View.BaseView, aBuffer.View.BaseView, forceVector: false);
        ArrayView<TX> yv = yBuffer.View.SubView(0, y.Length);
        _device.Kernels.Expand.Launch(_stream, new ExpandArgs<TX, TW>
        {
            Y = yv,
            Tokens = Ids.Length / TopK,
            OutputDim = OutputDim,
            YVector = VectorRows.Aligned(yv, OutputDim, _device.Accelerator) ? 1 : 0,
            TopK = TopK,
            Ids = IdsBuffer.View,
            Weights = WeightsBuffer.View,
            ParameterMixing = ParameterMixing ? 1 : 0,
            VStride = Math.Max(1, MaxRank),
            Scaling = Scaling.View,
            BTransposed = bBuffer.View,
            BPitch = BPitch,
            BOffset = BOffset.View,
            Rank = Rank.View,
            V = V.View,
        });
        _stream.Synchronize();
        yv.CopyToCPU(y);
    }

    private void LaunchShrink<TX, TW>(ArrayView<TX> x, ArrayView<TW> a, bool forceVector, ArrayView<float> scores = default, int experts = 0)
        where TX : unmanaged
        where TW : unmanaged =>
        _device.Kernels.Shrink.Launch(_stream, new ShrinkArgs<TX, TW>
        {
            X = x,
            Tokens = Ids.Length / TopK,
            InputDim = InputDim,
            XVector = forceVector || VectorRows.Aligned(x, InputDim, _device.Accelerator) ? 1 : 0,
            TopK = TopK,
            Experts = scores.IsValid ? experts : Experts.Length,
            Select = scores.IsValid ? 1 : 0,
            Scores = scores.IsValid ? scores : WeightsBuffer.View,
            Ids = IdsBuffer.View,
            Weights = WeightsBuffer.View,
            A = a,
            APitch = APitch,
            ParameterMixing = ParameterMixing ? 1 : 0,
            AOffset = AOffset.View,
            Rank = Rank.View,
            Scaling = Scaling.View,
            RowGroups = ShrinkKernel.RowGroups(MaxRank, _device.Kernels.Shrink.RowsPerGroup),
            VStride = Math.Max(1, MaxRank),
            V = V.View,
        });

    public T[] Read<T>(MemoryBuffer1D<T, Stride1D.Dense> buffer, long length) where T : unmanaged
    {
        var values = new T[length];
        buffer.View.SubView(0, length).CopyToCPU(values);
        return values;
    }

    private T Own<T>(T buffer) where T : IDisposable
    {
        _buffers.Add(buffer);
        return buffer;
    }

    public void Dispose()
    {
        foreach (IDisposable b in _buffers)
        {
            b.Dispose();
        }
        _stream.Dispose();
    }
}
