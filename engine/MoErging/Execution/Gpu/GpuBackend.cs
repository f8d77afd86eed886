using System.Runtime.CompilerServices;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>
/// An engine's GPU: the device with its compiled kernels, and what has been uploaded to it (each module's
/// experts and each linear router's prototypes, once, on first use). Thread-safe.
/// </summary>
internal sealed class GpuBackend : IDisposable
{
    private readonly ConditionalWeakTable<AdaptedModule, DeviceModule> _modules = new();
    private readonly ConditionalWeakTable<LinearRouter, DeviceRouter> _routers = new();
    private readonly List<IDisposable> _uploads = [];
    private readonly object _gate = new();

    public GpuBackend(GpuDevice device, bool halfWeights)
    {
        Device = device;
        HalfWeights = halfWeights;
    }

    public GpuDevice Device { get; }

    public bool HalfWeights { get; }

    public DeviceModule Upload(AdaptedModule module)
    {
        lock (_gate)
        {
            if (!_modules.TryGetValue(module, out DeviceModule? uploaded))
            {
                uploaded = new DeviceModule(Device.Accelerator, module, HalfWeights);
                Device.Accelerator.Synchronize(); // uploads use the default stream; sessions use their own
                _modules.Add(module, uploaded);
                _uploads.Add(uploaded);
            }
            return uploaded;
        }
    }

    public DeviceRouter Upload(LinearRouter router)
    {
        lock (_gate)
        {
            if (!_routers.TryGetValue(router, out DeviceRouter? uploaded))
            {
                uploaded = new DeviceRouter(Device.Accelerator, router);
                Device.Accelerator.Synchronize();
                _routers.Add(router, uploaded);
                _uploads.Add(uploaded);
            }
            return uploaded;
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            foreach (IDisposable upload in _uploads)
            {
                upload.Dispose();
            }
            _uploads.Clear();
        }
        Device.Dispose();
    }
}
