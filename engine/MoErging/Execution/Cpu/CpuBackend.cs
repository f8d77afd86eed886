using System.Diagnostics.CodeAnalysis;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Cpu;

/// <summary>The CPU backend: the engine's worker threads, shared by its sessions' executors. It runs every case.</summary>
internal sealed class CpuBackend(int threads) : IBackend
{
    private readonly WorkerPool _pool = new(threads);

    public int CpuThreads => _pool.Threads;

    public DeviceInfo? Device => null;

    public Accelerator? Accelerator => null;

    public bool Supports(Router? router, AdaptedModule module, Aggregation aggregation, [NotNullWhen(false)] out string? reason)
    {
        reason = null;
        return true;
    }

    public IExecutor CreateExecutor() => new CpuExecutor(_pool);

    public bool Release(object host) => false; // nothing is copied anywhere

    public void Dispose() => _pool.Dispose();
}
