using System.Runtime.InteropServices;
using ILGPU;
using Half = System.Half;
using MoErging.Execution.Cpu;
using MoErging.Execution.Gpu;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Execution;

/// <summary>
/// A per-thread workspace in which routing and forwards run. Spans in, destination last; activations
/// are row-major: X <c>[T, d_in]</c>, Y <c>[T, d_out]</c>. Buffers grow to the largest batch seen, so a
/// warm call allocates nothing. One thread at a time: concurrent use of one session throws.
/// </summary>
/// <remarks>
/// On a GPU backend the span calls copy through page-locked staging and return when the result is on the
/// host. The device calls (<see cref="ArrayView{T}"/> arguments, F16 as its ushort bits) queue work on the
/// session's stream and return at once; <see cref="Synchronize"/> waits for it.
/// </remarks>
public sealed unsafe class Session : IDisposable
{
    private readonly CpuExecutor? _cpu;
    private readonly GpuExecutor? _gpu;
    private int _inUse;
    private bool _disposed;

    internal Session(Engine engine)
    {
        Engine = engine;
        if (engine.Gpu is GpuBackend gpu)
        {
            _gpu = new GpuExecutor(gpu);
        }
        else
        {
            _cpu = new CpuExecutor(engine.Pool!);
        }
    }

    /// <summary>The engine this session runs on.</summary>
    public Engine Engine { get; }

    /// <summary>Routes the rows of <paramref name="x"/> at <paramref name="module"/> into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentException">x is not whole rows of d_in, or the router does not fit the module.</exception>
    public void Route(AdaptedModule module, Router router, ReadOnlySpan<float> x, RoutingDecision destination)
    {
        int tokens = CheckRoute(module, router, x.Length, destination);
        using var _ = Enter();
        if (_gpu is not null && router is LinearRouter linear)
        {
            _gpu.Route(linear, x, tokens, destination);
            return;
        }
        fixed (float* px = x)
        {
            RouteOnCpu(router, px, tokens, destination);
        }
    }

    /// <summary>Routes Half rows (widened to float32 for scoring).</summary>
    public void Route(AdaptedModule module, Router router, ReadOnlySpan<Half> x, RoutingDecision destination)
    {
        int tokens = CheckRoute(module, router, x.Length, destination);
        using var _ = Enter();
        if (_gpu is not null && router is LinearRouter linear)
        {
            _gpu.Route(linear, MemoryMarshal.Cast<Half, ushort>(x), tokens, destination);
            return;
        }
        RouteOnCpu(router, router is LinearRouter ? _cpu!.Widen(x) : null, tokens, destination);
    }

    /// <summary>
    /// Output aggregation: <c>y[t] += Σ_slots w · s_e · B_e (A_e x_t)</c> for the slots of
    /// <paramref name="decision"/>, in place (y holds the base output). Each selected expert's factors are
    /// read once; the sum per output element runs in a fixed order, so results repeat exactly.
    /// </summary>
    /// <exception cref="ArgumentException">Lengths that do not match the decision and module, or x and y overlapping.</exception>
    public void Forward(AdaptedModule module, RoutingDecision decision, ReadOnlySpan<float> x, Span<float> y)
    {
        CheckForward(module, decision, x.Length, y.Length, MemoryMarshal.AsBytes(x).Overlaps(MemoryMarshal.AsBytes((ReadOnlySpan<float>)y)));
        using var _ = Enter();
        if (_gpu is not null)
        {
            _gpu.Forward(module, null, decision, x, y, decision.TokenCount);
            return;
        }
        fixed (float* px = x, py = y)
        {
            _cpu!.Forward(module, decision, px, py);
        }
    }

    /// <summary>Output aggregation for Half activations: accumulation is float32, y is rounded once.</summary>
    public void Forward(AdaptedModule module, RoutingDecision decision, ReadOnlySpan<Half> x, Span<Half> y)
    {
        CheckForward(module, decision, x.Length, y.Length, MemoryMarshal.AsBytes(x).Overlaps(MemoryMarshal.AsBytes((ReadOnlySpan<Half>)y)));
        using var _ = Enter();
        if (_gpu is not null)
        {
            _gpu.Forward(module, null, decision, MemoryMarshal.Cast<Half, ushort>(x), MemoryMarshal.Cast<Half, ushort>(y), decision.TokenCount);
            return;
        }
        fixed (Half* py = y)
        {
            _cpu!.Forward(module, decision, _cpu.Widen(x), py);
        }
    }

