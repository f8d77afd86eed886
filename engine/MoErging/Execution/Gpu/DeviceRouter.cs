using ILGPU;
using ILGPU.Runtime;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>A linear router's prototypes (rows padded with zeros to whole vectors) and bias on the device, uploaded once per engine and router.</summary>
internal sealed class DeviceRouter : IDisposable
{
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _prototypes;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _bias;

    public DeviceRouter(Accelerator accelerator, AcceleratorStream stream, LinearRouter router)
    {
        int n = router.InputDim;
        Pitch = VectorRows.Pitch(n);
        var padded = new float[(long)router.ExpertCount * Pitch];
        for (int e = 0; e < router.ExpertCount; e++)
        {
            router.Prototypes.Slice(e * n, n).CopyTo(padded.AsSpan(e * Pitch, n));
        }
        _prototypes = DeviceCopy.Of(accelerator, stream, padded);
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

    public ArrayView<float> Prototypes => _prototypes.View;

    public ArrayView<float> Bias => _bias.View;

    public void Dispose()
    {
        _prototypes.Dispose();
        _bias.Dispose();
    }
}
