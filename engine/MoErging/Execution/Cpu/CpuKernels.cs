using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace MoErging.Execution.Cpu;

/// <summary>
/// SIMD building blocks of the CPU backend: the shrink and the expand of an expert, each on the expert's factors
/// packed into panels (<see cref="PackPanels{T}"/>) so that a step reads one contiguous run of weights and uses it for a
/// tile of tokens (register blocking), because the weights are what must stream from memory. Both are outer-product
/// tiles: a register of weights times a broadcast activation per token, with no horizontal sums. Each output sums its
/// terms from zero with fused multiply-adds in an order fixed by the shape alone (not by the register width, the tile
/// or how the work was split), and the expand adds its sum to y once: y is rounded once per expert, not once per rank
/// term.
/// Kernels skip tiered compilation: a latency-critical host must get SIMD code from the first call.
/// The bodies are generic over the register width (<see cref="ILanes{TV}"/>, the widest the hardware runs at full
/// speed, chosen once per call) and over the weight operand read through <see cref="IWeights{TSelf, T, TV}"/>, so one
/// body serves float32, bfloat16 and float16 storage: only the load differs, widened exactly in registers, and the sums
/// run in the same order, so 16-bit weights give the float32 result on their widened values bit for bit. A tile's token
/// count is a type too (<see cref="ITileTokens"/>), so a tile of fewer tokens than its kernel takes computes only what it stores.
/// </summary>
internal static unsafe class CpuKernels
{
    /// <summary>float32 lanes per register at the width the kernels run at on this machine (the entry points' choice).</summary>
    public static int Lanes => Vector512.IsHardwareAccelerated ? Lanes512.Count : Vector256.IsHardwareAccelerated ? Lanes256.Count : Lanes128.Count;

    /// <summary>Most tokens one <see cref="Expand"/> call takes.</summary>
    public const int MaxTileTokens = 8;

    /// <summary>Most tokens one <see cref="Shrink"/> call takes (its running sums live on the stack: 4 KiB at 512 bits).</summary>
    public const int MaxShrinkTokens = 64;

    /// <summary>Tokens an <see cref="Expand"/> call takes at full speed at that width, and a <see cref="Shrink"/> tile (<see cref="ILanes{TV}.TileTokens"/>).</summary>
    public static int TileTokens => Vector512.IsHardwareAccelerated ? Lanes512.TileTokens : Vector256.IsHardwareAccelerated ? Lanes256.TileTokens : Lanes128.TileTokens;

    /// <summary>Rank rows per shrink panel at the width the kernels run at on this machine: one register's lanes.</summary>
    public static int ShrinkPanelRows => Lanes;