    /// <summary>Routes x at the module into <paramref name="decision"/>, then adds the routed mixture into y.</summary>
    public void Forward(AdaptedModule module, Router router, ReadOnlySpan<float> x, RoutingDecision decision, Span<float> y)
    {
        int tokens = CheckRoute(module, router, x.Length, decision);
        CheckOutput(module, tokens, y.Length, MemoryMarshal.AsBytes(x).Overlaps(MemoryMarshal.AsBytes((ReadOnlySpan<float>)y)));
        using var _ = Enter();
        if (_gpu is not null)
        {
            _gpu.Forward(module, router, decision, x, y, tokens);
            return;
        }
        fixed (float* px = x, py = y)
        {
            RouteOnCpu(router, px, tokens, decision);
            _cpu!.Forward(module, decision, px, py);
        }
    }

    /// <summary>Routes Half x at the module into <paramref name="decision"/>, then adds the routed mixture into y.</summary>
    public void Forward(AdaptedModule module, Router router, ReadOnlySpan<Half> x, RoutingDecision decision, Span<Half> y)
    {
        int tokens = CheckRoute(module, router, x.Length, decision);
        CheckOutput(module, tokens, y.Length, MemoryMarshal.AsBytes(x).Overlaps(MemoryMarshal.AsBytes((ReadOnlySpan<Half>)y)));
        using var _ = Enter();
        if (_gpu is not null)
        {
            _gpu.Forward(module, router, decision, MemoryMarshal.Cast<Half, ushort>(x), MemoryMarshal.Cast<Half, ushort>(y), tokens);
            return;
        }
        float* px = _cpu!.Widen(x);
        fixed (Half* py = y)
        {
            RouteOnCpu(router, px, tokens, decision);
            _cpu.Forward(module, decision, px, py);
        }
    }

    // ------------------------------------------------------------------ device-resident API (GPU backends)

    /// <summary>A routing decision that lives on this session's GPU.</summary>
    /// <exception cref="NotSupportedException">The engine runs on the CPU.</exception>
    public DeviceRoutingDecision CreateDeviceDecision() => Gpu.CreateDecision();

    /// <summary>Routes device rows (float32) into a device decision; queued on the session's stream.</summary>
    public void Route(AdaptedModule module, LinearRouter router, ArrayView<float> x, DeviceRoutingDecision destination) =>
        RouteOnDevice(module, router, x, destination);

    /// <summary>Routes device rows (F16 bits) into a device decision; queued on the session's stream.</summary>
    public void Route(AdaptedModule module, LinearRouter router, ArrayView<ushort> x, DeviceRoutingDecision destination) =>
        RouteOnDevice(module, router, x, destination);

    /// <summary>Adds the mixture for a device decision into device y (float32); queued on the session's stream.</summary>
    public void Forward(AdaptedModule module, DeviceRoutingDecision decision, ArrayView<float> x, ArrayView<float> y) =>
        ForwardOnDevice(module, decision, x, y);

    /// <summary>Adds the mixture for a device decision into device y (F16 bits); queued on the session's stream.</summary>
    public void Forward(AdaptedModule module, DeviceRoutingDecision decision, ArrayView<ushort> x, ArrayView<ushort> y) =>
        ForwardOnDevice(module, decision, x, y);

    /// <summary>Routes device x into <paramref name="decision"/> and adds the mixture into device y (float32).</summary>
    public void Forward(AdaptedModule module, LinearRouter router, ArrayView<float> x, DeviceRoutingDecision decision, ArrayView<float> y)
    {
        RouteOnDevice(module, router, x, decision);
        ForwardOnDevice(module, decision, x, y);
    }

    /// <summary>Routes device x into <paramref name="decision"/> and adds the mixture into device y (F16 bits).</summary>
    public void Forward(AdaptedModule module, LinearRouter router, ArrayView<ushort> x, DeviceRoutingDecision decision, ArrayView<ushort> y)
    {
        RouteOnDevice(module, router, x, decision);
        ForwardOnDevice(module, decision, x, y);
    }

    /// <summary>Waits for the work this session queued on its GPU (no-op on the CPU).</summary>
    public void Synchronize() => _gpu?.Synchronize();

