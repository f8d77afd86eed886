using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using ILGPU;
using Half = System.Half;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Execution;

/// <summary>
/// A per-thread workspace in which routing and forwards run. Spans in, destination last; activations
/// are row-major: X <c>[T, d_in]</c>, Y <c>[T, d_out]</c>. Buffers grow to the largest batch seen, so a
/// warm call allocates nothing (warm: the engine has already run the call's experts once, which uploads or packs
/// them). One thread at a time: concurrent use of one session throws.
/// </summary>
/// <remarks>
/// On a GPU backend the span calls copy through page-locked staging and return when the result is on the
/// host. The device calls (<see cref="ArrayView{T}"/> arguments, F16 as its ushort bits) queue work on the
/// session's stream and return at once; <see cref="Synchronize"/> waits for it.
/// </remarks>
public sealed class Session : IDisposable
{
    private readonly IBackend _backend;
    private readonly IExecutor _executor;
    private readonly RoutingDecision _groupDecision = new(); // one row per sequence (or one for the task) before broadcasting
    private float[] _pooled = [];
    private float[] _widened = [];
    private double[] _sums = [];
    private int _inUse;
    private bool _disposed;

    internal Session(Engine engine)
    {
        Engine = engine;
        _backend = engine.Implementation;
        _executor = _backend.CreateExecutor();
    }

    /// <summary>The engine this session runs on.</summary>
    public Engine Engine { get; }

    /// <summary>Routes the rows of <paramref name="x"/> at <paramref name="module"/> into <paramref name="destination"/>, token by token.</summary>
    /// <exception cref="ArgumentException">x is not whole rows of d_in, or the router does not fit the module.</exception>
    public void Route(AdaptedModule module, Router router, ReadOnlySpan<float> x, RoutingDecision destination) =>
        Route(module, router, RoutingGranularity.Token, x, destination);

    /// <summary>Routes Half rows (widened to float32 for scoring), token by token.</summary>
    public void Route(AdaptedModule module, Router router, ReadOnlySpan<Half> x, RoutingDecision destination) =>
        Route(module, router, RoutingGranularity.Token, x, destination);

    /// <summary>
    /// Routes the rows of <paramref name="x"/> at <paramref name="module"/> at the given granularity: each token,
    /// each sequence (on its pooled row) or the whole batch (on its mean row). The decision has one row per
    /// token either way; with example or task granularity the rows of a group share their group's decision.
    /// </summary>
    /// <exception cref="ArgumentException">x is not whole rows of d_in, the router does not fit the module, or the sequence lengths do not sum to T.</exception>
    public void Route(AdaptedModule module, Router router, RoutingGranularity granularity, ReadOnlySpan<float> x, RoutingDecision destination)
    {
        int tokens = CheckRoute(module, router, x.Length, destination);
        int groups = Groups(granularity, tokens);
        Require(router, module, Aggregation.Output);
        using var _ = Enter();
        RouteRows(module, router, granularity, groups, x, tokens, destination);
    }

    /// <summary>Routes Half rows (widened to float32 for scoring and pooling) at the given granularity.</summary>
    public void Route(AdaptedModule module, Router router, RoutingGranularity granularity, ReadOnlySpan<Half> x, RoutingDecision destination)
    {
        int tokens = CheckRoute(module, router, x.Length, destination);
        int groups = Groups(granularity, tokens);
        Require(router, module, Aggregation.Output);
        using var _ = Enter();
        if (granularity.Kind == Granularity.Token)
        {
            _executor.Route(router, x, tokens, destination);
            return;
        }
        RouteRows(module, router, granularity, groups, Widen(x), tokens, destination);
    }

    /// <summary>
    /// Output aggregation: <c>y[t] += Σ_slots w · s_e · B_e (A_e x_t)</c> for the slots of
    /// <paramref name="decision"/>, in place (y holds the base output). Each selected expert's factors are
    /// read once; the sum per output element runs in a fixed order, so results repeat exactly.
    /// </summary>
    /// <exception cref="ArgumentException">Lengths that do not match the decision and module, or x and y overlapping.</exception>
    public void Forward(AdaptedModule module, RoutingDecision decision, ReadOnlySpan<float> x, Span<float> y) =>
        Forward(module, decision, Aggregation.Output, x, y);

