using System.Diagnostics.CodeAnalysis;
using ILGPU;
using Half = System.Half;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution;

/// <summary>
/// An engine's backend: its resources (CPU worker threads, or a device with compiled kernels and uploads), what it
/// can run, and a per-session <see cref="IExecutor"/> that runs it. One CPU and one GPU implementation
/// (<see cref="Cpu.CpuBackend"/>, <see cref="Gpu.GpuBackend"/>); the engine holds one, and sessions delegate to
/// its executors after validating their arguments. Thread-safe.
/// </summary>
internal interface IBackend : IDisposable
{
    /// <summary>CPU threads a forward uses (0 on a GPU).</summary>
    int CpuThreads { get; }

    /// <summary>The device (null on the CPU).</summary>
    DeviceInfo? Device { get; }

    /// <summary>The ILGPU accelerator (null on the CPU).</summary>
    Accelerator? Accelerator { get; }

    /// <summary>
    /// Whether this backend runs <paramref name="router"/> (null: a given decision) at <paramref name="module"/> with
    /// <paramref name="aggregation"/>; when it does not, <paramref name="reason"/> names the limit. Cheap and
    /// allocation-free when it does: every call asks before any work is queued.
    /// </summary>
    bool Supports(Router? router, AdaptedModule module, Aggregation aggregation, [NotNullWhen(false)] out string? reason);

    /// <summary>A session's executor: its own workspace (and, on a GPU, its own stream).</summary>
    IExecutor CreateExecutor();

    /// <summary>Frees the backend's copy of a module or linear router now; false when it holds none.</summary>
    bool Release(object host);
}

/// <summary>
/// One session's execution on a backend. Arguments arrive validated by the session (shapes, the router fitting the
/// module, aggregation), and the backend's <see cref="IBackend.Supports"/> has been asked. Span calls return when the
/// result is on the host; device calls queue work and return, and <see cref="Synchronize"/> waits for it.
/// </summary>
internal interface IExecutor : IDisposable
{
    /// <summary>Routes <paramref name="tokens"/> rows token by token into <paramref name="destination"/>.</summary>
    void Route(Router router, ReadOnlySpan<float> x, int tokens, RoutingDecision destination);

    /// <summary>Routes Half rows token by token (scored in float32).</summary>
    void Route(Router router, ReadOnlySpan<Half> x, int tokens, RoutingDecision destination);

    /// <summary>y += the mixture for a given decision, by <paramref name="aggregation"/>.</summary>
    void Forward(AdaptedModule module, RoutingDecision decision, Aggregation aggregation, ReadOnlySpan<float> x, Span<float> y);

    /// <summary>y += the mixture for a given decision, Half activations (float32 accumulation, y rounded once).</summary>
    void Forward(AdaptedModule module, RoutingDecision decision, Aggregation aggregation, ReadOnlySpan<Half> x, Span<Half> y);

    /// <summary>Routes token by token into <paramref name="decision"/> and adds the output mixture into y, fused where the backend can.</summary>
    void Forward(AdaptedModule module, Router router, ReadOnlySpan<float> x, int tokens, RoutingDecision decision, Span<float> y);

    /// <summary>The fused route and forward for Half activations.</summary>
    void Forward(AdaptedModule module, Router router, ReadOnlySpan<Half> x, int tokens, RoutingDecision decision, Span<Half> y);

    /// <summary>A decision on this executor's device.</summary>
    /// <exception cref="NotSupportedException">The backend has no device.</exception>
    DeviceRoutingDecision CreateDeviceDecision(Session session);

    /// <summary>Refuses a device decision this executor does not own.</summary>
    /// <exception cref="NotSupportedException">The backend has no device.</exception>
    void CheckOwner(DeviceRoutingDecision decision);

    /// <summary>Routes device rows (float, or ushort F16 bits) into a device decision; queued.</summary>
    void Route<TX>(LinearRouter router, ArrayView<TX> x, int tokens, DeviceRoutingDecision destination) where TX : unmanaged;

    /// <summary>Routes device rows into a device decision and adds the mixture into device y, fused; queued.</summary>
    void Forward<TX>(AdaptedModule module, LinearRouter router, ArrayView<TX> x, int tokens, DeviceRoutingDecision decision, ArrayView<TX> y)
        where TX : unmanaged;

    /// <summary>y += the mixture for a device decision (device activations); queued.</summary>
    void Forward<TX>(AdaptedModule module, DeviceRoutingDecision decision, ArrayView<TX> x, ArrayView<TX> y) where TX : unmanaged;

    /// <summary>Waits for the queued work (nothing to wait for on the CPU).</summary>
    void Synchronize();
}