    /// <inheritdoc />
    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            _gpu?.Dispose();
        }
    }

    private GpuExecutor Gpu =>
        _gpu ?? throw new NotSupportedException($"device buffers need a GPU backend; this engine runs on {Engine.Backend}");

    private void RouteOnDevice<TX>(AdaptedModule module, LinearRouter router, ArrayView<TX> x, DeviceRoutingDecision destination) where TX : unmanaged
    {
        ArgumentNullException.ThrowIfNull(destination);
        int tokens = CheckRoute(module, router, checked((int)x.Length), new RoutingDecision());
        using var _ = Enter();
        Gpu.Route(router, x, tokens, destination);
    }

    private void ForwardOnDevice<TX>(AdaptedModule module, DeviceRoutingDecision decision, ArrayView<TX> x, ArrayView<TX> y) where TX : unmanaged
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(decision);
        int tokens = Rows(checked((int)x.Length), module);
        if (decision.TokenCount != tokens)
        {
            throw new ArgumentException($"x holds {tokens} rows but the decision routes {decision.TokenCount} tokens", nameof(decision));
        }
        if (tokens > 0 && decision.ExpertCount != module.ExpertCount)
        {
            throw new ArgumentException($"the decision chooses among {decision.ExpertCount} experts but module '{module.Name}' belongs to a library of {module.ExpertCount}", nameof(decision));
        }
        CheckOutput(module, tokens, checked((int)y.Length), overlap: false);
        using var _ = Enter();
        Gpu.Forward(module, decision, x, y);
    }

    private void RouteOnCpu(Router router, float* x, int tokens, RoutingDecision destination)
    {
        switch (router)
        {
            case LinearRouter linear:
                _cpu!.Route(linear, x, tokens, destination);
                break;
            case FixedRouter fixedWeights:
                CpuExecutor.Route(fixedWeights, tokens, destination);
                break;
            default:
                throw new NotSupportedException($"router type {router.GetType().Name} has no execution path");
        }
    }

    private static int CheckRoute(AdaptedModule module, Router router, int xLength, RoutingDecision destination)
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(router);
        ArgumentNullException.ThrowIfNull(destination);
        if (router.ExpertCount != module.ExpertCount)
        {
            throw new ArgumentException($"the router chooses among {router.ExpertCount} experts but module '{module.Name}' belongs to a library of {module.ExpertCount}", nameof(router));
        }
        if (router is ArrowRouter arrow && arrow.Module != module)
        {
            throw new ArgumentException($"the Arrow router was built for module '{arrow.Module.Name}', not '{module.Name}'", nameof(router));
        }
        if (router is LinearRouter linear && linear.InputDim != module.InputDim)
        {
            throw new ArgumentException($"the router scores rows of {linear.InputDim} values but module '{module.Name}' has d_in = {module.InputDim}", nameof(router));
        }
        return Rows(xLength, module);
    }

    private static void CheckForward(AdaptedModule module, RoutingDecision decision, int xLength, int yLength, bool overlap)
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(decision);
        int tokens = Rows(xLength, module);
        if (decision.TokenCount != tokens)
        {
            throw new ArgumentException($"x holds {tokens} rows but the decision routes {decision.TokenCount} tokens", nameof(decision));
        }
        if (tokens > 0 && decision.ExpertCount != module.ExpertCount)
        {
            throw new ArgumentException($"the decision chooses among {decision.ExpertCount} experts but module '{module.Name}' belongs to a library of {module.ExpertCount}", nameof(decision));
        }
        CheckOutput(module, tokens, yLength, overlap);
    }

    private static void CheckOutput(AdaptedModule module, int tokens, int yLength, bool overlap)
    {
        if (yLength != (long)tokens * module.OutputDim)
        {
            throw new ArgumentException($"y holds {yLength} values; {tokens} rows of d_out = {module.OutputDim} need {(long)tokens * module.OutputDim}", "y");
        }
        if (overlap)
        {
            throw new ArgumentException("x and y overlap; y must be a separate buffer", "y");
        }
    }

    private static int Rows(int xLength, AdaptedModule module) =>
        xLength % module.InputDim == 0
            ? xLength / module.InputDim
            : throw new ArgumentException($"x holds {xLength} values, not whole rows of d_in = {module.InputDim} for module '{module.Name}'", "x");

    private Use Enter()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Interlocked.Exchange(ref _inUse, 1) != 0)
        {
            throw new InvalidOperationException("this session is already in use on another thread; create one session per thread");
        }
        return new Use(this);
    }

    private readonly struct Use(Session session) : IDisposable
    {
        public void Dispose() => Volatile.Write(ref session._inUse, 0);
    }
}
