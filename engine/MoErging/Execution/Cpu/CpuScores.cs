using System.Runtime.CompilerServices;
using MoErging.Experts;

namespace MoErging.Execution.Cpu;

/// <summary>
/// Router scoring on the CPU: dot[t, e] = x_t · p_e for a block of tokens against the prototypes, as a matrix product in
/// outer-product form. The prototypes are packed once (<see cref="Pack"/>) into panels of two registers' worth of experts,
/// element k of every expert of a panel side by side (<c>[panel][k][expert]</c>), so a tile of tokens reads one
/// contiguous stream of prototype vectors and one broadcast element per token, and keeps two vectors of experts per token
/// in registers without horizontal sums (a dot-product form, tiles of prototype rows against token rows, ran at half the
/// speed here: its many short row streams and reductions; the shrink, <see cref="CpuKernels.Shrink"/>, is in this form
/// too). Each score is summed in blocks of <see cref="Block"/>
/// elements, each block a fused multiply-add chain from zero in ascending k, the blocks added to the running sum in order:
/// the result is the same at every register width and whatever tile a token falls in.
/// </summary>
internal static unsafe class CpuScores
{
    /// <summary>Elements per summation block: the rounding error grows with Block + n / Block terms, not with n.</summary>
    public const int Block = 256;

    /// <summary>Most tokens one <see cref="Score"/> call takes (its running sums live on the stack: 8 KiB at 512 bits).</summary>
    public const int MaxTokens = 64;

    /// <summary>
    /// Experts per panel for a router of <paramref name="experts"/>: two registers at the width the kernels run at on
    /// this machine, or at a narrower one where that holds them all, so a small router is not padded to 32 experts. Every
    /// width gives the same scores.
    /// </summary>
    public static int PanelWidth(int experts)
    {
        int width = 2 * CpuKernels.Lanes;
        while (width > PanelWidthOf<Lanes128>() && width / 2 >= experts)
        {
            width /= 2;
        }
        return width;
    }

    /// <summary>Experts per panel at width <typeparamref name="TV"/>: two registers of float32 lanes.</summary>
    public static int PanelWidthOf<TV>() where TV : unmanaged, ILanes<TV> => 2 * TV.Count;

    /// <summary>Elements of one panel of <paramref name="width"/> experts over <paramref name="n"/> inputs.</summary>
    public static long PanelElements(int n, int width) => (long)n * width;

    /// <summary>
    /// The <paramref name="experts"/> prototype rows of <paramref name="n"/> float32 elements packed into panels of
    /// <paramref name="width"/> experts, rounded once to <paramref name="precision"/>, the last panel's missing experts
    /// zero: a pinned array of
    /// <c>⌈experts / width⌉ · n · width</c> elements.
    /// </summary>
    public static Array Pack(ReadOnlySpan<float> prototypes, int experts, int n, int width, WeightPrecision precision)
    {
        int panels = (experts + width - 1) / width;
        // At float32 this array is the copy (pinned, read in place); at 16 bits only its rounding is kept.
        float[] packed = GC.AllocateArray<float>(checked((int)(panels * PanelElements(n, width))), pinned: precision == WeightPrecision.Float32);
        for (int e = 0; e < experts; e++)
        {
            ReadOnlySpan<float> row = prototypes.Slice(e * n, n);
            int first = (int)(e / width * PanelElements(n, width)) + e % width;
            for (int k = 0; k < n; k++)
            {
                packed[first + k * width] = row[k];
            }
        }
        return WeightStorage.Keep(packed, precision);
    }