    /// <summary>Output aggregation for Half activations: accumulation is float32, y is rounded once.</summary>
    public void Forward(AdaptedModule module, RoutingDecision decision, ReadOnlySpan<Half> x, Span<Half> y) =>
        Forward(module, decision, Aggregation.Output, x, y);

    /// <summary>
    /// Adds the mixture for <paramref name="decision"/> into y (in place), combining each token's experts by
    /// <paramref name="aggregation"/>: output mixing, or per-token parameter mixing (see <see cref="Aggregation"/>).
    /// </summary>
    /// <exception cref="ArgumentException">
    /// Lengths that do not match, x and y overlapping, or (parameter mixing) chosen experts with different ranks or scalings.
    /// </exception>
    public void Forward(AdaptedModule module, RoutingDecision decision, Aggregation aggregation, ReadOnlySpan<float> x, Span<float> y)
    {
        CheckForward(module, decision, x.Length, y.Length, MemoryMarshal.AsBytes(x).Overlaps(MemoryMarshal.AsBytes((ReadOnlySpan<float>)y)));
        CheckAggregation(module, decision, aggregation);
        Require(null, module, aggregation);
        using var _ = Enter();
        _executor.Forward(module, decision, aggregation, x, y);
    }

    /// <summary>Adds the mixture for Half activations by the chosen aggregation: accumulation is float32, y is rounded once.</summary>
    public void Forward(AdaptedModule module, RoutingDecision decision, Aggregation aggregation, ReadOnlySpan<Half> x, Span<Half> y)
    {
        CheckForward(module, decision, x.Length, y.Length, MemoryMarshal.AsBytes(x).Overlaps(MemoryMarshal.AsBytes((ReadOnlySpan<Half>)y)));
        CheckAggregation(module, decision, aggregation);
        Require(null, module, aggregation);
        using var _ = Enter();
        _executor.Forward(module, decision, aggregation, x, y);
    }

    /// <summary>Routes x at the module into <paramref name="decision"/>, then adds the routed mixture into y (token granularity, output mixing).</summary>
    public void Forward(AdaptedModule module, Router router, ReadOnlySpan<float> x, RoutingDecision decision, Span<float> y) =>
        Forward(module, router, RoutingGranularity.Token, Aggregation.Output, x, decision, y);

    /// <summary>Routes Half x at the module into <paramref name="decision"/>, then adds the routed mixture into y (token granularity, output mixing).</summary>
    public void Forward(AdaptedModule module, Router router, ReadOnlySpan<Half> x, RoutingDecision decision, Span<Half> y) =>
        Forward(module, router, RoutingGranularity.Token, Aggregation.Output, x, decision, y);

    /// <summary>
    /// Routes x at the module at the given granularity into <paramref name="decision"/>, then adds the mixture
    /// into y by the given aggregation.
    /// </summary>
    /// <exception cref="ArgumentException">
    /// Lengths that do not match, the router not fitting the module, sequence lengths that do not sum to T, or
    /// (parameter mixing) chosen experts with different ranks or scalings.
    /// </exception>
    public void Forward(AdaptedModule module, Router router, RoutingGranularity granularity, Aggregation aggregation,
        ReadOnlySpan<float> x, RoutingDecision decision, Span<float> y)
    {
        int tokens = CheckRoute(module, router, x.Length, decision);
        int groups = Groups(granularity, tokens);
        CheckOutput(module, tokens, y.Length, MemoryMarshal.AsBytes(x).Overlaps(MemoryMarshal.AsBytes((ReadOnlySpan<float>)y)));
        CheckAggregation(module, null, aggregation);
        Require(router, module, aggregation);
        using var _ = Enter();
        if (granularity.Kind == Granularity.Token && aggregation == Aggregation.Output)
        {
            // The fused path: on a GPU, gating and the expert kernels run with no round trip between them.
            _executor.Forward(module, router, x, tokens, decision, y);
            return;
        }
        RouteRows(module, router, granularity, groups, x, tokens, decision);
        CheckAggregation(module, decision, aggregation);
        _executor.Forward(module, decision, aggregation, x, y);
    }

