using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ILGPU;
using Half = System.Half;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Cpu;

/// <summary>
/// One session's CPU execution: routing (normalise, score, select) and the routed forward (dispatch by
/// expert, shrink, expand with the weighted sum fused in). Work is split across the engine's worker pool:
/// shrink by (expert, panel of rank rows, block of its tokens), expand by blocks of output columns (one per worker), so
/// every expert's A and B are read once per call and no two threads write the same output element. All buffers live on
/// the pinned heap and grow only when a call needs more than any before it. Factors are read at the engine's precision
/// from the engine's packed module (<see cref="CpuBackend.Weights(AdaptedModule)"/>: A and Bᵀ in panels), prototypes
/// from its packed panels (<see cref="CpuBackend.Weights(LinearRouter)"/>).
/// </summary>
internal sealed unsafe class CpuExecutor : IExecutor
{
    private const int PairBlock = CpuKernels.MaxShrinkTokens; // shrink: routed tokens per work item
    private const int MinColumnBlock = 256;  // expand: fewest output columns per work item

    private readonly CpuBackend _backend;
    private readonly WorkerPool _pool;
    private readonly WeightPrecision _precision;
    private readonly ShrinkJob _shrink;
    private readonly ExpandJob _expand;
    private readonly NormalizeJob _normalize;
    private readonly ScoreJob _score;
    private readonly Selection _select;

    // Workspace (pinned, grown on demand).
    private float[] _xFloat = [];
    private float[] _yAccumulator = [];
    private float[] _rowScratch = [];
    private float[] _scores = [];
    private int[] _segmentStart = [];
    private int[] _segmentEnd = [];
    private int[] _active = [];
    private int[] _shrinkExpert = [];
    private int[] _shrinkPanel = [];
    private int[] _shrinkPair = [];
    private int[] _pairToken = [];
    private float[] _pairCoefficient = [];
    private float[] _v = [];
    private float[] _u = [];                 // parameter mixing: A_tok x per token
    private void*[] _a = [];                 // per expert: A's and Bᵀ's panels at the engine's precision
    private void*[] _bT = [];
    private int[] _rank = [];
    private int _activeCount;
    private int _shrinkItemCount;

    public CpuExecutor(CpuBackend backend)
    {
        _backend = backend;
        _pool = backend.Pool;
        _precision = backend.Precision;
        _shrink = new ShrinkJob(this);
        _expand = new ExpandJob(this);
        _normalize = new NormalizeJob();
        _score = new ScoreJob(this);
        _select = new Selection(this);
    }

    // ---------------------------------------------------------------- the executor

    public void Route(Router router, ReadOnlySpan<float> x, int tokens, RoutingDecision destination)
    {
        fixed (float* px = x)
        {
            Route(router, px, tokens, destination);
        }
    }

    public void Route(Router router, ReadOnlySpan<Half> x, int tokens, RoutingDecision destination) => Route(router, Widen(x), tokens, destination);

    public void Forward(AdaptedModule module, RoutingDecision decision, Aggregation aggregation, ReadOnlySpan<float> x, Span<float> y)
    {
        fixed (float* px = x, py = y)
        {
            Forward(module, decision, px, py, aggregation);
        }
    }

    public void Forward(AdaptedModule module, RoutingDecision decision, Aggregation aggregation, ReadOnlySpan<Half> x, Span<Half> y)
    {
        fixed (Half* py = y)
        {
            Forward(module, decision, Widen(x), py, aggregation);
        }
    }

    public void Forward(AdaptedModule module, Router router, ReadOnlySpan<float> x, int tokens, RoutingDecision decision, Span<float> y)
    {
        fixed (float* px = x, py = y)
        {
            Route(router, px, tokens, decision);
            Forward(module, decision, px, py, Aggregation.Output);
        }
    }

    public void Forward(AdaptedModule module, Router router, ReadOnlySpan<Half> x, int tokens, RoutingDecision decision, Span<Half> y)
    {
        float* px = Widen(x);
        fixed (Half* py = y)
        {
            Route(router, px, tokens, decision);
            Forward(module, decision, px, py, Aggregation.Output);
        }
    }

    public DeviceRoutingDecision CreateDeviceDecision(Session session) => throw NoDevice();

    public void CheckOwner(DeviceRoutingDecision decision) => throw NoDevice();

