using ILGPU;
using ILGPU.Runtime;
using MoErging.Kernels;
using MoErging.Numerics;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>
/// A linear router's prototypes (rows padded with zeros to whole vectors; stored in the engine's <see cref="WeightPrecision"/>, as the
/// factors are) and bias (float32) on the device, uploaded once per engine and router.
/// </summary>
internal sealed class DeviceRouter : IDisposable
{
    private readonly MemoryBuffer _prototypes;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _bias;

    public DeviceRouter(Accelerator accelerator, AcceleratorStream stream, LinearRouter router, WeightPrecision precision)
    {
        int n = router.InputDim;
        Pitch = VectorRows.Pitch(n);
        Precision = precision;
        var padded = new float[(long)router.ExpertCount * Pitch];
        for (int e = 0; e < router.ExpertCount; e++)
        {
            router.Prototypes.Slice(e * n, n).CopyTo(padded.AsSpan(e * Pitch, n));
        }
        switch (precision)
        {
            case WeightPrecision.Float16:
                var half = new ushort[padded.Length];
                for (int i = 0; i < padded.Length; i++)
                {
                    half[i] = HalfBits.FromSingle(padded[i]);
                }
                _prototypes = DeviceCopy.Of(accelerator, stream, half);
                break;
            case WeightPrecision.BFloat16:
                var bits = new BFloat16Bits[padded.Length];
                FloatConversions.SingleToBFloat16(padded, System.Runtime.InteropServices.MemoryMarshal.Cast<BFloat16Bits, ushort>(bits.AsSpan()));
                _prototypes = DeviceCopy.Of(accelerator, stream, bits);
                break;
            default:
                _prototypes = DeviceCopy.Of(accelerator, stream, padded);
                break;
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

    /// <summary>The prototypes' storage: float, ushort (F16 bits) or <see cref="BFloat16Bits"/>.</summary>
    public WeightPrecision Precision { get; }

    public ArrayView<TP> Prototypes<TP>() where TP : unmanaged => _prototypes.AsArrayView<TP>(0, _prototypes.LengthInBytes / _prototypes.ElementSize);

    public ArrayView<float> Bias => _bias.View;

    public void Dispose()
    {
        _prototypes.Dispose();
        _bias.Dispose();
    }
}