    /// <summary>
    /// scores[t · tokenStride + j] = x_t · p_j for the <paramref name="tokenCount"/> (at most <see cref="MaxTokens"/>) token rows from
    /// <paramref name="x"/> (stride <paramref name="n"/>) and the first <paramref name="experts"/> experts of one panel
    /// (<see cref="Pack"/> at <paramref name="width"/> experts a panel, held at <paramref name="precision"/>); nothing
    /// else is written. The register width follows from the panel width, so a panel is never read at another.
    /// </summary>
    public static void Score(WeightPrecision precision, int width, void* panel, int experts, float* x, int tokenCount, int n, float* scores, int tokenStride)
    {
        if (experts < 1 || experts > width)
        {
            throw new ArgumentOutOfRangeException(nameof(experts), experts, $"a panel holds 1 to {width} experts");
        }
        if (tokenCount < 1 || tokenCount > MaxTokens)
        {
            throw new ArgumentOutOfRangeException(nameof(tokenCount), tokenCount, $"a call scores 1 to {MaxTokens} tokens");
        }
        if (width == PanelWidthOf<Lanes512>())
        {
            Score<Lanes512>(precision, panel, experts, x, tokenCount, n, scores, tokenStride);
        }
        else if (width == PanelWidthOf<Lanes256>())
        {
            Score<Lanes256>(precision, panel, experts, x, tokenCount, n, scores, tokenStride);
        }
        else if (width == PanelWidthOf<Lanes128>())
        {
            Score<Lanes128>(precision, panel, experts, x, tokenCount, n, scores, tokenStride);
        }
        else
        {
            throw new ArgumentOutOfRangeException(nameof(width), width, "no register width packs panels of this many experts");
        }
    }

    private static void Score<TV>(WeightPrecision precision, void* panel, int experts, float* x, int tokenCount, int n, float* scores, int tokenStride)
        where TV : unmanaged, ILanes<TV>
    {
        switch (precision)
        {
            case WeightPrecision.Float32:
                Score<TV, float, Float32Weights<TV>>((float*)panel, experts, x, tokenCount, n, scores, tokenStride);
                break;
            case WeightPrecision.BFloat16:
                Score<TV, ushort, BFloat16Weights<TV>>((ushort*)panel, experts, x, tokenCount, n, scores, tokenStride);
                break;
            default:
                Score<TV, ushort, Float16Weights<TV>>((ushort*)panel, experts, x, tokenCount, n, scores, tokenStride);
                break;
        }
    }

