using ILGPU;
using ILGPU.Runtime;
using MoErging.Kernels;

namespace MoErging.Tests.Kernels;

/// <summary>
/// One module's experts and a batch of slots laid out for the kernels from the test's own raw factors
/// (not through the engine's upload), with every output buffer poisoned before the launches.
/// </summary>
public sealed class KernelPipeline : IDisposable
{
    private readonly List<IDisposable> _buffers = [];
    private readonly GpuDevice _device;
    private readonly AcceleratorStream _stream;

    public KernelPipeline(GpuDevice device, RawFactors?[] experts, int[] ids, float[] weights, int topK, bool halfWeights, bool parameterMixing = false)
    {
        ParameterMixing = parameterMixing;
        _device = device;
        Experts = experts;
        Ids = ids;
        Weights = weights;
        TopK = topK;
        HalfWeights = halfWeights;
        RawFactors first = experts.First(f => f is not null)!;
        InputDim = first.InputDim;
        OutputDim = first.OutputDim;
        MaxRank = experts.Max(f => f?.Rank ?? 0);
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
            a.AddRange(f.A);
            for (int k = 0; k < f.Rank; k++)
            {
                for (int o = 0; o < f.OutputDim; o++)
                {
                    bT.Add(f.B[o * f.Rank + k]); // Bᵀ, as the kernels read it
                }
            }
        }
        AWeights = halfWeights ? DeviceIo.FromHalfBits(DeviceIo.ToHalfBits([.. a])) : [.. a];
        BTransposedWeights = halfWeights ? DeviceIo.FromHalfBits(DeviceIo.ToHalfBits([.. bT])) : [.. bT];
        AOffset = Own(DeviceIo.Upload(accelerator, aOffset));
        BOffset = Own(DeviceIo.Upload(accelerator, bOffset));
        Rank = Own(DeviceIo.Upload(accelerator, rank));
        Scaling = Own(DeviceIo.Upload(accelerator, scaling));
        IdsBuffer = Own(DeviceIo.Upload(accelerator, ids));
        WeightsBuffer = Own(DeviceIo.Upload(accelerator, weights));
        int slots = ids.Length;
        RowsPerItem = device.Kernels.Shrink.RowsPerItem;
        long items = DispatchKernel.MaxItems(slots, experts.Length, MaxRank, RowsPerItem);
        SlotPair = Own(DeviceIo.Poisoned(accelerator, slots, int.MinValue));
        PairToken = Own(DeviceIo.Poisoned(accelerator, slots, int.MinValue));
        PairCoefficient = Own(DeviceIo.Poisoned(accelerator, slots, float.NaN));
        ItemExpert = Own(DeviceIo.Poisoned(accelerator, items, int.MinValue));
        ItemRow = Own(DeviceIo.Poisoned(accelerator, items, int.MinValue));
        ItemPairStart = Own(DeviceIo.Poisoned(accelerator, items, int.MinValue));
        ItemPairEnd = Own(DeviceIo.Poisoned(accelerator, items, int.MinValue));
        ItemCount = Own(DeviceIo.Poisoned(accelerator, 1, int.MinValue));
        V = Own(DeviceIo.Poisoned(accelerator, (long)slots * Math.Max(1, MaxRank), float.NaN));
    }

    public RawFactors?[] Experts { get; }

    public int[] Ids { get; }

    public float[] Weights { get; }

    public int TopK { get; }

    public bool HalfWeights { get; }

    /// <summary>Dispatch and expand in parameter-mixing mode.</summary>
    public bool ParameterMixing { get; }

    public int InputDim { get; }

    public int OutputDim { get; }

    public int MaxRank { get; }

    public int RowsPerItem { get; }

    /// <summary>The factors as the kernels see them (F16-rounded when <see cref="HalfWeights"/>).</summary>
    public float[] AWeights { get; }

    public float[] BTransposedWeights { get; }

    public MemoryBuffer1D<long, Stride1D.Dense> AOffset { get; }

    public MemoryBuffer1D<long, Stride1D.Dense> BOffset { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> Rank { get; }

    public MemoryBuffer1D<float, Stride1D.Dense> Scaling { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> IdsBuffer { get; }

    public MemoryBuffer1D<float, Stride1D.Dense> WeightsBuffer { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> SlotPair { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> PairToken { get; }

    public MemoryBuffer1D<float, Stride1D.Dense> PairCoefficient { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> ItemExpert { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> ItemRow { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> ItemPairStart { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> ItemPairEnd { get; }

    public MemoryBuffer1D<int, Stride1D.Dense> ItemCount { get; }

    public MemoryBuffer1D<float, Stride1D.Dense> V { get; }

    public void Dispatch()
    {
        _device.Kernels.Dispatch.Launch(_stream, new DispatchArgs
        {
            Ids = IdsBuffer.View,
            Weights = WeightsBuffer.View,
            Slots = Ids.Length,
            TopK = TopK,
            Experts = Experts.Length,
            Rank = Rank.View,
            Scaling = Scaling.View,
            ParameterMixing = ParameterMixing ? 1 : 0,
            RowsPerItem = RowsPerItem,
            SlotPair = SlotPair.View,
            PairToken = PairToken.View,
            PairCoefficient = PairCoefficient.View,
            ItemExpert = ItemExpert.View,
            ItemRow = ItemRow.View,
            ItemPairStart = ItemPairStart.View,
            ItemPairEnd = ItemPairEnd.View,
            ItemCount = ItemCount.View,
        });
        _stream.Synchronize();
    }

    /// <summary>Dispatch then shrink; X in F32 or F16 bits.</summary>
    public void Shrink<TX>(TX[] x) where TX : unmanaged
    {
        if (HalfWeights)
        {
            Shrink<TX, ushort>(x, DeviceIo.ToHalfBits(AWeights));
        }
        else
        {
            Shrink<TX, float>(x, AWeights);
        }
    }

    /// <summary>Dispatch, shrink, expand into y (in place); activations in F32 or F16 bits.</summary>
    public void Forward<TX>(TX[] x, TX[] y) where TX : unmanaged
    {
        if (HalfWeights)
        {
            Forward<TX, ushort>(x, y, DeviceIo.ToHalfBits(AWeights), DeviceIo.ToHalfBits(BTransposedWeights));
        }
        else
        {
            Forward<TX, float>(x, y, AWeights, BTransposedWeights);
        }
    }

    private void Shrink<TX, TW>(TX[] x, TW[] a) where TX : unmanaged where TW : unmanaged
    {
        using var xBuffer = DeviceIo.Upload(_device.Accelerator, x);
        using var aBuffer = DeviceIo.Upload(_device.Accelerator, a);
        Dispatch();
        LaunchShrink<TX, TW>(xBuffer.View, aBuffer.View);
        _stream.Synchronize();
    }

    private void Forward<TX, TW>(TX[] x, TX[] y, TW[] a, TW[] bT) where TX : unmanaged where TW : unmanaged
    {
        using var xBuffer = DeviceIo.Upload(_device.Accelerator, x);
        using var yBuffer = DeviceIo.Upload(_device.Accelerator, y);
        using var aBuffer = DeviceIo.Upload(_device.Accelerator, a);
        using var bBuffer = DeviceIo.Upload(_device.Accelerator, bT);
        Dispatch();
        LaunchShrink<TX, TW>(xBuffer.View, aBuffer.View);
        _device.Kernels.Expand.Launch(_stream, new ExpandArgs<TX, TW>
        {
            Y = yBuffer.View,
            Tokens = Ids.Length / TopK,
            OutputDim = OutputDim,
            TopK = TopK,
            Ids = IdsBuffer.View,
            SlotPair = SlotPair.View,
            ParameterMixing = ParameterMixing ? 1 : 0,
            Weights = WeightsBuffer.View,
            Scaling = Scaling.View,
            BTransposed = bBuffer.View,
            BOffset = BOffset.View,
            Rank = Rank.View,
            V = V.View,
            VStride = Math.Max(1, MaxRank),
        });
        _stream.Synchronize();
        yBuffer.View.SubView(0, y.Length).CopyToCPU(y);
    }

    private void LaunchShrink<TX, TW>(ArrayView<TX> x, ArrayView<TW> a) where TX : unmanaged where TW : unmanaged =>
        _device.Kernels.Shrink.Launch(_stream, new ShrinkArgs<TX, TW>
        {
            X = x,
            InputDim = InputDim,
            A = a,
            AOffset = AOffset.View,
            Rank = Rank.View,
            ItemExpert = ItemExpert.View,
            ItemRow = ItemRow.View,
            ItemPairStart = ItemPairStart.View,
            ItemPairEnd = ItemPairEnd.View,
            ItemCount = ItemCount.View,
            PairToken = PairToken.View,
            PairCoefficient = PairCoefficient.View,
            V = V.View,
            VStride = Math.Max(1, MaxRank),
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
