using System.Runtime.InteropServices;
using ILGPU;
using Half = System.Half;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>
/// One session's GPU work: its own stream and workspaces. A routed forward is three or four launches on
/// the stream with no host round trip between them (the gating's scores, its selection unless the shrink
/// runs it, the shrink, the expand: see <see cref="LaunchShape"/>), a forward with a given decision two;
/// the span API stages activations through page-locked buffers and synchronises once at the end.
/// Workspaces grow to the largest batch seen and are then reused. Activations are float (F32) or ushort
/// (F16 bits); rows take vector loads where their views are aligned (<see cref="VectorRows.Aligned"/>).
/// </summary>
internal sealed class GpuExecutor : IExecutor
{
    private readonly GpuBackend _backend;
    private readonly Accelerator _accelerator;
    private readonly KernelSet _kernels;
    private readonly AcceleratorStream _stream;
    private readonly List<IDisposable> _owned = [];

    private readonly DeviceBuffer<float> _xF32, _yF32, _weights, _scores, _v;
    private readonly DeviceBuffer<ushort> _xF16, _yF16;
    private readonly DeviceBuffer<int> _ids;
    private readonly Staging<float> _stageXF32, _stageYF32, _stageWeights;
    private readonly Staging<ushort> _stageXF16, _stageYF16;
    private readonly Staging<int> _stageIds;

    public GpuExecutor(GpuBackend backend)
    {
        _backend = backend;
        _accelerator = backend.Device.Accelerator;
        _kernels = backend.Device.Kernels;
        _stream = _accelerator.CreateStream();
        backend.Register(this);
        _xF32 = Own(new DeviceBuffer<float>(_accelerator, _stream));
        _yF32 = Own(new DeviceBuffer<float>(_accelerator, _stream));
        _weights = Own(new DeviceBuffer<float>(_accelerator, _stream));
        _scores = Own(new DeviceBuffer<float>(_accelerator, _stream));
        _v = Own(new DeviceBuffer<float>(_accelerator, _stream));
        _xF16 = Own(new DeviceBuffer<ushort>(_accelerator, _stream));
        _yF16 = Own(new DeviceBuffer<ushort>(_accelerator, _stream));
        _ids = Own(new DeviceBuffer<int>(_accelerator, _stream));
        _stageXF32 = Own(new Staging<float>(_accelerator, _stream));
        _stageYF32 = Own(new Staging<float>(_accelerator, _stream));
        _stageWeights = Own(new Staging<float>(_accelerator, _stream));
        _stageXF16 = Own(new Staging<ushort>(_accelerator, _stream));
        _stageYF16 = Own(new Staging<ushort>(_accelerator, _stream));
        _stageIds = Own(new Staging<int>(_accelerator, _stream));
    }

    public Accelerator Accelerator => _accelerator;

    public AcceleratorStream Stream => _stream;

    // ---------------------------------------------------------------- span API (staged, synchronous)

    public void Route(Router router, ReadOnlySpan<float> x, int tokens, RoutingDecision destination) => Route<float>(router, x, tokens, destination);

    public void Route(Router router, ReadOnlySpan<Half> x, int tokens, RoutingDecision destination) =>
        Route(router, MemoryMarshal.Cast<Half, ushort>(x), tokens, destination);

    public void Forward(AdaptedModule module, RoutingDecision decision, Aggregation aggregation, ReadOnlySpan<float> x, Span<float> y) =>
        Staged(module, null, decision, x, y, decision.TokenCount, aggregation);

    public void Forward(AdaptedModule module, RoutingDecision decision, Aggregation aggregation, ReadOnlySpan<Half> x, Span<Half> y) =>
        Staged(module, null, decision, MemoryMarshal.Cast<Half, ushort>(x), MemoryMarshal.Cast<Half, ushort>(y), decision.TokenCount, aggregation);

