using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Numerics;

namespace MoErging.Execution.Gpu;

/// <summary>
/// One module's experts on the device: every expert's A and Bᵀ back to back (mixed ranks, no padding
/// between experts), in F32, F16 or BF16 storage (<see cref="WeightPrecision"/>), each row padded with zeros to a whole number of 16-byte
/// vectors (<see cref="VectorRows.Pitch"/>) so the kernels read them with vector loads, with per-expert
/// offsets, ranks (0 where an expert does not adapt the module) and scalings. Uploaded once per engine
/// and module, on the stream of the session that first needs it.
/// </summary>
internal sealed class DeviceModule : IDisposable
{
    private readonly MemoryBuffer _a;
    private readonly MemoryBuffer _bTransposed;
    private readonly MemoryBuffer1D<long, Stride1D.Dense> _aOffset;
    private readonly MemoryBuffer1D<long, Stride1D.Dense> _bOffset;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _rank;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _scaling;

    public DeviceModule(Accelerator accelerator, AcceleratorStream stream, AdaptedModule module, WeightPrecision precision)
    {
        int experts = module.ExpertCount;
        var aOffset = new long[experts];
        var bOffset = new long[experts];
        var rank = new int[experts];
        var scaling = new float[experts];
        APitch = VectorRows.Pitch(module.InputDim);
        BPitch = VectorRows.Pitch(module.OutputDim);
        long aLength = 0, bLength = 0;
        for (int e = 0; e < experts; e++)
        {
            if (module.Factors(e) is LoraFactors f)
            {
                aOffset[e] = aLength;
                bOffset[e] = bLength;
                rank[e] = f.Rank;
                scaling[e] = f.Scaling;
                aLength += (long)f.Rank * APitch;
                bLength += (long)f.Rank * BPitch;
            }
        }
        Precision = precision;
        MaxRank = module.MaxRank;
        try
        {
            _a = Upload(accelerator, stream, module, precision, aLength, module.InputDim, APitch, f => f.A);
            _bTransposed = Upload(accelerator, stream, module, precision, bLength, module.OutputDim, BPitch, f => f.BTransposed);
            _aOffset = DeviceCopy.Of(accelerator, stream, aOffset);
            _bOffset = DeviceCopy.Of(accelerator, stream, bOffset);
            _rank = DeviceCopy.Of(accelerator, stream, rank);
            _scaling = DeviceCopy.Of(accelerator, stream, scaling);
        }
        catch
        {
            Dispose(); // what was allocated before the failure
            throw;
        }
    }

    /// <summary>The factors' storage: float (F32), ushort (F16 bits) or <see cref="BFloat16Bits"/> (BF16).</summary>
    public WeightPrecision Precision { get; }

    public int MaxRank { get; }

    /// <summary>Row pitch of A: d_in rounded up to whole vectors.</summary>
    public int APitch { get; }

    /// <summary>Row pitch of Bᵀ: d_out rounded up to whole vectors.</summary>
    public int BPitch { get; }

    public ArrayView<TW> A<TW>() where TW : unmanaged => _a.AsArrayView<TW>(0, _a.LengthInBytes / _a.ElementSize);

    public ArrayView<TW> BTransposed<TW>() where TW : unmanaged => _bTransposed.AsArrayView<TW>(0, _bTransposed.LengthInBytes / _bTransposed.ElementSize);

    public ArrayView<long> AOffset => _aOffset.View;

    public ArrayView<long> BOffset => _bOffset.View;

    public ArrayView<int> Rank => _rank.View;

    public ArrayView<float> Scaling => _scaling.View;

    public void Dispose()
    {
        // Null-tolerant: the constructor calls this when an allocation fails part way.
        _a?.Dispose();
        _bTransposed?.Dispose();
        _aOffset?.Dispose();
        _bOffset?.Dispose();
        _rank?.Dispose();
        _scaling?.Dispose();
    }

    private delegate ReadOnlySpan<float> Factor(LoraFactors factors);

    private static MemoryBuffer Upload(Accelerator accelerator, AcceleratorStream stream, AdaptedModule module, WeightPrecision precision, long length,
        int rowLength, int pitch, Factor factor) => precision switch
        {
            WeightPrecision.Float16 => Upload<ushort>(accelerator, stream, module, length, rowLength, pitch, factor),
            WeightPrecision.BFloat16 => Upload<BFloat16Bits>(accelerator, stream, module, length, rowLength, pitch, factor),
            _ => Upload<float>(accelerator, stream, module, length, rowLength, pitch, factor),
        };

    /// <summary>Concatenates one factor of every expert, converted to the storage type and its rows padded to <paramref name="pitch"/>, into one device buffer.</summary>
    private static MemoryBuffer1D<T, Stride1D.Dense> Upload<T>(Accelerator accelerator, AcceleratorStream stream, AdaptedModule module, long length,
        int rowLength, int pitch, Factor factor)
        where T : unmanaged
    {
        var host = new T[length]; // zero: the padding past each row
        long at = 0;
        for (int e = 0; e < module.ExpertCount; e++)
        {
            if (module.Factors(e) is not LoraFactors f)
            {
                continue;
            }
            ReadOnlySpan<float> values = factor(f);
            for (int row = 0; row < f.Rank; row++, at += pitch)
            {
                ReadOnlySpan<float> source = values.Slice(row * rowLength, rowLength);
                Span<T> target = host.AsSpan((int)at, rowLength);
                if (typeof(T) == typeof(float))
                {
                    source.CopyTo(MemoryMarshal.Cast<T, float>(target));
                }
                else if (typeof(T) == typeof(BFloat16Bits))
                {
                    FloatConversions.SingleToBFloat16(source, MemoryMarshal.Cast<T, ushort>(target));
                }
                else
                {
                    Span<ushort> bits = MemoryMarshal.Cast<T, ushort>(target);
                    for (int i = 0; i < rowLength; i++)
                    {
                        bits[i] = HalfBits.FromSingle(source[i]);
                    }
                }
            }
        }
        return DeviceCopy.Of(accelerator, stream, host);
    }
}

/// <summary>Device copies of host arrays, queued on a given stream (the caller synchronizes it before the array may change).</summary>
internal static class DeviceCopy
{
    public static MemoryBuffer1D<T, Stride1D.Dense> Of<T>(Accelerator accelerator, AcceleratorStream stream, T[] values) where T : unmanaged
    {
        MemoryBuffer1D<T, Stride1D.Dense> buffer = accelerator.Allocate1D<T>(Math.Max(1, values.Length));
        if (values.Length > 0)
        {
            buffer.View.SubView(0, values.Length).CopyFromCPU(stream, values);
        }
        return buffer;
    }
}