    /// <summary>
    /// One summation block at a time for all the tokens, in tiles of <see cref="ILanes{TV}.TileTokens"/> tokens, the last
    /// tile exactly as long as what is left: the panel's block (32 KiB at 512 bits) is read from L1 by every tile after the
    /// first, not streamed again from the outer caches once per tile. Where more than one tile reads a block of 16-bit
    /// weights, the block is widened once into float32 on the stack and the tiles read that: widening is exact, so the
    /// sums are the same, and it is no longer repeated per tile (F16's widening costs about as much as the multiply-adds).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Score<TV, T, TW>(T* panel, int experts, float* x, int tokenCount, int n, float* scores, int tokenStride)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        int width = PanelWidthOf<TV>();
        bool widen = typeof(T) != typeof(float) && tokenCount > TV.TileTokens;
        float* sums = stackalloc float[MaxTokens * width];
        float* wide = stackalloc float[widen ? Block * width : 0];
        new Span<float>(sums, tokenCount * width).Clear();
        for (int k0 = 0; k0 < n; k0 += Block)
        {
            int length = Math.Min(Block, n - k0);
            T* block = panel + (long)k0 * width;
            if (widen)
            {
                Widen<TV, T, TW>(block, length * width, wide);
                Tiles<TV, float, Float32Weights<TV>>(wide, x + k0, tokenCount, n, length, sums);
            }
            else
            {
                Tiles<TV, T, TW>(block, x + k0, tokenCount, n, length, sums);
            }
        }
        for (int t = 0; t < tokenCount; t++)
        {
            new ReadOnlySpan<float>(sums + t * width, experts).CopyTo(new Span<float>(scores + (long)t * tokenStride, experts));
        }
    }

    /// <summary>
    /// <paramref name="count"/> weights (a multiple of TV.Count) from <paramref name="block"/> into float32 at
    /// <paramref name="wide"/>, widened as the tiles would; compiled optimized from the first call, as the tiles are.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Widen<TV, T, TW>(T* block, int count, float* wide)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        TW weights = TW.Create();
        for (int i = 0; i < count; i += TV.Count)
        {
            TV.Store(weights.Load(block + i), wide + i);
        }
    }

    /// <summary>One summation block of every token (rows <paramref name="n"/> apart from <paramref name="x"/>), tile by tile.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tiles<TV, T, TW>(T* block, float* x, int tokenCount, int n, int length, float* sums)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        int width = PanelWidthOf<TV>();
        for (int t0 = 0; t0 < tokenCount; t0 += TV.TileTokens)
        {
            float* xt = x + (long)t0 * n, tile = sums + t0 * width;
            TokenCount.Run(Math.Min(TV.TileTokens, tokenCount - t0), new ScoreTileCall<TV, T, TW>(block, xt, n, length, tile));
        }
    }

    /// <summary>
    /// One summation block of <typeparamref name="TM"/> tokens (rows <paramref name="n"/> apart from
    /// <paramref name="x"/>) against a panel's block of <paramref name="length"/> elements: sums[t · width + j] += the
    /// block's chain of x_t · p_j from zero. Absent tokens are neither computed nor stored (the conditions are JIT-time
    /// constants).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TV, T, TW, TM>(T* block, float* x, int n, int length, float* sums)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
        where TM : struct, ITileTokens
    {
        int w = TV.Count, width = PanelWidthOf<TV>();
        TW weights = TW.Create();
        bool t1 = TM.Count > 1, t2 = TM.Count > 2, t3 = TM.Count > 3, t4 = TM.Count > 4, t5 = TM.Count > 5, t6 = TM.Count > 6, t7 = TM.Count > 7;
        float* x0 = x, x1 = x0 + n, x2 = x1 + n, x3 = x2 + n, x4 = x3 + n, x5 = x4 + n, x6 = x5 + n, x7 = x6 + n;
        TV a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        TV a4 = default, b4 = default, a5 = default, b5 = default, a6 = default, b6 = default, a7 = default, b7 = default;
        T* p = block;
        for (int k = 0; k < length; k++, p += width)
        {
            TV lo = weights.Load(p), hi = weights.Load(p + w);
            TV.MultiplyAdd(ref a0, lo, x0 + k);
            TV.MultiplyAdd(ref b0, hi, x0 + k);
            if (t1)
            {
                TV.MultiplyAdd(ref a1, lo, x1 + k);
                TV.MultiplyAdd(ref b1, hi, x1 + k);
            }
            if (t2)
            {
                TV.MultiplyAdd(ref a2, lo, x2 + k);
                TV.MultiplyAdd(ref b2, hi, x2 + k);
            }
            if (t3)
            {
                TV.MultiplyAdd(ref a3, lo, x3 + k);
                TV.MultiplyAdd(ref b3, hi, x3 + k);
            }
            if (t4)
            {
                TV.MultiplyAdd(ref a4, lo, x4 + k);
                TV.MultiplyAdd(ref b4, hi, x4 + k);
            }
            if (t5)
            {
                TV.MultiplyAdd(ref a5, lo, x5 + k);
                TV.MultiplyAdd(ref b5, hi, x5 + k);
            }
            if (t6)
            {
                TV.MultiplyAdd(ref a6, lo, x6 + k);
                TV.MultiplyAdd(ref b6, hi, x6 + k);
            }
            if (t7)
            {
                TV.MultiplyAdd(ref a7, lo, x7 + k);
                TV.MultiplyAdd(ref b7, hi, x7 + k);
            }
        }
        CpuKernels.AddInto(sums, w, a0, b0);
        if (t1)
        {
            CpuKernels.AddInto(sums + width, w, a1, b1);
        }
        if (t2)
        {
            CpuKernels.AddInto(sums + 2 * width, w, a2, b2);
        }
        if (t3)
        {
            CpuKernels.AddInto(sums + 3 * width, w, a3, b3);
        }
        if (t4)
        {
            CpuKernels.AddInto(sums + 4 * width, w, a4, b4);
        }
        if (t5)
        {
            CpuKernels.AddInto(sums + 5 * width, w, a5, b5);
        }
        if (t6)
        {
            CpuKernels.AddInto(sums + 6 * width, w, a6, b6);
        }
        if (t7)
        {
            CpuKernels.AddInto(sums + 7 * width, w, a7, b7);
        }
    }

    /// <summary>One summation block of a scoring tile, at the tile's token count.</summary>
    private readonly struct ScoreTileCall<TV, T, TW>(T* block, float* x, int n, int length, float* sums) : ITile
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<TW, T, TV>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Run<TM>() where TM : struct, ITileTokens => Tile<TV, T, TW, TM>(block, x, n, length, sums);
    }
}