    public void Forward(AdaptedModule module, Router router, ReadOnlySpan<float> x, int tokens, RoutingDecision decision, Span<float> y) =>
        Staged(module, router, decision, x, y, tokens, Aggregation.Output);

    public void Forward(AdaptedModule module, Router router, ReadOnlySpan<Half> x, int tokens, RoutingDecision decision, Span<Half> y) =>
        Staged(module, router, decision, MemoryMarshal.Cast<Half, ushort>(x), MemoryMarshal.Cast<Half, ushort>(y), tokens, Aggregation.Output);

    /// <summary>A linear router's decision is made on the device; a fixed router's on the host, as on every backend.</summary>
    private void Route<TX>(Router router, ReadOnlySpan<TX> x, int tokens, RoutingDecision destination) where TX : unmanaged
    {
        if (router is LinearRouter linear)
        {
            Route(linear, x, tokens, destination);
        }
        else
        {
            ((FixedRouter)router).Decide(tokens, destination); // the only other kind (GpuBackend.Supports)
        }
    }

    /// <summary>Routes host rows with a linear router on the device and fills the host decision.</summary>
    private void Route<TX>(LinearRouter router, ReadOnlySpan<TX> x, int tokens, RoutingDecision destination) where TX : unmanaged
    {
        _backend.CheckBatch(tokens, router.ExpertCount, 0);
        destination.Reset(tokens, router.TopK, router.ExpertCount);
        if (tokens == 0)
        {
            return;
        }
        ArrayView<TX> xd = X<TX>(x.Length);
        StageX<TX>().Upload(x, xd);
        int slots = tokens * router.TopK;
        Gate(router, xd, tokens, _ids.View(slots), _weights.View(slots));
        ReadDecision(slots);
        _stream.Synchronize();
        FillDecision(destination, tokens * router.TopK);
        destination.RequireFiniteWeights();
    }

    /// <summary>
    /// y += mixture for host activations. With a linear router the decision is made on the device and
    /// written into <paramref name="decision"/>; with a fixed router it is made on the host; with no router
    /// <paramref name="decision"/> is applied as given. Parameter mixing needs a decision already checked on
    /// the host (no router).
    /// </summary>
    private void Staged<TX>(AdaptedModule module, Router? router, RoutingDecision decision, ReadOnlySpan<TX> x, Span<TX> y, int tokens,
        Aggregation aggregation)
        where TX : unmanaged
    {
        _backend.CheckBatch(tokens, router is LinearRouter gated ? gated.ExpertCount : 0, module.OutputDim);
        if (router is FixedRouter fixedWeights)
        {
            fixedWeights.Decide(tokens, decision);
        }
        if (tokens == 0)
        {
            decision.Reset(0, router?.TopK ?? decision.TopK, module.ExpertCount);
            return;
        }
        // x and y have staging arrays of their own: copies are asynchronous until the stream synchronises.
        ArrayView<TX> xd = X<TX>(x.Length), yd = Y<TX>(y.Length);
        Staging<TX> stageY = StageY<TX>();
        StageX<TX>().Upload(x, xd);
        int topK;
        ArrayView<float> scores = default;
        if (router is LinearRouter linear)
        {
            topK = linear.TopK;
            scores = GateForForward(linear, xd, tokens, _ids.View(tokens * topK), _weights.View(tokens * topK));
        }
        else
        {
            UploadDecision(decision);
            topK = decision.TopK;
        }
        stageY.Upload(y, yd);
        Mix(module, xd, yd, tokens, topK, _ids.View(tokens * topK), _weights.View(tokens * topK), aggregation, scores);
        if (router is LinearRouter)
        {
            ReadDecision(tokens * topK);
        }
        stageY.Download(yd);
        _stream.Synchronize();
        if (router is LinearRouter)
        {
            decision.Reset(tokens, topK, module.ExpertCount);
            FillDecision(decision, tokens * topK);
            decision.RequireFiniteWeights(); // before y is touched, so a refused call writes nothing to it
        }
        stageY.Span(y.Length).CopyTo(y);
    }