    public void Route<TX>(LinearRouter router, ArrayView<TX> x, int tokens, DeviceRoutingDecision destination) where TX : unmanaged => throw NoDevice();

    public void Forward<TX>(AdaptedModule module, LinearRouter router, ArrayView<TX> x, int tokens, DeviceRoutingDecision decision, ArrayView<TX> y)
        where TX : unmanaged => throw NoDevice();

    public void Forward<TX>(AdaptedModule module, DeviceRoutingDecision decision, ArrayView<TX> x, ArrayView<TX> y) where TX : unmanaged => throw NoDevice();

    public void Synchronize()
    {
        // Every CPU call has finished when it returns.
    }

    public void Dispose()
    {
        // The workspace is managed memory; the worker pool belongs to the backend.
    }

    private static NotSupportedException NoDevice() => new($"device buffers need a GPU backend; this engine runs on {Backend.Cpu}");

    // ---------------------------------------------------------------- routing

    private void Route(Router router, float* x, int tokens, RoutingDecision destination)
    {
        switch (router)
        {
            case LinearRouter linear:
                Route(linear, x, tokens, destination);
                break;
            case FixedRouter fixedWeights:
                fixedWeights.Decide(tokens, destination);
                break;
            default:
                throw new NotSupportedException($"router type {router.GetType().Name} has no execution path");
        }
    }

    private void Route(LinearRouter router, float* x, int tokens, RoutingDecision destination)
    {
        int n = router.InputDim, experts = router.ExpertCount;
        destination.Reset(tokens, router.TopK, experts);
        if (tokens == 0)
        {
            return;
        }
        float* rows = x;
        if (router.Normalization != InputNormalization.None)
        {
            Grow(ref _rowScratch, (long)tokens * n);
            rows = Address(_rowScratch);
            _normalize.Set(router.Normalization, x, rows, n);
            _pool.Run(_normalize, tokens);
        }
        Grow(ref _scores, (long)tokens * experts);
        PackedPrototypes packed = _backend.Weights(router);
        int panels = (experts + packed.Width - 1) / packed.Width;
        int scoreBlock = ScoreBlock(tokens, panels);
        _select.Set(router, destination);
        _score.Set(rows, packed.Address, packed.PanelBytes, packed.Width, _precision, n, tokens, experts, panels, scoreBlock);
        _pool.Run(_score, (tokens + scoreBlock - 1) / scoreBlock * panels);
        GC.KeepAlive(packed); // the workers read it through a pointer
        if (_select.FirstNonFinite < tokens)
        {
            throw RoutingDecision.NonFiniteScores(_select.FirstNonFinite);
        }
    }

    /// <summary>
    /// Tokens per scoring work item: up to <see cref="CpuScores.MaxTokens"/>, so that each block of a panel read into L1
    /// serves many token tiles, but halved down to 8 while that leaves fewer than two items per worker.
    /// </summary>
    private int ScoreBlock(int tokens, int panels)
    {
        int block = CpuScores.MaxTokens;
        while (block > 8 && (tokens + block - 1) / block * panels < 2 * _pool.Threads)
        {
            block /= 2;
        }
        return block;
    }

    /// <summary>Widens Half rows into the float workspace and returns its address.</summary>
    private float* Widen(ReadOnlySpan<Half> x)
    {
        Grow(ref _xFloat, x.Length);
        TensorPrimitives.ConvertToSingle(x, _xFloat.AsSpan(0, x.Length));
        return Address(_xFloat);
    }

    // ---------------------------------------------------------------- forward

    /// <summary>
    /// y[t] += Σ_slots w · s_e · B_e (A_e x_t) for float32 y (output mixing), or with parameter mixing
    /// y[t] += Σ_slots w · s · B_e (Σ_slots' w' A_e' x_t).
    /// </summary>
    private void Forward(AdaptedModule module, RoutingDecision decision, float* x, float* y, Aggregation aggregation)
    {
        PackedModule packed = _backend.Weights(module);
        if (Dispatch(module, packed, decision, aggregation) == 0)
        {
            return;
        }
        RunShrinkAndExpand(module, x, y, null, decision.TokenCount, aggregation);
        GC.KeepAlive(packed); // the workers read it through pointers
    }