    /// <summary>Routes Half x at the given granularity into <paramref name="decision"/>, then adds the mixture into y by the given aggregation.</summary>
    public void Forward(AdaptedModule module, Router router, RoutingGranularity granularity, Aggregation aggregation,
        ReadOnlySpan<Half> x, RoutingDecision decision, Span<Half> y)
    {
        int tokens = CheckRoute(module, router, x.Length, decision);
        int groups = Groups(granularity, tokens);
        CheckOutput(module, tokens, y.Length, MemoryMarshal.AsBytes(x).Overlaps(MemoryMarshal.AsBytes((ReadOnlySpan<Half>)y)));
        CheckAggregation(module, null, aggregation);
        Require(router, module, aggregation);
        using var _ = Enter();
        if (granularity.Kind == Granularity.Token && aggregation == Aggregation.Output)
        {
            _executor.Forward(module, router, x, tokens, decision, y);
            return;
        }
        RouteRows(module, router, granularity, groups, Widen(x), tokens, decision);
        CheckAggregation(module, decision, aggregation);
        _executor.Forward(module, decision, aggregation, x, y);
    }

    // ------------------------------------------------------------------ device-resident API (GPU backends)

    /// <summary>A routing decision that lives on this session's GPU.</summary>
    /// <exception cref="NotSupportedException">The engine runs on the CPU.</exception>
    public DeviceRoutingDecision CreateDeviceDecision() => _executor.CreateDeviceDecision(this);

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

    /// <summary>Routes device x into <paramref name="decision"/> and adds the mixture into device y (float32), in one fused pipeline.</summary>
    public void Forward(AdaptedModule module, LinearRouter router, ArrayView<float> x, DeviceRoutingDecision decision, ArrayView<float> y) =>
        ForwardRoutedOnDevice(module, router, x, decision, y);

    /// <summary>Routes device x into <paramref name="decision"/> and adds the mixture into device y (F16 bits), in one fused pipeline.</summary>
    public void Forward(AdaptedModule module, LinearRouter router, ArrayView<ushort> x, DeviceRoutingDecision decision, ArrayView<ushort> y) =>
        ForwardRoutedOnDevice(module, router, x, decision, y);

    /// <summary>Waits for the work this session queued on its GPU (no-op on the CPU).</summary>
    public void Synchronize() => _executor.Synchronize();

