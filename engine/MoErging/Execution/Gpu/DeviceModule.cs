using ILGPU;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>
/// One module's experts on the device: every expert's A and Bᵀ back to back (mixed ranks, no padding),
/// in F32 or F16 storage, with per-expert offsets, ranks (0 where an expert does not adapt the module)
/// and scalings. Uploaded once per engine and module, on the stream of the session that first needs it.
/// </summary>
internal sealed class DeviceModule : IDisposable
{
    private readonly MemoryBuffer _a;
    private readonly MemoryBuffer _bTransposed;
    private readonly MemoryBuffer1D<long, Stride1D.Dense> _aOffset;
    private readonly MemoryBuffer1D<long, Stride1D.Dense> _bOffset;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _rank;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _scaling;

    public DeviceModule(Accelerator accelerator, AcceleratorStream stream, AdaptedModule module, bool halfWeights)
    {
        int experts = module.ExpertCount;
        var aOffset = new long[experts];
        var bOffset = new long[experts];
        var rank = new int[experts];
        var scaling = new float[experts];
        long aLength = 0, bLength = 0;
        for (int e = 0; e < experts; e++)
        {
            if (module.Factors(e) is LoraFactors f)
            {
                aOffset[e] = aLength;
                bOffset[e] = bLength;
                rank[e] = f.Rank;
                scaling[e] = f.Scaling;
                aLength += f.A.Length;
                bLength += f.BTransposed.Length;
            }
        }
        HalfWeights = halfWeights;
        MaxRank = module.MaxRank;
        try
        {
            _a = halfWeights ? Upload<ushort>(accelerator, stream, module, aLength, f => f.A) : Upload<float>(accelerator, stream, module, aLength, f => f.A);
            _bTransposed = halfWeights
                ? Upload<ushort>(accelerator, stream, module, bLength, f => f.BTransposed)
                : Upload<float>(accelerator, stream, module, bLength, f => f.BTransposed);
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

    public bool HalfWeights { get; }

    public int MaxRank { get; }

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

    /// <summary>Concatenates one factor of every expert, converted to the storage type, into one device buffer.</summary>
    private static MemoryBuffer1D<T, Stride1D.Dense> Upload<T>(Accelerator accelerator, AcceleratorStream stream, AdaptedModule module, long length, Factor factor)
        where T : unmanaged
    {
        var host = new T[length];
        long at = 0;
        for (int e = 0; e < module.ExpertCount; e++)
        {
            if (module.Factors(e) is not LoraFactors f)
            {
                continue;
            }
            ReadOnlySpan<float> values = factor(f);
            Span<T> target = host.AsSpan((int)at, values.Length);
            if (typeof(T) == typeof(float))
            {
                values.CopyTo(System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(target));
            }
            else
            {
                Span<ushort> bits = System.Runtime.InteropServices.MemoryMarshal.Cast<T, ushort>(target);
                for (int i = 0; i < values.Length; i++)
                {
                    bits[i] = HalfBits.FromSingle(values[i]);
                }
            }
            at += values.Length;
        }
        return DeviceCopy.Of(accelerator, stream, host);
    }
}

/// <summary>A linear router's prototypes and bias on the device, uploaded once per engine and router.</summary>
internal sealed class DeviceRouter : IDisposable
{
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _prototypes;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _bias;

    public DeviceRouter(Accelerator accelerator, AcceleratorStream stream, LinearRouter router)
    {
        _prototypes = DeviceCopy.Of(accelerator, stream, router.Prototypes.ToArray());
        _bias = DeviceCopy.Of(accelerator, stream, router.Bias.IsEmpty ? new float[1] : router.Bias.ToArray());
    }

    public ArrayView<float> Prototypes => _prototypes.View;

    public ArrayView<float> Bias => _bias.View;

    public void Dispose()
    {
        _prototypes.Dispose();
        _bias.Dispose();
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