    // ---------------------------------------------------------------- device API (asynchronous)

    public DeviceRoutingDecision CreateDeviceDecision(Session session) => new(session, this);

    /// <summary>A device decision lives in one session's buffers and is ordered by its stream: another session's is refused.</summary>
    public void CheckOwner(DeviceRoutingDecision decision)
    {
        if (decision.Owner != this)
        {
            throw new ArgumentException(
                decision.Owner.Accelerator == _accelerator
                    ? "the device decision was created by another session; use one from this session's CreateDeviceDecision"
                    : "the device decision belongs to another engine's device; use one from this session's CreateDeviceDecision",
                nameof(decision));
        }
    }

    /// <summary>Routes device rows into the device decision (no synchronisation).</summary>
    public void Route<TX>(LinearRouter router, ArrayView<TX> x, int tokens, DeviceRoutingDecision destination) where TX : unmanaged
    {
        _backend.CheckBatch(tokens, router.ExpertCount, 0);
        destination.Resize(tokens, router.TopK, router.ExpertCount);
        if (tokens > 0)
        {
            Gate(router, x, tokens, destination.Ids, destination.Weights);
        }
    }

    /// <summary>Routes device rows into the device decision and adds the mixture into device y, fused as the span path (no synchronisation).</summary>
    public void Forward<TX>(AdaptedModule module, LinearRouter router, ArrayView<TX> x, int tokens, DeviceRoutingDecision decision, ArrayView<TX> y)
        where TX : unmanaged
    {
        _backend.CheckBatch(tokens, router.ExpertCount, module.OutputDim);
        decision.Resize(tokens, router.TopK, router.ExpertCount);
        if (tokens > 0)
        {
            ArrayView<float> scores = GateForForward(router, x, tokens, decision.Ids, decision.Weights);
            Mix(module, x, y, tokens, router.TopK, decision.Ids, decision.Weights, Aggregation.Output, scores);
        }
    }

    /// <summary>y += mixture for device activations and a device decision (no synchronisation).</summary>
    public void Forward<TX>(AdaptedModule module, DeviceRoutingDecision decision, ArrayView<TX> x, ArrayView<TX> y) where TX : unmanaged
    {
        _backend.CheckBatch(decision.TokenCount, 0, module.OutputDim);
        if (decision.TokenCount > 0)
        {
            Mix(module, x, y, decision.TokenCount, decision.TopK, decision.Ids, decision.Weights, Aggregation.Output, default);
        }
    }

    public void Synchronize() => _stream.Synchronize();

    // ---------------------------------------------------------------- the pipeline

    /// <summary>Scores and selection into the given decision views.</summary>
    private void Gate<TX>(LinearRouter router, ArrayView<TX> x, int tokens, ArrayView<int> ids, ArrayView<float> weights) where TX : unmanaged =>
        Select(Score(router, x, tokens), tokens, router.ExpertCount, router.TopK, ids, weights);

    /// <summary>
    /// A forward's gating: the scores, then the selection into the decision views, or nothing more when the
    /// shrink selects (decode sizes, <see cref="GatingKernel.SelectsInShrink"/>): then the scores are returned
    /// for it, else an invalid view.
    /// </summary>
    private ArrayView<float> GateForForward<TX>(LinearRouter router, ArrayView<TX> x, int tokens, ArrayView<int> ids, ArrayView<float> weights)
        where TX : unmanaged
    {
        ArrayView<float> scores = Score(router, x, tokens);
        if (GatingKernel.SelectsInShrink(tokens, router.ExpertCount, router.TopK))
        {
            return scores;
        }
        Select(scores, tokens, router.ExpertCount, router.TopK, ids, weights);
        return default;
    }

