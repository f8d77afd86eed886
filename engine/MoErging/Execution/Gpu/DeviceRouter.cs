using ILGPU;
using ILGPU.Runtime;
using MoErging.Kernels;
using MoErging.Numerics;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>
/// A linear router's prototypes (rows padded with zeros to whole vectors; float32, or bfloat16 in <see cref="WeightPrecision.BFloat16"/>)
/// and bias (float32) on the device, uploaded once per engine and router.
/// </summary>
internal sealed class DeviceRouter : IDisposable
{
    private readonly MemoryBuffer _prototypes;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _bias;

    public DeviceRouter(Accelerator accelerator, AcceleratorStream stream, LinearRouter router, WeightPrecision precision)
    {
        int n = router.InputDim;
        Pitch = VectorRows.Pitch(n);
        BFloat16Prototypes = precision == WeightPrecision.BFloat16;
        var padded = new float[(long)router.ExpertCount * Pitch];
        for (int e = 0; e < router.ExpertCount; e++)
        {
            router.Prototypes.Slice(e * n, n).CopyTo(padded.AsSpan(e * Pitch, n));
        }
        if (BFloat16Prototypes)
        {
            var bits = new BFloat16Bits[padded.Length];
            FloatConversions.SingleToBFloat16(padded, System.Runtime.InteropServices.MemoryMarshal.Cast<BFloat16Bits, ushort>(bits.AsSpan()));
            _prototypes = DeviceCopy.Of(accelerator, stream, bits);
        }
        else
        {
            _prototypes = DeviceCopy.Of(accelerator, stream, padded);
        }
        try
        {
            _bias = DeviceCopy.Of(accelerator, stream, router.Bias.IsEmpty ? new float[1] : router.Bias.ToArray());
        }
        catch
        {
            _prototypes.Dispose();
            throw;
        }
    }

    /// <summary>Row pitch of the prototypes.</summary>
    public int Pitch { get; }

    /// <summary>True when the prototypes are stored as <see cref="BFloat16Bits"/>, false for float.</summary>
    public bool BFloat16Prototypes { get; }

    public ArrayView<TP> Prototypes<TP>() where TP : unmanaged => _prototypes.AsArrayView<TP>(0, _prototypes.LengthInBytes / _prototypes.ElementSize);

    public ArrayView<float> Bias => _bias.View;

    public void Dispose()
    {
        _prototypes.Dispose();
        _bias.Dispose();
    }
}
