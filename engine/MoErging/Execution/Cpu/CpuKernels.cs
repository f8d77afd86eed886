using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace MoErging.Execution.Cpu;

/// <summary>
/// SIMD building blocks of the CPU backend. Each reads its weight row once for several tokens
/// (register blocking), because the weights are what must stream from memory. The expand kernel sums an
/// expert's rank terms from zero with fused multiply-adds, in the same order on every path (vector or scalar
/// tail, one token or eight), and adds the sum to y once: y is rounded once per expert, not once per rank
/// term, and a result never depends on how the work was split.
/// Kernels skip tiered compilation: a latency-critical host must get SIMD code from the first call.
/// The bodies are generic over the register width (<see cref="ILanes{TV}"/>, the widest the hardware runs at full
/// speed, chosen once per call) and over the weight operand (factor rows) read through
/// <see cref="IWeights{T}"/>, so one body serves float32, bfloat16 and float16 storage: only the load differs, widened
/// exactly in registers, and the sums run in the same order, so 16-bit weights give the float32 result on their
/// widened values bit for bit. A tile's token count is a type too (<see cref="ITileTokens"/>), so a tile of fewer tokens
/// than its kernel takes computes only the products it stores.
/// </summary>
internal static unsafe class CpuKernels
{
    /// <summary>Reduction chunk: a block's operand rows stay in L1 while one chunk of them is summed.</summary>
    public const int Chunk = 256;

    /// <summary>Largest rows × tokens block <see cref="DotBlock"/> takes (its vector accumulators live on the stack).</summary>
    public const int MaxBlock = 16 * 64;

    /// <summary>Most rows <see cref="DotBlock"/> widens into a float32 chunk (16 KiB on the stack).</summary>
    private const int MaxWidenedRows = 16;