    /// <summary>Launches the scores; returns them, expert-major.</summary>
    private ArrayView<float> Score<TX>(LinearRouter router, ArrayView<TX> x, int tokens) where TX : unmanaged
    {
        DeviceRouter uploaded = _backend.Upload(router, _stream);
        return uploaded.Precision switch
        {
            WeightPrecision.Float16 => Score<TX, ushort>(router, uploaded, x, tokens),
            WeightPrecision.BFloat16 => Score<TX, BFloat16Bits>(router, uploaded, x, tokens),
            _ => Score<TX, float>(router, uploaded, x, tokens),
        };
    }

    private ArrayView<float> Score<TX, TP>(LinearRouter router, DeviceRouter uploaded, ArrayView<TX> x, int tokens)
        where TX : unmanaged
        where TP : unmanaged
    {
        ArrayView<float> scores = _scores.View((long)router.ExpertCount * tokens);
        _kernels.Gating.LaunchScores(_stream, new ScoresArgs<TX, TP>
        {
            X = x,
            Tokens = tokens,
            InputDim = router.InputDim,
            XVector = VectorRows.Aligned(x, router.InputDim, _accelerator) ? 1 : 0,
            Experts = router.ExpertCount,
            Prototypes = uploaded.Prototypes<TP>(),
            PrototypePitch = uploaded.Pitch,
            Normalization = (int)router.Normalization,
            Absolute = router.ScoreFunction == ScoreFunction.AbsoluteValue ? 1 : 0,
            InverseTemperature = 1f / router.Options.Temperature,
            HasBias = router.Bias.IsEmpty ? 0 : 1,
            Bias = uploaded.Bias,
            Scores = scores,
        });
        return scores;
    }

    private void Select(ArrayView<float> scores, int tokens, int experts, int topK, ArrayView<int> ids, ArrayView<float> weights) =>
        _kernels.Gating.LaunchSelect(_stream, new SelectArgs
        {
            Scores = scores,
            Tokens = tokens,
            Experts = experts,
            TopK = topK,
            Ids = ids,
            Weights = weights,
        });

    /// <summary>Shrink and expand; with <paramref name="scores"/> (a valid view) the shrink selects each token's experts and writes the decision.</summary>
    private void Mix<TX>(AdaptedModule module, ArrayView<TX> x, ArrayView<TX> y, int tokens, int topK, ArrayView<int> ids, ArrayView<float> weights,
        Aggregation aggregation, ArrayView<float> scores)
        where TX : unmanaged
    {
        DeviceModule uploaded = _backend.Upload(module, _stream);
        int parameter = aggregation == Aggregation.Parameter ? 1 : 0;
        switch (uploaded.Precision)
        {
            case WeightPrecision.Float16:
                Mix<TX, ushort>(module, uploaded, x, y, tokens, topK, ids, weights, parameter, scores);
                break;
            case WeightPrecision.BFloat16:
                Mix<TX, BFloat16Bits>(module, uploaded, x, y, tokens, topK, ids, weights, parameter, scores);
                break;
            default:
                Mix<TX, float>(module, uploaded, x, y, tokens, topK, ids, weights, parameter, scores);
                break;
        }
    }

