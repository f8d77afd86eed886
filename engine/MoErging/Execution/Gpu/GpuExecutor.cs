using ILGPU;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>
/// One session's GPU work: its own stream and workspaces. A routed forward is four launches on the
/// stream with no host round trip between them (gating, dispatch, shrink, expand); the span API stages
/// activations through page-locked buffers and synchronises once at the end. Workspaces grow to the
/// largest batch seen and are then reused. Activations are float (F32) or ushort (F16 bits).
/// </summary>
internal sealed class GpuExecutor : IDisposable
{
    private readonly GpuBackend _backend;
    private readonly Accelerator _accelerator;
    private readonly KernelSet _kernels;
    private readonly AcceleratorStream _stream;
    private readonly List<IDisposable> _owned = [];

    private readonly DeviceBuffer<float> _xF32, _yF32, _weights, _pairCoefficient, _v;
    private readonly DeviceBuffer<ushort> _xF16, _yF16;
    private readonly DeviceBuffer<int> _ids, _slotPair, _pairToken, _itemExpert, _itemRow, _itemPairStart, _itemPairEnd, _itemCount;
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
        _pairCoefficient = Own(new DeviceBuffer<float>(_accelerator, _stream));
        _v = Own(new DeviceBuffer<float>(_accelerator, _stream));
        _xF16 = Own(new DeviceBuffer<ushort>(_accelerator, _stream));
        _yF16 = Own(new DeviceBuffer<ushort>(_accelerator, _stream));
        _ids = Own(new DeviceBuffer<int>(_accelerator, _stream));
        _slotPair = Own(new DeviceBuffer<int>(_accelerator, _stream));
        _pairToken = Own(new DeviceBuffer<int>(_accelerator, _stream));
        _itemExpert = Own(new DeviceBuffer<int>(_accelerator, _stream));
        _itemRow = Own(new DeviceBuffer<int>(_accelerator, _stream));
        _itemPairStart = Own(new DeviceBuffer<int>(_accelerator, _stream));
        _itemPairEnd = Own(new DeviceBuffer<int>(_accelerator, _stream));
        _itemCount = Own(new DeviceBuffer<int>(_accelerator, _stream));
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

    /// <summary>Routes host rows with a linear router on the device and fills the host decision.</summary>
    public void Route<TX>(LinearRouter router, ReadOnlySpan<TX> x, int tokens, RoutingDecision destination) where TX : unmanaged
    {
        GatingKernel.EnsureFits(router.ExpertCount); // before anything changes
        destination.Reset(tokens, router.TopK, router.ExpertCount);
        if (tokens == 0)
        {
            return;
        }
        ArrayView<TX> xd = X<TX>(x.Length);
        StageX<TX>().Upload(x, xd);
        Gate(router, xd, tokens);
        ReadDecision(tokens * router.TopK);
        _stream.Synchronize();
        FillDecision(destination, tokens * router.TopK);
    }