    /// <summary>The same for Half y: accumulate in float32, round into y once.</summary>
    private void Forward(AdaptedModule module, RoutingDecision decision, float* x, Half* y, Aggregation aggregation)
    {
        PackedModule packed = _backend.Weights(module);
        if (Dispatch(module, packed, decision, aggregation) == 0)
        {
            return;
        }
        Grow(ref _yAccumulator, (long)decision.TokenCount * module.OutputDim);
        RunShrinkAndExpand(module, x, Address(_yAccumulator), y, decision.TokenCount, aggregation);
        GC.KeepAlive(packed);
    }

    private void RunShrinkAndExpand(AdaptedModule module, float* x, float* accumulate, Half* roundInto, int tokens, Aggregation aggregation)
    {
        _shrink.Set(module, x);
        _pool.Run(_shrink, _shrinkItemCount);
        if (aggregation == Aggregation.Parameter)
        {
            MixParameters(module, tokens);
        }
        _expand.Set(module, accumulate, roundInto, tokens, ColumnBlock(module.OutputDim));
        _pool.Run(_expand, (module.OutputDim + _expand.ColumnBlock - 1) / _expand.ColumnBlock);
    }

    /// <summary>
    /// Output columns per expand work item: one block per worker where that is at least <see cref="MinColumnBlock"/>
    /// columns, so each expert's Bᵀ panels are read in the longest runs the split allows (a multiple of 64 columns: whole
    /// panels at every width). The block boundaries do not change any result: every column is summed the same way
    /// whichever block holds it.
    /// </summary>
    private int ColumnBlock(int dOut) => Math.Max(MinColumnBlock, ((dOut + _pool.Threads - 1) / _pool.Threads + 63) & ~63);

    /// <summary>
    /// Parameter mixing between shrink and expand. The shrink left V[p] = w_p · A_e x_t (coefficient w, no
    /// scaling); each token's sum u_t = Σ_p V[p] is A_tok x_t. Every pair's row becomes w_p · s · u_t, so the
    /// unchanged expand adds Σ_p w_p s B_e u_t = s · B_tok (A_tok x_t). Ranks and scalings are one (checked
    /// by the session). Pairs are summed in segment order (expert ascending), so results repeat exactly.
    /// </summary>
    private void MixParameters(AdaptedModule module, int tokens)
    {
        int rank = _rank[_active[0]], stride = module.MaxRank;
        float scaling = module.Factors(_active[0])!.Scaling;
        Grow(ref _u, (long)tokens * rank);
        Span<float> u = _u.AsSpan(0, tokens * rank);
        u.Clear();
        for (int a = 0; a < _activeCount; a++)
        {
            int e = _active[a];
            for (int p = _segmentStart[e]; p < _segmentEnd[e]; p++)
            {
                Span<float> sum = u.Slice(_pairToken[p] * rank, rank);
                TensorPrimitives.Add(sum, _v.AsSpan(p * stride, rank), sum);
            }
        }
        for (int a = 0; a < _activeCount; a++)
        {
            int e = _active[a];
            for (int p = _segmentStart[e]; p < _segmentEnd[e]; p++)
            {
                TensorPrimitives.Multiply(u.Slice(_pairToken[p] * rank, rank), _pairCoefficient[p] * scaling, _v.AsSpan(p * stride, rank));
            }
        }
    }