    /// <summary>
    /// out[t · tokenStride + r · rowStride] = rows[r] · tokens[t] over n elements, for <paramref name="rowCount"/>
    /// consecutive rows (stride n) and <paramref name="tokenCount"/> token rows given by address: the shrink step (A rows ×
    /// an expert's tokens, gathered by address). Router scoring, where every token meets every prototype, has its own
    /// kernel on packed prototypes (<see cref="CpuScores"/>).
    /// The reduction runs in chunks of <see cref="Chunk"/>; within a chunk, register tiles of
    /// <see cref="ILanes{TV}.TileRows"/> rows × up to 4 tokens read their operands from L1 and carry vector partial sums
    /// to the next chunk, so each dot product is reduced horizontally once. A short last row tile repeats its last row;
    /// the repeats are computed and not stored.
    /// </summary>
    public static void DotBlock(WeightPrecision precision, void* rows, int rowCount, float** tokens, int tokenCount, int n, float* output, int tokenStride, int rowStride)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            DotBlock<Lanes512>(precision, rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            DotBlock<Lanes256>(precision, rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
        }
        else
        {
            DotBlock<Lanes128>(precision, rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
        }
    }

    /// <summary>float32 lanes per register at the width the kernels run at on this machine (the entry points' choice).</summary>
    public static int Lanes => Vector512.IsHardwareAccelerated ? Lanes512.Count : Vector256.IsHardwareAccelerated ? Lanes256.Count : Lanes128.Count;

    /// <summary>Most tokens one <see cref="Expand"/> call takes.</summary>
    public const int MaxExpandTokens = 8;

    /// <summary>Tokens an <see cref="Expand"/> call takes at full speed at that width (<see cref="ILanes{TV}.TileTokens"/>).</summary>
    public static int ExpandTokens => Vector512.IsHardwareAccelerated ? Lanes512.TileTokens : Vector256.IsHardwareAccelerated ? Lanes256.TileTokens : Lanes128.TileTokens;

    /// <summary>
    /// Address of row <paramref name="row"/> of a row-major matrix of <paramref name="n"/> columns held at
    /// <paramref name="precision"/>.
    /// </summary>
    public static void* Row(WeightPrecision precision, void* rows, long row, int n) =>
        (byte*)rows + row * n * (precision == WeightPrecision.Float32 ? sizeof(float) : sizeof(ushort));

    internal static void DotBlock<TV>(WeightPrecision precision, void* rows, int rowCount, float** tokens, int tokenCount, int n, float* output, int tokenStride, int rowStride)
        where TV : unmanaged, ILanes<TV>
    {
        switch (precision)
        {
            case WeightPrecision.Float32:
                DotBlock<TV, float, Float32Weights>((float*)rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
                break;
            case WeightPrecision.BFloat16:
                DotBlock<TV, ushort, BFloat16Weights>((ushort*)rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
                break;
            default:
                DotBlock<TV, ushort, Float16Weights>((ushort*)rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
                break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotBlock<TV, T, TW>(T* rows, int rowCount, float** tokens, int tokenCount, int n, float* output, int tokenStride, int rowStride)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<T>
    {
        int tileRows = TV.TileRows, rowTiles = (rowCount + tileRows - 1) / tileRows, groups = (tokenCount + 3) / 4;
        int tileSize = 4 * tileRows;
        if (rowTiles * tileRows * groups * 4 > MaxBlock)
        {
            throw new ArgumentOutOfRangeException(nameof(rowCount), "block too large for the stack accumulators");
        }
        TV* acc = stackalloc TV[rowTiles * groups * tileSize];
        new Span<TV>(acc, rowTiles * groups * tileSize).Clear();
        // 16-bit rows that several token groups read are first widened into one float32 chunk, so each element is widened
        // once instead of once per group (F16's widening costs more than the products it feeds). float32 rows are read
        // in place: copying them measured no faster.
        bool widen = typeof(T) != typeof(float) && groups > 1 && rowCount <= MaxWidenedRows;
        float* widened = stackalloc float[widen ? MaxWidenedRows * Chunk : 0];
        int vectorEnd = n - n % TV.Count;
        for (int k0 = 0; k0 < vectorEnd; k0 += Chunk)
        {
            int length = Math.Min(Chunk, vectorEnd - k0);
            if (widen)
            {
                for (int r = 0; r < rowCount; r++)
                {
                    T* source = rows + (long)r * n + k0;
                    for (int i = 0; i < length; i += TV.Count)
                    {
                        TV.Store(TW.Load<TV>(source + i), widened + r * Chunk + i);
                    }
                }
                ChunkTiles<TV, float, Float32Weights>(widened, Chunk, rowCount, tokens, tokenCount, k0, length, acc);
            }
            else
            {
                ChunkTiles<TV, T, TW>(rows + k0, n, rowCount, tokens, tokenCount, k0, length, acc);
            }
        }
        for (int g = 0; g < groups; g++)
        {
            for (int p = 0; p < rowTiles; p++)
            {
                TV* tile = acc + (g * rowTiles + p) * tileSize;
                for (int j = 0; j < tileSize; j++)
                {
                    int r = p * tileRows + j / 4, t = 4 * g + j % 4;
                    if (r >= rowCount || t >= tokenCount)
                    {
                        continue;
                    }
                    float sum = TV.Sum(tile[j]);
                    T* row = rows + (long)r * n;
                    float* xt = tokens[t];
                    for (int i = vectorEnd; i < n; i++)
                    {
                        sum = MathF.FusedMultiplyAdd(TW.LoadOne(row + i), xt[i], sum);
                    }
                    output[(long)t * tokenStride + (long)r * rowStride] = sum;
                }
            }
        }
    }

    /// <summary>
    /// One chunk of <see cref="DotBlock"/>: every tile of rows (row r at rows + r · rowStride, this chunk's first element)
    /// against every group of up to four tokens (each from element <paramref name="k0"/>), over
    /// <paramref name="length"/> elements, into the block's accumulators.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ChunkTiles<TV, T, TW>(T* rows, long rowStride, int rowCount, float** tokens, int tokenCount, int k0, int length, TV* acc)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<T>
    {
        int tileRows = TV.TileRows, rowTiles = (rowCount + tileRows - 1) / tileRows, groups = (tokenCount + 3) / 4;
        int tileSize = 4 * tileRows;
        float** x = stackalloc float*[4];
        T** a = stackalloc T*[4];
        for (int g = 0; g < groups; g++)
        {
            int m = Math.Min(4, tokenCount - 4 * g);
            for (int i = 0; i < 4; i++)
            {
                x[i] = tokens[4 * g + Math.Min(i, m - 1)] + k0;
            }
            for (int p = 0; p < rowTiles; p++)
            {
                for (int i = 0; i < 4; i++)
                {
                    a[i] = rows + Math.Min(p * tileRows + i, rowCount - 1) * rowStride;
                }
                TV* tile = acc + (g * rowTiles + p) * tileSize;
                switch (m)
                {
                    case 1:
                        Tile<TV, T, TW, OneToken>(a, x, length, tile);
                        break;
                    case 2:
                        Tile<TV, T, TW, TwoTokens>(a, x, length, tile);
                        break;
                    case 3:
                        Tile<TV, T, TW, ThreeTokens>(a, x, length, tile);
                        break;
                    default:
                        Tile<TV, T, TW, FourTokens>(a, x, length, tile);
                        break;
                }
            }
        }
    }

    /// <summary>
    /// <see cref="ILanes{TV}.TileRows"/> rows a[r] against <typeparamref name="TM"/> tokens x[t], adding into the tile's
    /// vector accumulators: acc[4r + t] += a_r ⊙ x_t. Accumulators of absent rows and tokens are neither read nor
    /// written (the conditions are JIT-time constants).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TV, T, TW, TM>(T** a, float** x, int n, TV* acc)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<T>
        where TM : struct, ITileTokens
    {
        bool four = TV.TileRows == 4, t1 = TM.Count > 1, t2 = TM.Count > 2, t3 = TM.Count > 3;
        T* a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
        float* x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
        TV s00 = acc[0], s01 = t1 ? acc[1] : default, s02 = t2 ? acc[2] : default, s03 = t3 ? acc[3] : default;
        TV s10 = acc[4], s11 = t1 ? acc[5] : default, s12 = t2 ? acc[6] : default, s13 = t3 ? acc[7] : default;
        TV s20 = four ? acc[8] : default, s21 = four && t1 ? acc[9] : default, s22 = four && t2 ? acc[10] : default, s23 = four && t3 ? acc[11] : default;
        TV s30 = four ? acc[12] : default, s31 = four && t1 ? acc[13] : default, s32 = four && t2 ? acc[14] : default, s33 = four && t3 ? acc[15] : default;
        for (int i = 0; i < n; i += TV.Count)
        {
            TV r0 = TW.Load<TV>(a0 + i), r1 = TW.Load<TV>(a1 + i);
            TV r2 = four ? TW.Load<TV>(a2 + i) : default, r3 = four ? TW.Load<TV>(a3 + i) : default;
            TV xt = TV.Load(x0 + i);
            s00 = TV.FusedMultiplyAdd(r0, xt, s00);
            s10 = TV.FusedMultiplyAdd(r1, xt, s10);
            if (four)
            {
                s20 = TV.FusedMultiplyAdd(r2, xt, s20);
                s30 = TV.FusedMultiplyAdd(r3, xt, s30);
            }
            if (t1)
            {
                xt = TV.Load(x1 + i);
                s01 = TV.FusedMultiplyAdd(r0, xt, s01);
                s11 = TV.FusedMultiplyAdd(r1, xt, s11);
                if (four)
                {
                    s21 = TV.FusedMultiplyAdd(r2, xt, s21);
                    s31 = TV.FusedMultiplyAdd(r3, xt, s31);
                }
            }
            if (t2)
            {
                xt = TV.Load(x2 + i);
                s02 = TV.FusedMultiplyAdd(r0, xt, s02);
                s12 = TV.FusedMultiplyAdd(r1, xt, s12);
                if (four)
                {
                    s22 = TV.FusedMultiplyAdd(r2, xt, s22);
                    s32 = TV.FusedMultiplyAdd(r3, xt, s32);
                }
            }
            if (t3)
            {
                xt = TV.Load(x3 + i);
                s03 = TV.FusedMultiplyAdd(r0, xt, s03);
                s13 = TV.FusedMultiplyAdd(r1, xt, s13);
                if (four)
                {
                    s23 = TV.FusedMultiplyAdd(r2, xt, s23);
                    s33 = TV.FusedMultiplyAdd(r3, xt, s33);
                }
            }
        }
        acc[0] = s00;
        acc[4] = s10;
        if (t1)
        {
            acc[1] = s01;
            acc[5] = s11;
        }
        if (t2)
        {
            acc[2] = s02;
            acc[6] = s12;
        }
        if (t3)
        {
            acc[3] = s03;
            acc[7] = s13;
        }
        if (four)
        {
            acc[8] = s20;
            acc[12] = s30;
            if (t1)
            {
                acc[9] = s21;
                acc[13] = s31;
            }
            if (t2)
            {
                acc[10] = s22;
                acc[14] = s32;
            }
            if (t3)
            {
                acc[11] = s23;
                acc[15] = s33;
            }
        }
    }

    /// <summary>Bᵀ columns per expand panel at the width the kernels run at on this machine (<see cref="PackPanels{T}"/>).</summary>
    public static int PanelColumns => 2 * Lanes;

    /// <summary>Elements of <see cref="PackPanels{T}"/>'s layout for a rank-<paramref name="rank"/> Bᵀ of <paramref name="columns"/> columns.</summary>
    public static int PanelElements(int rank, int columns, int panelColumns) => checked((columns + panelColumns - 1) / panelColumns * rank * panelColumns);

    /// <summary>
    /// Bᵀ (row-major <c>[rank, columns]</c>) in the expand's layout: panels of <paramref name="panelColumns"/> consecutive
    /// columns (two registers' worth), each holding its rank rows one after another, so element (k, j) sits at
    /// (j / P) · rank · P + k · P + j % P, and the last panel is padded with zeros. An expand step then reads one
    /// contiguous run instead of a short piece of each of rank rows a whole row apart; in the engine's expand that
    /// measured an eighth to a third faster.
    /// </summary>
    public static void PackPanels<T>(ReadOnlySpan<T> bT, int rank, int columns, int panelColumns, Span<T> panels) where T : unmanaged
    {
        panels[..PanelElements(rank, columns, panelColumns)].Clear();
        for (int k = 0; k < rank; k++)
        {
            ReadOnlySpan<T> row = bT.Slice(k * columns, columns);
            for (int j0 = 0; j0 < columns; j0 += panelColumns)
            {
                row[j0..Math.Min(columns, j0 + panelColumns)].CopyTo(panels[((j0 / panelColumns * rank + k) * panelColumns)..]);
            }
        }
    }

    /// <summary>
    /// The expand for <paramref name="tokens"/> (1 to <see cref="MaxExpandTokens"/>; <see cref="ExpandTokens"/> at full speed) of one expert over columns [j0, j1):
    /// y_i[j] += Σ_k v_i[k] · bT[k, j] for a rank-r expert with Bᵀ in panels of <see cref="PanelColumns"/>
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
                Expand<TV, float, Float32Weights>((float*)panels, rank, tokens, v, y, j0, j1);
                break;
            case WeightPrecision.BFloat16:
                Expand<TV, ushort, BFloat16Weights>((ushort*)panels, rank, tokens, v, y, j0, j1);
                break;
            default:
                Expand<TV, ushort, Float16Weights>((ushort*)panels, rank, tokens, v, y, j0, j1);
                break;
        }
    }

    private static void Expand<TV, T, TW>(T* panels, int rank, int tokens, float** v, float** y, int j0, int j1)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<T>
    {
        switch (tokens)
        {
            case 1:
                Expand<TV, T, TW, OneToken>(panels, rank, v, y, j0, j1);
                break;
            case 2:
                Expand<TV, T, TW, TwoTokens>(panels, rank, v, y, j0, j1);
                break;
            case 3:
                Expand<TV, T, TW, ThreeTokens>(panels, rank, v, y, j0, j1);
                break;
            case 4:
                Expand<TV, T, TW, FourTokens>(panels, rank, v, y, j0, j1);
                break;
            case 5:
                Expand<TV, T, TW, FiveTokens>(panels, rank, v, y, j0, j1);
                break;
            case 6:
                Expand<TV, T, TW, SixTokens>(panels, rank, v, y, j0, j1);
                break;
            case 7:
                Expand<TV, T, TW, SevenTokens>(panels, rank, v, y, j0, j1);
                break;
            case 8:
                Expand<TV, T, TW, EightTokens>(panels, rank, v, y, j0, j1);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"an expand call takes 1 to {MaxExpandTokens} tokens");
        }
    }

    /// <summary>
    /// One panel (two vectors of columns) per step: up to sixteen accumulators (eight tokens), and one token's two chains
    /// still outrun memory. Columns before the first whole panel and after the last run through <see cref="Columns"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Expand<TV, T, TW, TM>(T* panels, int rank, float** v, float** y, int j0, int j1)
        where TV : unmanaged, ILanes<TV>
        where T : unmanaged
        where TW : struct, IWeights<T>
        where TM : struct, ITileTokens
    {
        int w = TV.Count, width = 2 * w;
        bool t1 = TM.Count > 1, t2 = TM.Count > 2, t3 = TM.Count > 3, t4 = TM.Count > 4, t5 = TM.Count > 5, t6 = TM.Count > 6, t7 = TM.Count > 7;
        float* v0 = v[0], v1 = t1 ? v[1] : null, v2 = t2 ? v[2] : null, v3 = t3 ? v[3] : null;
        float* v4 = t4 ? v[4] : null, v5 = t5 ? v[5] : null, v6 = t6 ? v[6] : null, v7 = t7 ? v[7] : null;
        int j = Math.Min(j1, (j0 + width - 1) / width * width);
        Columns<T, TW>(panels, rank, width, TM.Count, v, y, j0, j);
        for (; j <= j1 - width; j += width)
        {
            TV a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
            TV a4 = default, b4 = default, a5 = default, b5 = default, a6 = default, b6 = default, a7 = default, b7 = default;
            T* col = panels + (long)(j / width) * rank * width;
            for (int k = 0; k < rank; k++, col += width)
            {
                TV lo = TW.Load<TV>(col), hi = TW.Load<TV>(col + w);
                TV c = TV.Broadcast(v0[k]);
                a0 = TV.FusedMultiplyAdd(lo, c, a0);
                b0 = TV.FusedMultiplyAdd(hi, c, b0);
                if (t1)
                {
                    c = TV.Broadcast(v1[k]);
                    a1 = TV.FusedMultiplyAdd(lo, c, a1);
                    b1 = TV.FusedMultiplyAdd(hi, c, b1);
                }
                if (t2)
                {
                    c = TV.Broadcast(v2[k]);
                    a2 = TV.FusedMultiplyAdd(lo, c, a2);
                    b2 = TV.FusedMultiplyAdd(hi, c, b2);
                }
                if (t3)
                {
                    c = TV.Broadcast(v3[k]);
                    a3 = TV.FusedMultiplyAdd(lo, c, a3);
                    b3 = TV.FusedMultiplyAdd(hi, c, b3);
                }
                if (t4)
                {
                    c = TV.Broadcast(v4[k]);
                    a4 = TV.FusedMultiplyAdd(lo, c, a4);
                    b4 = TV.FusedMultiplyAdd(hi, c, b4);
                }
                if (t5)
                {
                    c = TV.Broadcast(v5[k]);
                    a5 = TV.FusedMultiplyAdd(lo, c, a5);
                    b5 = TV.FusedMultiplyAdd(hi, c, b5);
                }
                if (t6)
                {
                    c = TV.Broadcast(v6[k]);
                    a6 = TV.FusedMultiplyAdd(lo, c, a6);
                    b6 = TV.FusedMultiplyAdd(hi, c, b6);
                }
                if (t7)
                {
                    c = TV.Broadcast(v7[k]);
                    a7 = TV.FusedMultiplyAdd(lo, c, a7);
                    b7 = TV.FusedMultiplyAdd(hi, c, b7);
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
        Columns<T, TW>(panels, rank, width, TM.Count, v, y, j, j1);
    }

    /// <summary>Columns [j0, j1) of the expand one by one, each token's chain in the same order as in the vector loop.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Columns<T, TW>(T* panels, int rank, int width, int tokens, float** v, float** y, int j0, int j1)
        where T : unmanaged
        where TW : struct, IWeights<T>
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
        TV.Store(TV.Add(TV.Load(y), lo), y);
        TV.Store(TV.Add(TV.Load(y + w), hi), y + w);
    }
}

/// <summary>The number of tokens (1 to 8; the shrink's dot tiles take up to 4) a kernel tile computes, as a JIT-time constant.</summary>
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