    /// <summary>
    /// y += mixture for host activations. With a linear router the decision is made on the device and
    /// written into <paramref name="decision"/>; with a fixed router it is made on the host; with no router
    /// <paramref name="decision"/> is applied as given. Parameter mixing needs a decision already checked on
    /// the host (no router).
    /// </summary>
    public void Forward<TX>(AdaptedModule module, Router? router, RoutingDecision decision, ReadOnlySpan<TX> x, Span<TX> y, int tokens,
        Aggregation aggregation)
        where TX : unmanaged
    {
        if (router is LinearRouter)
        {
            GatingKernel.EnsureFits(router.ExpertCount);
        }
        if (router is FixedRouter fixedWeights)
        {
            Cpu.CpuExecutor.Route(fixedWeights, tokens, decision);
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
        if (router is LinearRouter linear)
        {
            Gate(linear, xd, tokens);
            topK = linear.TopK;
        }
        else
        {
            UploadDecision(decision);
            topK = decision.TopK;
        }
        stageY.Upload(y, yd);
        Mix(module, xd, yd, tokens, topK, _ids.View(tokens * topK), _weights.View(tokens * topK), aggregation);
        if (router is LinearRouter)
        {
            ReadDecision(tokens * topK);
        }
        stageY.Download(yd);
        _stream.Synchronize();
        stageY.Span(y.Length).CopyTo(y);
        if (router is LinearRouter)
        {
            decision.Reset(tokens, topK, module.ExpertCount);
            FillDecision(decision, tokens * topK);
        }
    }

    // ---------------------------------------------------------------- device API (asynchronous)

    /// <summary>Routes device rows into the device decision (no synchronisation).</summary>
    public void Route<TX>(LinearRouter router, ArrayView<TX> x, int tokens, DeviceRoutingDecision destination) where TX : unmanaged
    {
        GatingKernel.EnsureFits(router.ExpertCount);
        destination.Resize(tokens, router.TopK, router.ExpertCount);
        if (tokens > 0)
        {
            Gate(router, x, tokens, destination.Ids, destination.Weights);
        }
    }

    /// <summary>y += mixture for device activations and a device decision (no synchronisation).</summary>
    public void Forward<TX>(AdaptedModule module, DeviceRoutingDecision decision, ArrayView<TX> x, ArrayView<TX> y) where TX : unmanaged
    {
        if (decision.TokenCount > 0)
        {
            Mix(module, x, y, decision.TokenCount, decision.TopK, decision.Ids, decision.Weights, Aggregation.Output);
        }
    }

    public void Synchronize() => _stream.Synchronize();

    // ---------------------------------------------------------------- the pipeline

    private void Gate<TX>(LinearRouter router, ArrayView<TX> x, int tokens) where TX : unmanaged
    {
        int slots = tokens * router.TopK;
        Gate(router, x, tokens, _ids.View(slots), _weights.View(slots));
    }

    private void Gate<TX>(LinearRouter router, ArrayView<TX> x, int tokens, ArrayView<int> ids, ArrayView<float> weights) where TX : unmanaged
    {
        DeviceRouter uploaded = _backend.Upload(router, _stream);
        _kernels.Gating.Launch(_stream, new GatingArgs<TX>
        {
            X = x,
            Tokens = tokens,
            InputDim = router.InputDim,
            Prototypes = uploaded.Prototypes,
            Bias = uploaded.Bias,
            HasBias = router.Bias.IsEmpty ? 0 : 1,
            Experts = router.ExpertCount,
            Normalization = (int)router.Normalization,
            Absolute = router.ScoreFunction == ScoreFunction.AbsoluteValue ? 1 : 0,
            InverseTemperature = 1f / router.Options.Temperature,
            TopK = router.TopK,
            Ids = ids,
            Weights = weights,
        });
    }

    private void Mix<TX>(AdaptedModule module, ArrayView<TX> x, ArrayView<TX> y, int tokens, int topK, ArrayView<int> ids, ArrayView<float> weights,
        Aggregation aggregation)
        where TX : unmanaged
    {
        DeviceModule uploaded = _backend.Upload(module, _stream);
        int parameter = aggregation == Aggregation.Parameter ? 1 : 0;
        if (uploaded.HalfWeights)
        {
            Mix<TX, ushort>(module, uploaded, x, y, tokens, topK, ids, weights, parameter);
        }
        else
        {
            Mix<TX, float>(module, uploaded, x, y, tokens, topK, ids, weights, parameter);
        }
    }

    private void Mix<TX, TW>(AdaptedModule module, DeviceModule uploaded, ArrayView<TX> x, ArrayView<TX> y, int tokens, int topK,
        ArrayView<int> ids, ArrayView<float> weights, int parameterMixing)
        where TX : unmanaged
        where TW : unmanaged
    {
        int slots = tokens * topK, vStride = Math.Max(1, uploaded.MaxRank);
        long items = DispatchKernel.MaxItems(slots, module.ExpertCount, uploaded.MaxRank, _kernels.Shrink.RowsPerItem);
        ArrayView<int> slotPair = _slotPair.View(slots), pairToken = _pairToken.View(slots);
        ArrayView<float> pairCoefficient = _pairCoefficient.View(slots), v = _v.View((long)slots * vStride);
        ArrayView<int> itemExpert = _itemExpert.View(items), itemRow = _itemRow.View(items);
        ArrayView<int> itemPairStart = _itemPairStart.View(items), itemPairEnd = _itemPairEnd.View(items), itemCount = _itemCount.View(1);
        _kernels.Dispatch.Launch(_stream, new DispatchArgs
        {
            Ids = ids,
            Weights = weights,
            Slots = slots,
            TopK = topK,
            Experts = module.ExpertCount,
            Rank = uploaded.Rank,
            Scaling = uploaded.Scaling,
            ParameterMixing = parameterMixing,
            RowsPerItem = _kernels.Shrink.RowsPerItem,
            SlotPair = slotPair,
            PairToken = pairToken,
            PairCoefficient = pairCoefficient,
            ItemExpert = itemExpert,
            ItemRow = itemRow,
            ItemPairStart = itemPairStart,
            ItemPairEnd = itemPairEnd,
            ItemCount = itemCount,
        });
        _kernels.Shrink.Launch(_stream, new ShrinkArgs<TX, TW>
        {
            X = x,
            InputDim = module.InputDim,
            A = uploaded.A<TW>(),
            AOffset = uploaded.AOffset,
            Rank = uploaded.Rank,
            ItemExpert = itemExpert,
            ItemRow = itemRow,
            ItemPairStart = itemPairStart,
            ItemPairEnd = itemPairEnd,
            ItemCount = itemCount,
            PairToken = pairToken,
            PairCoefficient = pairCoefficient,
            V = v,
            VStride = vStride,
        });
        _kernels.Expand.Launch(_stream, new ExpandArgs<TX, TW>
        {
            Y = y,
            Tokens = tokens,
            OutputDim = module.OutputDim,
            TopK = topK,
            Ids = ids,
            SlotPair = slotPair,
            ParameterMixing = parameterMixing,
            Weights = weights,
            Scaling = uploaded.Scaling,
            BTransposed = uploaded.BTransposed<TW>(),
            BOffset = uploaded.BOffset,
            Rank = uploaded.Rank,
            V = v,
            VStride = vStride,
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