    private void Mix<TX, TW>(AdaptedModule module, DeviceModule uploaded, ArrayView<TX> x, ArrayView<TX> y, int tokens, int topK,
        ArrayView<int> ids, ArrayView<float> weights, int parameterMixing, ArrayView<float> scores)
        where TX : unmanaged
        where TW : unmanaged
    {
        int slots = tokens * topK, vStride = Math.Max(1, uploaded.MaxRank);
        ArrayView<float> v = _v.View((long)slots * vStride);
        _kernels.Shrink.Launch(_stream, new ShrinkArgs<TX, TW>
        {
            X = x,
            Tokens = tokens,
            InputDim = module.InputDim,
            XVector = VectorRows.Aligned(x, module.InputDim, _accelerator) ? 1 : 0,
            TopK = topK,
            Experts = module.ExpertCount,
            Select = scores.IsValid ? 1 : 0,
            Scores = scores.IsValid ? scores : _scores.View(1), // never read then, but every view a kernel takes is a real buffer
            Ids = ids,
            Weights = weights,
            A = uploaded.A<TW>(),
            APitch = uploaded.APitch,
            ParameterMixing = parameterMixing,
            AOffset = uploaded.AOffset,
            Rank = uploaded.Rank,
            Scaling = uploaded.Scaling,
            RowGroups = ShrinkKernel.RowGroups(uploaded.MaxRank, _kernels.Shrink.RowsPerGroup),
            VStride = vStride,
            V = v,
        });
        _kernels.Expand.Launch(_stream, new ExpandArgs<TX, TW>
        {
            Y = y,
            Tokens = tokens,
            OutputDim = module.OutputDim,
            YVector = VectorRows.Aligned(y, module.OutputDim, _accelerator) ? 1 : 0,
            TopK = topK,
            Ids = ids,
            Weights = weights,
            ParameterMixing = parameterMixing,
            VStride = vStride,
            Scaling = uploaded.Scaling,
            BTransposed = uploaded.BTransposed<TW>(),
            BPitch = uploaded.BPitch,
            BOffset = uploaded.BOffset,
            Rank = uploaded.Rank,
            V = v,
        });
    }

    // ---------------------------------------------------------------- staging helpers

    private void UploadDecision(RoutingDecision decision)
    {
        int slots = decision.TokenCount * decision.TopK;
        _stageIds.Upload(decision.ExpertIds, _ids.View(slots));
        _stageWeights.Upload(decision.Weights, _weights.View(slots));
    }

    private void ReadDecision(int slots)
    {
        _stageIds.Download(_ids.View(slots));
        _stageWeights.Download(_weights.View(slots));
    }

    private void FillDecision(RoutingDecision decision, int slots)
    {
        for (int t = 0; t < decision.TokenCount; t++)
        {
            _stageIds.Span(slots).Slice(t * decision.TopK, decision.TopK).CopyTo(decision.MutableIds(t));
            _stageWeights.Span(slots).Slice(t * decision.TopK, decision.TopK).CopyTo(decision.MutableWeights(t));
        }
    }

    internal void UploadDecision(RoutingDecision decision, ArrayView<int> ids, ArrayView<float> weights)
    {
        _stageIds.Upload(decision.ExpertIds, ids);
        _stageWeights.Upload(decision.Weights, weights);
        _stream.Synchronize(); // the staging arrays are reused by the next call
    }

    internal void DownloadDecision(ArrayView<int> ids, ArrayView<float> weights, RoutingDecision decision)
    {
        _stageIds.Download(ids);
        _stageWeights.Download(weights);
        _stream.Synchronize();
        FillDecision(decision, (int)ids.Length);
    }

    private ArrayView<TX> X<TX>(int length) where TX : unmanaged =>
        typeof(TX) == typeof(float) ? _xF32.View(length).Cast<TX>() : _xF16.View(length).Cast<TX>();

    private ArrayView<TX> Y<TX>(int length) where TX : unmanaged =>
        typeof(TX) == typeof(float) ? _yF32.View(length).Cast<TX>() : _yF16.View(length).Cast<TX>();

    private Staging<TX> StageX<TX>() where TX : unmanaged =>
        typeof(TX) == typeof(float) ? (Staging<TX>)(object)_stageXF32 : (Staging<TX>)(object)_stageXF16;

    private Staging<TX> StageY<TX>() where TX : unmanaged =>
        typeof(TX) == typeof(float) ? (Staging<TX>)(object)_stageYF32 : (Staging<TX>)(object)_stageYF16;

    private T Own<T>(T disposable) where T : IDisposable
    {
        _owned.Add(disposable);
        return disposable;
    }

    public void Dispose()
    {
        _stream.Synchronize(); // before unregistering: until then, another session's release drains this stream too
        _backend.Unregister(this);
        foreach (IDisposable d in _owned)
        {
            d.Dispose();
        }
        _stream.Dispose();
    }
}