    /// <summary>
    /// The shrink for <paramref name="tokens"/> (1 to <see cref="MaxShrinkTokens"/>, in tiles of <see cref="TileTokens"/>)
    /// of one panel of an expert's A: v_i[r] = Σ_k A[r, k] · x_i[k] for the panel's first <paramref name="rows"/> rank
    /// rows, with A in panels of <see cref="ShrinkPanelRows"/> rank rows (<see cref="PackPanels{T}"/> of Aᵀ: for each k,
    /// the panel's rank values side by side). Each step loads one register of A for all the tokens. The even and the
    /// odd terms of each block of a sum run in two chains, so that one token still keeps two multiply-adds in flight.
    /// </summary>
    public static void Shrink(WeightPrecision precision, void* panel, int n, int rows, int tokens, float** x, float** v)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            Shrink<Lanes512>(precision, panel, n, rows, tokens, x, v);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            Shrink<Lanes256>(precision, panel, n, rows, tokens, x, v);
        }
        else
        {
            Shrink<Lanes128>(precision, panel, n, rows, tokens, x, v);
        }
    }

    /// <summary>The shrink at one register width, on panels of <typeparamref name="TV"/>.Count rank rows.</summary>
    internal static void Shrink<TV>(WeightPrecision precision, void* panel, int n, int rows, int tokens, float** x, float** v)
        where TV : unmanaged, ILanes<TV>
    {
        switch (precision)
        {
            case WeightPrecision.Float32:
                Shrink<TV, float, Float32Weights<TV>>((float*)panel, n, rows, tokens, x, v);
                break;
            case WeightPrecision.BFloat16:
                Shrink<TV, ushort, BFloat16Weights<TV>>((ushort*)panel, n, rows, tokens, x, v);
                break;
            default:
                Shrink<TV, ushort, Float16Weights<TV>>((ushort*)panel, n, rows, tokens, x, v);
                break;
        }
    }

    /// <summary>
    /// One summation block of the panel at a time for all the tokens, in tiles of <see cref="ILanes{TV}.TileTokens"/>
    /// tokens, the running sums on the stack: the block (16 KiB at 512 bits in float32) comes from memory for the first
    /// tile and from L1 for the rest, and the tiles after the first ask for the next block, so memory keeps streaming
    /// while they run (a whole pass over the panel per tile left it idle through every pass after the first). The sums
    /// are the same: each block's chains still start from zero and join the running sum in order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Shrink<TV, T, TW>(T* panel, int n, int rows, int tokens, float** x, float** v)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        if (tokens < 1 || tokens > MaxShrinkTokens)
        {
            throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"a shrink call takes 1 to {MaxShrinkTokens} tokens");
        }
        int w = TV.Count;
        float* sums = stackalloc float[MaxShrinkTokens * w];
        new Span<float>(sums, tokens * w).Clear();
        for (int k0 = 0; k0 < n; k0 += CpuScores.Block)
        {
            int length = Math.Min(CpuScores.Block, n - k0);
            T* block = panel + (long)k0 * w;
            for (int t0 = 0; t0 < tokens; t0 += TV.TileTokens)
            {
                float** xt = x + t0;
                float* tile = sums + t0 * w;
                int prefetch = t0 == 0 ? PrefetchDistance : CpuScores.Block * w * sizeof(T); // later tiles: the next block
                TokenCount.Run(Math.Min(TV.TileTokens, tokens - t0), new ShrinkTileCall<TV, T, TW>(block, length, xt, k0, tile, prefetch));
            }
        }
        for (int i = 0; i < tokens; i++)
        {
            StoreRows(TV.Load(sums + i * w), rows, v[i]);
        }
    }

    /// <summary>
    /// One summation block of <paramref name="length"/> elements, from element <paramref name="k0"/> of each token's x,
    /// two k per step: the block's even and odd chains from zero, added together and then to the tile's running sums.
    /// Up to 16 accumulators (eight tokens) beside two registers of A; each step asks for the weights
    /// <paramref name="prefetch"/> bytes on.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ShrinkTile<TV, T, TW, TM>(T* block, int length, float** x, int k0, float* sums, int prefetch)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
        where TM : struct, ITileTokens
    {
        int w = TV.Count;
        TW weights = TW.Create();
        bool t1 = TM.Count > 1, t2 = TM.Count > 2, t3 = TM.Count > 3, t4 = TM.Count > 4, t5 = TM.Count > 5, t6 = TM.Count > 6, t7 = TM.Count > 7;
        float* x0 = x[0] + k0, x1 = t1 ? x[1] + k0 : null, x2 = t2 ? x[2] + k0 : null, x3 = t3 ? x[3] + k0 : null;
        float* x4 = t4 ? x[4] + k0 : null, x5 = t5 ? x[5] + k0 : null, x6 = t6 ? x[6] + k0 : null, x7 = t7 ? x[7] + k0 : null;
        T* a = block;
        TV e0 = default, o0 = default, e1 = default, o1 = default, e2 = default, o2 = default, e3 = default, o3 = default;
        TV e4 = default, o4 = default, e5 = default, o5 = default, e6 = default, o6 = default, e7 = default, o7 = default;
        int k = 0;
        for (; k < length - 1; k += 2, a += 2 * w)
        {
            PrefetchStep<TV, T>(a, prefetch);
            TV even = weights.Load(a), odd = weights.Load(a + w);
            TV.MultiplyAdd(ref e0, even, x0 + k);
            TV.MultiplyAdd(ref o0, odd, x0 + k + 1);
            if (t1)
            {
                TV.MultiplyAdd(ref e1, even, x1 + k);
                TV.MultiplyAdd(ref o1, odd, x1 + k + 1);
            }
            if (t2)
            {
                TV.MultiplyAdd(ref e2, even, x2 + k);
                TV.MultiplyAdd(ref o2, odd, x2 + k + 1);
            }
            if (t3)
            {
                TV.MultiplyAdd(ref e3, even, x3 + k);
                TV.MultiplyAdd(ref o3, odd, x3 + k + 1);
            }
            if (t4)
            {
                TV.MultiplyAdd(ref e4, even, x4 + k);
                TV.MultiplyAdd(ref o4, odd, x4 + k + 1);
            }
            if (t5)
            {
                TV.MultiplyAdd(ref e5, even, x5 + k);
                TV.MultiplyAdd(ref o5, odd, x5 + k + 1);
            }
            if (t6)
            {
                TV.MultiplyAdd(ref e6, even, x6 + k);
                TV.MultiplyAdd(ref o6, odd, x6 + k + 1);
            }
            if (t7)
            {
                TV.MultiplyAdd(ref e7, even, x7 + k);
                TV.MultiplyAdd(ref o7, odd, x7 + k + 1);
            }
        }
        if (k < length)
        {
            // An odd-length block: its last term joins the even chain.
            TV even = weights.Load(a);
            TV.MultiplyAdd(ref e0, even, x0 + k);
            if (t1)
            {
                TV.MultiplyAdd(ref e1, even, x1 + k);
            }
            if (t2)
            {
                TV.MultiplyAdd(ref e2, even, x2 + k);
            }
            if (t3)
            {
                TV.MultiplyAdd(ref e3, even, x3 + k);
            }
            if (t4)
            {
                TV.MultiplyAdd(ref e4, even, x4 + k);
            }
            if (t5)
            {
                TV.MultiplyAdd(ref e5, even, x5 + k);
            }
            if (t6)
            {
                TV.MultiplyAdd(ref e6, even, x6 + k);
            }
            if (t7)
            {
                TV.MultiplyAdd(ref e7, even, x7 + k);
            }
        }
        AddTo(sums, TV.Add(e0, o0));
        if (t1)
        {
            AddTo(sums + 1 * w, TV.Add(e1, o1));
        }
        if (t2)
        {
            AddTo(sums + 2 * w, TV.Add(e2, o2));
        }
        if (t3)
        {
            AddTo(sums + 3 * w, TV.Add(e3, o3));
        }
        if (t4)
        {
            AddTo(sums + 4 * w, TV.Add(e4, o4));
        }
        if (t5)
        {
            AddTo(sums + 5 * w, TV.Add(e5, o5));
        }
        if (t6)
        {
            AddTo(sums + 6 * w, TV.Add(e6, o6));
        }
        if (t7)
        {
            AddTo(sums + 7 * w, TV.Add(e7, o7));
        }
    }

    /// <summary>
    /// How far ahead of a step the kernels ask for their weights: about what one core must have in flight to stream
    /// from memory (latency × bandwidth, some 150 ns × 40 GB/s). An expert's panels are separate runs of 64 to 256 KiB,
    /// on which the hardware prefetcher alone left each core well short of the rate one long run reaches (the shrink
    /// at T = 64 in BF16 took about 200 µs without the hint, 145 with it); 3 to 12 KiB measured alike.
    /// </summary>
    private const int PrefetchDistance = 6144;

    /// <summary>
    /// Prefetches the lines a step reading two registers of weights at <paramref name="p"/> will read
    /// <paramref name="distance"/> bytes on. A hint: it never faults, past the end of an array included.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchStep<TV, T>(T* p, int distance = PrefetchDistance)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
    {
        if (Sse.IsSupported)
        {
            Sse.Prefetch0((byte*)p + distance);
            if (2 * TV.Count * sizeof(T) > 64)
            {
                Sse.Prefetch0((byte*)p + distance + 64);
            }
        }
    }

    /// <summary>The first <paramref name="rows"/> lanes of <paramref name="value"/> into v (the rest are a short panel's padding).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRows<TV>(TV value, int rows, float* v) where TV : unmanaged, ILanes<TV>
    {
        if (rows == TV.Count)
        {
            TV.Store(value, v);
            return;
        }
        float* lanes = stackalloc float[TV.Count];
        TV.Store(value, lanes);
        new ReadOnlySpan<float>(lanes, rows).CopyTo(new Span<float>(v, rows));
    }

    /// <summary>Bᵀ columns per expand panel at the width the kernels run at on this machine: two registers' lanes.</summary>
    public static int ExpandPanelColumns => 2 * Lanes;

    /// <summary>Elements of <see cref="PackPanels{T}"/>'s layout for a matrix of <paramref name="rows"/> × <paramref name="columns"/>.</summary>
    public static int PanelElements(int rows, int columns, int panelColumns) => checked((columns + panelColumns - 1) / panelColumns * rows * panelColumns);

    /// <summary>
    /// A matrix M (rows × columns, element (k, j) at source[k · rowStride + j · columnStride]) in the kernels' layout:
    /// panels of <paramref name="panelColumns"/> consecutive columns, each holding its rows one after another, so (k, j)
    /// sits at (j / P) · rows · P + k · P + j % P, and the last panel is padded with zeros. The expand takes Bᵀ so
    /// (M = Bᵀ, P = <see cref="ExpandPanelColumns"/>), the shrink A (M = Aᵀ, P = <see cref="ShrinkPanelRows"/>): each step
    /// of either then reads one contiguous run, where on the factors as held it read a short piece of each of several
    /// rows a whole row apart.
    /// </summary>
    public static void PackPanels<T>(ReadOnlySpan<T> source, int rows, int columns, int rowStride, int columnStride, int panelColumns, Span<T> panels)
        where T : unmanaged
    {
        panels[..PanelElements(rows, columns, panelColumns)].Clear();
        for (int j0 = 0; j0 < columns; j0 += panelColumns)
        {
            int width = Math.Min(panelColumns, columns - j0);
            Span<T> panel = panels[(j0 / panelColumns * rows * panelColumns)..];
            for (int k = 0; k < rows; k++)
            {
                Span<T> destination = panel.Slice(k * panelColumns, width);
                if (columnStride == 1)
                {
                    source.Slice(k * rowStride + j0, width).CopyTo(destination);
                    continue;
                }
                for (int j = 0; j < width; j++)
                {
                    destination[j] = source[k * rowStride + (j0 + j) * columnStride];
                }
            }
        }
    }

    /// <summary>
    /// The expand for <paramref name="tokens"/> (1 to <see cref="MaxTileTokens"/>; <see cref="TileTokens"/> at full speed) of one expert over columns [j0, j1):
    /// y_i[j] += Σ_k v_i[k] · bT[k, j] for a rank-r expert with Bᵀ in panels of <see cref="ExpandPanelColumns"/>
    /// (<see cref="PackPanels{T}"/>). Each Bᵀ element is loaded once for all the tokens, so an expert's Bᵀ block is read
    /// in one pass.
    /// </summary>
    public static void Expand(WeightPrecision precision, void* panels, int rank, int tokens, float** v, float** y, int j0, int j1)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            Expand<Lanes512>(precision, panels, rank, tokens, v, y, j0, j1);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            Expand<Lanes256>(precision, panels, rank, tokens, v, y, j0, j1);
        }
        else
        {
            Expand<Lanes128>(precision, panels, rank, tokens, v, y, j0, j1);
        }
    }

    /// <summary>The expand at one register width, on panels of 2 · <typeparamref name="TV"/>.Count columns.</summary>
    internal static void Expand<TV>(WeightPrecision precision, void* panels, int rank, int tokens, float** v, float** y, int j0, int j1)
        where TV : unmanaged, ILanes<TV>
    {
        switch (precision)
        {
            case WeightPrecision.Float32:
                Expand<TV, float, Float32Weights<TV>>((float*)panels, rank, tokens, v, y, j0, j1);
                break;
            case WeightPrecision.BFloat16:
                Expand<TV, ushort, BFloat16Weights<TV>>((ushort*)panels, rank, tokens, v, y, j0, j1);
                break;
            default:
                Expand<TV, ushort, Float16Weights<TV>>((ushort*)panels, rank, tokens, v, y, j0, j1);
                break;
        }
    }

    /// <summary>The expand at one token count; compiled optimized from the first call, as the kernels are.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Expand<TV, T, TW>(T* panels, int rank, int tokens, float** v, float** y, int j0, int j1)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        if (tokens < 1 || tokens > MaxTileTokens)
        {
            throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"an expand call takes 1 to {MaxTileTokens} tokens");
        }
        TokenCount.Run(tokens, new ExpandCall<TV, T, TW>(panels, rank, v, y, j0, j1));
    }

    /// <summary>
    /// One panel (two vectors of columns) per step: up to sixteen accumulators (eight tokens), and one token's two chains
    /// still outrun memory. Columns before the first whole panel and after the last run through <see cref="Columns"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Expand<TV, T, TW, TM>(T* panels, int rank, float** v, float** y, int j0, int j1)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
        where TM : struct, ITileTokens
    {
        int w = TV.Count, width = 2 * w;
        bool t1 = TM.Count > 1, t2 = TM.Count > 2, t3 = TM.Count > 3, t4 = TM.Count > 4, t5 = TM.Count > 5, t6 = TM.Count > 6, t7 = TM.Count > 7;
        float* v0 = v[0], v1 = t1 ? v[1] : null, v2 = t2 ? v[2] : null, v3 = t3 ? v[3] : null;
        float* v4 = t4 ? v[4] : null, v5 = t5 ? v[5] : null, v6 = t6 ? v[6] : null, v7 = t7 ? v[7] : null;
        int j = Math.Min(j1, (j0 + width - 1) / width * width);
        Columns<TV, T, TW>(panels, rank, width, TM.Count, v, y, j0, j);
        TW weights = TW.Create(); // after the call, not across it (IWeights)
        for (; j <= j1 - width; j += width)
        {
            TV a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
            TV a4 = default, b4 = default, a5 = default, b5 = default, a6 = default, b6 = default, a7 = default, b7 = default;
            T* col = panels + (long)(j / width) * rank * width;
            for (int k = 0; k < rank; k++, col += width)
            {
                PrefetchStep<TV, T>(col);
                TV lo = weights.Load(col), hi = weights.Load(col + w);
                TV.MultiplyAdd(ref a0, lo, v0 + k);
                TV.MultiplyAdd(ref b0, hi, v0 + k);
                if (t1)
                {
                    TV.MultiplyAdd(ref a1, lo, v1 + k);
                    TV.MultiplyAdd(ref b1, hi, v1 + k);
                }
                if (t2)
                {
                    TV.MultiplyAdd(ref a2, lo, v2 + k);
                    TV.MultiplyAdd(ref b2, hi, v2 + k);
                }
                if (t3)
                {
                    TV.MultiplyAdd(ref a3, lo, v3 + k);
                    TV.MultiplyAdd(ref b3, hi, v3 + k);
                }
                if (t4)
                {
                    TV.MultiplyAdd(ref a4, lo, v4 + k);
                    TV.MultiplyAdd(ref b4, hi, v4 + k);
                }
                if (t5)
                {
                    TV.MultiplyAdd(ref a5, lo, v5 + k);
                    TV.MultiplyAdd(ref b5, hi, v5 + k);
                }
                if (t6)
                {
                    TV.MultiplyAdd(ref a6, lo, v6 + k);
                    TV.MultiplyAdd(ref b6, hi, v6 + k);
                }
                if (t7)
                {
                    TV.MultiplyAdd(ref a7, lo, v7 + k);
                    TV.MultiplyAdd(ref b7, hi, v7 + k);
                }
            }
            AddInto(y[0] + j, w, a0, b0);
            if (t1)
            {
                AddInto(y[1] + j, w, a1, b1);
            }
            if (t2)
            {
                AddInto(y[2] + j, w, a2, b2);
            }
            if (t3)
            {
                AddInto(y[3] + j, w, a3, b3);
            }
            if (t4)
            {
                AddInto(y[4] + j, w, a4, b4);
            }
            if (t5)
            {
                AddInto(y[5] + j, w, a5, b5);
            }
            if (t6)
            {
                AddInto(y[6] + j, w, a6, b6);
            }
            if (t7)
            {
                AddInto(y[7] + j, w, a7, b7);
            }
        }
        Columns<TV, T, TW>(panels, rank, width, TM.Count, v, y, j, j1);
    }

    /// <summary>Columns [j0, j1) of the expand one by one, each token's chain in the same order as in the vector loop.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Columns<TV, T, TW>(T* panels, int rank, int width, int tokens, float** v, float** y, int j0, int j1)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        for (int j = j0; j < j1; j++)
        {
            T* column = panels + (long)(j / width) * rank * width + j % width;
            for (int i = 0; i < tokens; i++)
            {
                float s = 0f;
                T* col = column;
                float* vi = v[i];
                for (int k = 0; k < rank; k++, col += width)
                {
                    s = MathF.FusedMultiplyAdd(TW.LoadOne(col), vi[k], s);
                }
                y[i][j] += s;
            }
        }
    }

    /// <summary>y[0 .. 2w) += (lo, hi).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void AddInto<TV>(float* y, int w, TV lo, TV hi) where TV : unmanaged, ILanes<TV>
    {
        AddTo(y, lo);
        AddTo(y + w, hi);
    }

    /// <summary>*p += value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddTo<TV>(float* p, TV value) where TV : unmanaged, ILanes<TV> => TV.Store(TV.Add(TV.Load(p), value), p);

    /// <summary>One summation block of a shrink tile, at the tile's token count.</summary>
    private readonly struct ShrinkTileCall<TV, T, TW>(T* block, int length, float** x, int k0, float* sums, int prefetch) : ITile
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Run<TM>() where TM : struct, ITileTokens => ShrinkTile<TV, T, TW, TM>(block, length, x, k0, sums, prefetch);
    }

    /// <summary>An expand call's columns, at its token count.</summary>
    private readonly struct ExpandCall<TV, T, TW>(T* panels, int rank, float** v, float** y, int j0, int j1) : ITile
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Run<TM>() where TM : struct, ITileTokens => Expand<TV, T, TW, TM>(panels, rank, v, y, j0, j1);
    }
}