    /// <summary>
    /// Groups the decision's (token, slot) pairs by expert (counting sort: tokens ascending within an
    /// expert, slots ascending within a token), folding each pair's weight and the expert's scaling into one
    /// coefficient (for parameter mixing the weight alone: the scaling is applied once after the mix). Slots
    /// that do not contribute (<see cref="AdaptedModule.Contributing"/>) are dropped; a repeat of an expert
    /// within one token is a pair of its own, as in the kernels (the routing contract). Returns the number of
    /// experts with work. Each active expert's factors are read through <paramref name="packed"/>, which packs them on the
    /// expert's first run.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Dispatch(AdaptedModule module, PackedModule packed, RoutingDecision decision, Aggregation aggregation)
    {
        int experts = module.ExpertCount, tokens = decision.TokenCount, k = decision.TopK;
        ReadOnlySpan<int> ids = decision.ExpertIds;
        ReadOnlySpan<float> weights = decision.Weights;
        bool parameter = aggregation == Aggregation.Parameter;

        Grow(ref _segmentStart, experts);
        Grow(ref _segmentEnd, experts);
        Grow(ref _active, experts);
        Grow(ref _rank, experts);
        if (_a.Length < experts)
        {
            _a = new void*[experts];
            _bT = new void*[experts];
        }
        Span<int> count = _segmentEnd.AsSpan(0, experts);
        count.Clear();
        for (int i = 0; i < ids.Length; i++)
        {
            if (module.Contributing(ids[i], weights[i]) is not null)
            {
                count[ids[i]]++;
            }
        }
        int pairs = 0;
        _activeCount = 0;
        _shrinkItemCount = 0;
        for (int e = 0; e < experts; e++)
        {
            _segmentStart[e] = pairs;
            pairs += count[e];
            count[e] = _segmentStart[e]; // from here on: the segment's fill position, then its end
        }
        if (pairs == 0)
        {
            return 0;
        }
        Grow(ref _pairToken, pairs);
        Grow(ref _pairCoefficient, pairs);
        Grow(ref _v, (long)pairs * module.MaxRank);
        for (int t = 0; t < tokens; t++)
        {
            for (int s = 0; s < k; s++)
            {
                int i = t * k + s, e = ids[i];
                if (module.Contributing(e, weights[i]) is not LoraFactors f)
                {
                    continue;
                }
                int end = _segmentEnd[e];
                _pairToken[end] = t;
                _pairCoefficient[end] = parameter ? weights[i] : weights[i] * f.Scaling;
                _segmentEnd[e] = end + 1;
            }
        }
        for (int e = 0; e < experts; e++)
        {
            if (_segmentEnd[e] == _segmentStart[e])
            {
                continue;
            }
            LoraFactors f = module.Factors(e)!;
            _active[_activeCount++] = e;
            packed.Expert(f, e, out _a[e], out _bT[e]);
            _rank[e] = f.Rank;
            _shrinkItemCount += ShrinkPanels(f.Rank) * ((_segmentEnd[e] - _segmentStart[e] + PairBlock - 1) / PairBlock);
        }
        Grow(ref _shrinkExpert, _shrinkItemCount);
        Grow(ref _shrinkPanel, _shrinkItemCount);
        Grow(ref _shrinkPair, _shrinkItemCount);
        int item = 0;
        for (int a = 0; a < _activeCount; a++)
        {
            int e = _active[a];
            for (int panel = 0; panel < ShrinkPanels(_rank[e]); panel++)
            {
                for (int pair = _segmentStart[e]; pair < _segmentEnd[e]; pair += PairBlock, item++)
                {
                    _shrinkExpert[item] = e;
                    _shrinkPanel[item] = panel;
                    _shrinkPair[item] = pair;
                }
            }
        }
        return _activeCount;
    }

    /// <summary>Panels of <see cref="CpuKernels.ShrinkPanelRows"/> rank rows a rank-<paramref name="rank"/> A is packed in.</summary>
    private static int ShrinkPanels(int rank) => (rank + CpuKernels.ShrinkPanelRows - 1) / CpuKernels.ShrinkPanelRows;

    // ---------------------------------------------------------------- jobs

    /// <summary>V[p, k] = c_p · (A_e[k] · x_{t_p}) for one expert, a panel of its rank rows and a block of its tokens.</summary>
    private sealed class ShrinkJob(CpuExecutor owner) : ParallelJob
    {
        private float* _x;
        private int _n;
        private int _vStride;

        public void Set(AdaptedModule module, float* x)
        {
            _x = x;
            _n = module.InputDim;
            _vStride = module.MaxRank;
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public override void Execute(int item)
        {
            CpuExecutor o = owner;
            int e = o._shrinkExpert[item], p0 = o._shrinkPair[item], panelRows = CpuKernels.ShrinkPanelRows;
            int row0 = o._shrinkPanel[item] * panelRows, rows = Math.Min(panelRows, o._rank[e] - row0);
            int p1 = Math.Min(p0 + PairBlock, o._segmentEnd[e]), n = _n, stride = _vStride;
            void* panel = (byte*)o._a[e] + (long)row0 * n * WeightStorage.ElementSize(o._precision);
            float** xs = stackalloc float*[PairBlock];
            float** vs = stackalloc float*[PairBlock];
            fixed (int* token = o._pairToken)
            fixed (float* coefficient = o._pairCoefficient, v = o._v)
            {
                for (int p = p0; p < p1; p++)
                {
                    xs[p - p0] = _x + (long)token[p] * n;
                    vs[p - p0] = v + (long)p * stride + row0;
                }
                CpuKernels.Shrink(o._precision, panel, n, rows, p1 - p0, xs, vs);
                for (int p = p0; p < p1; p++)
                {
                    float* row = v + (long)p * stride + row0;
                    for (int k = 0; k < rows; k++)
                    {
                        row[k] *= coefficient[p];
                    }
                }
            }
        }
    }