    /// <inheritdoc />
    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            _executor.Dispose();
        }
    }

    private void RouteOnDevice<TX>(AdaptedModule module, LinearRouter router, ArrayView<TX> x, DeviceRoutingDecision destination) where TX : unmanaged
    {
        CheckOwner(destination);
        int tokens = CheckRouter(module, router, checked((int)x.Length));
        Require(router, module, Aggregation.Output);
        using var _ = Enter();
        _executor.Route(router, x, tokens, destination);
    }

    private void ForwardRoutedOnDevice<TX>(AdaptedModule module, LinearRouter router, ArrayView<TX> x, DeviceRoutingDecision decision, ArrayView<TX> y)
        where TX : unmanaged
    {
        CheckOwner(decision);
        int tokens = CheckRouter(module, router, checked((int)x.Length));
        CheckOutput(module, tokens, checked((int)y.Length), overlap: false);
        Require(router, module, Aggregation.Output);
        using var _ = Enter();
        _executor.Forward(module, router, x, tokens, decision, y);
    }

    /// <summary>A device decision belongs to the session that created it (on the CPU there is none to give).</summary>
    private void CheckOwner(DeviceRoutingDecision decision)
    {
        ArgumentNullException.ThrowIfNull(decision);
        _executor.CheckOwner(decision);
    }

    /// <summary>Refuses, before any work, a case the backend does not run, with its reason (<see cref="Engine.Supports"/>).</summary>
    private void Require(Router? router, AdaptedModule module, Aggregation aggregation)
    {
        if (!_backend.Supports(router, module, aggregation, out string? reason))
        {
            throw new NotSupportedException(reason);
        }
    }

    private void ForwardOnDevice<TX>(AdaptedModule module, DeviceRoutingDecision decision, ArrayView<TX> x, ArrayView<TX> y) where TX : unmanaged
    {
        ArgumentNullException.ThrowIfNull(module);
        CheckOwner(decision);
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
        Require(null, module, Aggregation.Output);
        using var _ = Enter();
        _executor.Forward(module, decision, x, y);
    }

    /// <summary>Routes float rows at a granularity: pooled rows are routed into the group decision, then broadcast.</summary>
    private void RouteRows(AdaptedModule module, Router router, RoutingGranularity granularity, int groups, ReadOnlySpan<float> x, int tokens,
        RoutingDecision destination)
    {
        ReadOnlySpan<float> rows = x;
        RoutingDecision target = destination;
        // An empty batch has no row to pool: routing its zero tokens directly gives the empty decision.
        bool grouped = granularity.Kind != Granularity.Token && tokens > 0;
        if (grouped)
        {
            int n = module.InputDim;
            Span<float> pooled = Grow(ref _pooled, groups * n);
            if (_sums.Length < n)
            {
                _sums = new double[n];
            }
            granularity.PoolRows(x, n, pooled, _sums);
            rows = pooled;
            target = _groupDecision;
        }
        _executor.Route(router, rows, rows.Length / module.InputDim, target);
        if (grouped)
        {
            granularity.Broadcast(_groupDecision, destination, tokens);
        }
    }

    /// <summary>Half rows as float32 in the session's own buffer (pooling and routing read it).</summary>
    private ReadOnlySpan<float> Widen(ReadOnlySpan<Half> x)
    {
        Span<float> wide = Grow(ref _widened, x.Length);
        TensorPrimitives.ConvertToSingle(x, wide);
        return wide;
    }

    private static Span<float> Grow(ref float[] buffer, int length)
    {
        if (buffer.Length < length)
        {
            buffer = new float[length];
        }
        return buffer.AsSpan(0, length);
    }

    private static int Groups(RoutingGranularity granularity, int tokens)
    {
        ArgumentNullException.ThrowIfNull(granularity);
        return granularity.Groups(tokens);
    }

    /// <summary>Validates the aggregation; for parameter mixing with a decision at hand, also its experts.</summary>
    private static void CheckAggregation(AdaptedModule module, RoutingDecision? decision, Aggregation aggregation)
    {
        if (!Enum.IsDefined(aggregation))
        {
            throw new ArgumentOutOfRangeException(nameof(aggregation), aggregation, "unknown aggregation");
        }
        if (aggregation == Aggregation.Parameter && decision is not null)
        {
            ParameterMixing.Check(module, decision);
        }
    }

    private static int CheckRoute(AdaptedModule module, Router router, int xLength, RoutingDecision destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        return CheckRouter(module, router, xLength);
    }

    private static int CheckRouter(AdaptedModule module, Router router, int xLength)
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(router);
        if (router.ExpertCount != module.ExpertCount)
        {
            throw new ArgumentException($"the router chooses among {router.ExpertCount} experts but module '{module.Name}' belongs to a library of {module.ExpertCount}", nameof(router));
        }
        if (router.BuiltFor is AdaptedModule builtFor && builtFor != module)
        {
            throw new ArgumentException($"the {router.GetType().Name} was built for module '{builtFor.Name}', not '{module.Name}'", nameof(router));
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

    /// <summary>Marks the session in use by this thread until disposed; throws if another thread is using it.</summary>
    internal Use Enter()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Interlocked.Exchange(ref _inUse, 1) != 0)
        {
            throw new InvalidOperationException("this session is already in use on another thread; create one session per thread");
        }
        return new Use(this);
    }

    internal readonly struct Use(Session session) : IDisposable
    {
        public void Dispose() => Volatile.Write(ref session._inUse, 0);
    }
}