/// <summary>A kernel's work for one tile of tokens, run at the tile's token count as a type (<see cref="TokenCount.Run"/>).</summary>
internal interface ITile
{
    void Run<TM>() where TM : struct, ITileTokens;
}

/// <summary>The one place a tile's token count becomes the <see cref="ITileTokens"/> type its kernel is compiled for.</summary>
internal static class TokenCount
{
    /// <summary>Runs <paramref name="tile"/> at <paramref name="tokens"/> (1 to <see cref="CpuKernels.MaxTileTokens"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Run<TTile>(int tokens, TTile tile) where TTile : struct, ITile
    {
        switch (tokens)
        {
            case 1:
                tile.Run<OneToken>();
                break;
            case 2:
                tile.Run<TwoTokens>();
                break;
            case 3:
                tile.Run<ThreeTokens>();
                break;
            case 4:
                tile.Run<FourTokens>();
                break;
            case 5:
                tile.Run<FiveTokens>();
                break;
            case 6:
                tile.Run<SixTokens>();
                break;
            case 7:
                tile.Run<SevenTokens>();
                break;
            case 8:
                tile.Run<EightTokens>();
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"a tile takes 1 to {CpuKernels.MaxTileTokens} tokens");
        }
    }
}

/// <summary>The number of tokens (1 to 8) a kernel tile computes, as a JIT-time constant.</summary>
internal interface ITileTokens
{
    static abstract int Count { get; }
}

internal readonly struct OneToken : ITileTokens
{
    public static int Count => 1;
}

internal readonly struct TwoTokens : ITileTokens
{
    public static int Count => 2;
}

internal readonly struct ThreeTokens : ITileTokens
{
    public static int Count => 3;
}

internal readonly struct FourTokens : ITileTokens
{
    public static int Count => 4;
}

internal readonly struct FiveTokens : ITileTokens
{
    public static int Count => 5;
}

internal readonly struct SixTokens : ITileTokens
{
    public static int Count => 6;
}

internal readonly struct SevenTokens : ITileTokens
{
    public static int Count => 7;
}

internal readonly struct EightTokens : ITileTokens
{
    public static int Count => 8;
}