    /// <summary>
    /// One block of output columns: for every active expert in ascending order, y[t] += Σ_k V[p, k] Bᵀ_e[k] (Bᵀ read from its panels);
    /// for Half outputs, accumulate in float32 and round into y once at the end.
    /// </summary>
    private sealed class ExpandJob(CpuExecutor owner) : ParallelJob
    {
        private float* _y;
        private Half* _roundInto;
        private int _dOut;
        private int _vStride;
        private int _tokens;

        public int ColumnBlock { get; private set; }

        public void Set(AdaptedModule module, float* accumulate, Half* roundInto, int tokens, int columnBlock)
        {
            ColumnBlock = columnBlock;
            _y = accumulate;
            _roundInto = roundInto;
            _dOut = module.OutputDim;
            _vStride = module.MaxRank;
            _tokens = tokens;
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public override void Execute(int item)
        {
            CpuExecutor o = owner;
            int dOut = _dOut, stride = _vStride;
            int j0 = item * ColumnBlock, j1 = Math.Min(j0 + ColumnBlock, dOut);
            float* y = _y;
            if (_roundInto is not null)
            {
                for (int t = 0; t < _tokens; t++)
                {
                    new Span<float>(y + (long)t * dOut + j0, j1 - j0).Clear();
                }
            }
            int group = CpuKernels.TileTokens;
            float** vs = stackalloc float*[CpuKernels.MaxTileTokens];
            float** ys = stackalloc float*[CpuKernels.MaxTileTokens];
            fixed (int* token = o._pairToken)
            fixed (float* v = o._v)
            {
                for (int a = 0; a < o._activeCount; a++)
                {
                    int e = o._active[a];
                    void* panels = o._bT[e];
                    int rank = o._rank[e];
                    for (int p = o._segmentStart[e], end = o._segmentEnd[e]; p < end; p += group)
                    {
                        int m = Math.Min(group, end - p);
                        for (int i = 0; i < m; i++)
                        {
                            vs[i] = v + (long)(p + i) * stride;
                            ys[i] = y + (long)token[p + i] * dOut;
                        }
                        CpuKernels.Expand(o._precision, panels, rank, m, vs, ys, j0, j1);
                    }
                }
            }
            if (_roundInto is not null)
            {
                for (int t = 0; t < _tokens; t++)
                {
                    long row = (long)t * dOut;
                    for (int j = j0; j < j1; j++)
                    {
                        _roundInto[row + j] = (Half)((float)_roundInto[row + j] + y[row + j]);
                    }
                }
            }
        }
    }

    /// <summary>LayerNorm (no affine) or L2 normalisation of one row.</summary>
    private sealed class NormalizeJob : ParallelJob
    {
        private InputNormalization _kind;
        private float* _x;
        private float* _rows;
        private int _n;

        public void Set(InputNormalization kind, float* x, float* rows, int n)
        {
            _kind = kind;
            _x = x;
            _rows = rows;
            _n = n;
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public override void Execute(int t)
        {
            var x = new ReadOnlySpan<float>(_x + (long)t * _n, _n);
            var z = new Span<float>(_rows + (long)t * _n, _n);
            if (_kind == InputNormalization.LayerNorm)
            {
                float mean = TensorPrimitives.Sum(x) / _n;
                TensorPrimitives.Subtract(x, mean, z);
                float variance = TensorPrimitives.SumOfSquares(z) / _n;
                TensorPrimitives.Multiply(z, 1f / MathF.Sqrt(variance + RoutingContract.LayerNormEpsilon), z);
            }
            else
            {
                float norm = MathF.Max(TensorPrimitives.Norm(x), RoutingContract.L2Epsilon);
                TensorPrimitives.Multiply(x, 1f / norm, z);
            }
        }
    }

    /// <summary>
    /// Raw dot products x_t · p_e for a block of tokens and one panel of experts. The item that scores a block's last
    /// panel selects that block's tokens, so the selection overlaps the other workers' scoring instead of waiting for a
    /// pool run of its own (at T = 64 that run took 15 to 35 µs, mostly its start and the last item's tail).
    /// </summary>
    private sealed class ScoreJob(CpuExecutor owner) : ParallelJob
    {
        private int[] _panelsLeft = []; // per block of tokens: panels not yet scored
        private float* _rows;
        private byte* _panel0;
        private long _panelBytes;
        private int _width;
        private WeightPrecision _precision;
        private int _n;
        private int _tokens;
        private int _experts;
        private int _panels;
        private int _tokenBlock;

        public void Set(float* rows, void* panel0, long panelBytes, int width, WeightPrecision precision, int n, int tokens, int experts, int panels,
            int tokenBlock)
        {
            _tokenBlock = tokenBlock;
            _rows = rows;
            _panel0 = (byte*)panel0;
            _panelBytes = panelBytes;
            _width = width;
            _precision = precision;
            _n = n;
            _tokens = tokens;
            _experts = experts;
            _panels = panels;
            int blocks = (tokens + tokenBlock - 1) / tokenBlock;
            Grow(ref _panelsLeft, blocks);
            _panelsLeft.AsSpan(0, blocks).Fill(panels);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public override void Execute(int item)
        {
            int block = item / _panels, t0 = block * _tokenBlock, panel = item % _panels, e0 = panel * _width;
            int tokens = Math.Min(_tokenBlock, _tokens - t0);
            fixed (float* scores = owner._scores)
            {
                CpuScores.Score(_precision, _width, _panel0 + panel * _panelBytes, Math.Min(_width, _experts - e0), _rows + (long)t0 * _n,
                    tokens, _n, scores + (long)t0 * _experts + e0, _experts);
            }
            // The decrement orders this item's scores before the selection of whichever worker takes the block's last.
            if (Interlocked.Decrement(ref _panelsLeft[block]) == 0)
            {
                owner._select.Select(t0, t0 + tokens);
            }
        }
    }

    /// <summary>score = f(dot) / τ + b, top-k, softmax over the kept scores, for a block of tokens (run by <see cref="ScoreJob"/>).</summary>
    private sealed class Selection(CpuExecutor owner)
    {
        private LinearRouter? _router;
        private RoutingDecision? _decision;

        /// <summary>The first token whose scores were not finite (int.MaxValue when none), whichever worker found it.</summary>
        public int FirstNonFinite => _firstNonFinite;

        private int _firstNonFinite;

        public void Set(LinearRouter router, RoutingDecision decision)
        {
            _router = router;
            _decision = decision;
            _firstNonFinite = int.MaxValue;
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Select(int t0, int t1)
        {
            LinearRouter router = _router!;
            int experts = router.ExpertCount;
            float inverseTemperature = 1f / router.Options.Temperature;
            bool absolute = router.ScoreFunction == ScoreFunction.AbsoluteValue;
            ReadOnlySpan<float> bias = router.Bias;
            for (int t = t0; t < t1; t++)
            {
                Span<float> s = owner._scores.AsSpan(t * experts, experts);
                if (absolute)
                {
                    TensorPrimitives.Abs(s, s);
                }
                TensorPrimitives.Multiply(s, inverseTemperature, s);
                if (!bias.IsEmpty)
                {
                    TensorPrimitives.Add(s, bias, s);
                }
                if (!TensorPrimitives.IsFiniteAll(s))
                {
                    InterlockedMin(ref _firstNonFinite, t);
                    continue;
                }
                Span<float> w = _decision!.MutableWeights(t);
                SlotOrder.SelectTopK(s, _decision.MutableIds(t), w);
                SlotOrder.Softmax(w);
            }
        }
    }

    private static void InterlockedMin(ref int target, int value)
    {
        int seen = Volatile.Read(ref target);
        while (value < seen)
        {
            int now = Interlocked.CompareExchange(ref target, value, seen);
            if (now == seen)
            {
                return;
            }
            seen = now;
        }
    }

    // ---------------------------------------------------------------- workspace

    private static void Grow<T>(ref T[] buffer, long length) where T : unmanaged
    {
        if (buffer.Length < length)
        {
            if (length > Array.MaxLength)
            {
                throw new OutOfMemoryException($"a CPU workspace buffer of {length} elements exceeds the largest array");
            }
            buffer = GC.AllocateUninitializedArray<T>((int)length, pinned: true);
        }
    }

    private static float* Address(float[] pinned) => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));
}
