using System.Numerics;
using System.Runtime.CompilerServices;

namespace MoErging.Execution.Cpu;

/// <summary>
/// SIMD building blocks of the CPU backend. Each reads its weight row once for several tokens
/// (register blocking), because the weights are what must stream from memory. The expand kernels sum an
/// expert's rank terms from zero with fused multiply-adds, in the same order on every path (vector, scalar
/// tail, one token or four), and add the sum to y once: y is rounded once per expert, not once per rank
/// term, and a result never depends on how the work was split.
/// Kernels skip tiered compilation: a latency-critical host must get SIMD code from the first call.
/// The weight operand (factor and prototype rows) is read through <see cref="IWeights{T}"/>, so one body serves
/// float32, bfloat16 and float16 storage: only the load differs, widened exactly in registers, and the sums run in
/// the same order, so 16-bit weights give the float32 result on their widened values bit for bit. The entry points
/// taking a <see cref="WeightPrecision"/> pick the specialisation once per call.
/// </summary>
internal static unsafe class CpuKernels
{
    // A JIT-time constant. A static readonly field would not be one in AggressiveOptimization methods
    // (compiled before the class initialiser runs), and the loops then spill every accumulator: 4× slower.
    private static int W => Vector<float>.Count;

    /// <summary>Reduction chunk: a block's operand rows stay in L1 while one chunk of them is summed.</summary>
    public const int Chunk = 256;

    /// <summary>Largest rows × tokens block <see cref="DotBlock"/> takes (its vector accumulators live on the stack).</summary>
    public const int MaxBlock = 16 * 64;

    /// <summary>
    /// out[t · tokenStride + r · rowStride] = rows[r] · tokens[t] over n elements, for <paramref name="rowCount"/>
    /// consecutive rows (stride n) and <paramref name="tokenCount"/> token rows given by address; the shared
    /// core of router scoring (prototypes × tokens) and of the shrink step (A rows × an expert's tokens).
    /// The reduction runs in chunks of <see cref="Chunk"/>; within a chunk, 2-row × 4-token register tiles
    /// read their operands from L1 and carry vector partial sums to the next chunk, so each dot product is
    /// reduced horizontally once. A short last group repeats a token, an odd last row repeats a row; the
    /// repeats are computed and not stored.
    /// </summary>
    public static void DotBlock(WeightPrecision precision, void* rows, int rowCount, float** tokens, int tokenCount, int n, float* output, int tokenStride, int rowStride)
    {
        switch (precision)
        {
            case WeightPrecision.Float32:
                DotBlock<float, Float32Weights>((float*)rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
                break;
            case WeightPrecision.BFloat16:
                DotBlock<ushort, BFloat16Weights>((ushort*)rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
                break;
            default:
                DotBlock<ushort, Float16Weights>((ushort*)rows, rowCount, tokens, tokenCount, n, output, tokenStride, rowStride);
                break;
        }
    }

    /// <summary>
    /// Address of row <paramref name="row"/> of a row-major matrix of <paramref name="n"/> columns held at
    /// <paramref name="precision"/>.
    /// </summary>
    public static void* Row(WeightPrecision precision, void* rows, long row, int n) =>
        (byte*)rows + row * n * (precision == WeightPrecision.Float32 ? sizeof(float) : sizeof(ushort));

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotBlock<T, TW>(T* rows, int rowCount, float** tokens, int tokenCount, int n, float* output, int tokenStride, int rowStride)
        where T : unmanaged
        where TW : struct, IWeights<T>
    {
        int pairs = (rowCount + 1) / 2, groups = (tokenCount + 3) / 4;
        if (pairs * groups * 8 > MaxBlock)
        {
            throw new ArgumentOutOfRangeException(nameof(rowCount), "block too large for the stack accumulators");
        }
        Vector<float>* acc = stackalloc Vector<float>[pairs * groups * 8];
        new Span<Vector<float>>(acc, pairs * groups * 8).Clear();
        float** x = stackalloc float*[4];
        int vectorEnd = n - n % W;
        for (int k0 = 0; k0 < vectorEnd; k0 += Chunk)
        {
            int length = Math.Min(Chunk, vectorEnd - k0);
            for (int g = 0; g < groups; g++)
            {
                for (int i = 0; i < 4; i++)
                {
                    x[i] = tokens[Math.Min(4 * g + i, tokenCount - 1)] + k0;
                }
                for (int p = 0; p < pairs; p++)
                {
                    T* a0 = rows + (long)(2 * p) * n + k0;
                    T* a1 = 2 * p + 1 < rowCount ? a0 + n : a0;
                    Dot2x4<T, TW>(a0, a1, x[0], x[1], x[2], x[3], length, acc + (g * pairs + p) * 8);
                }
            }
        }
        for (int g = 0; g < groups; g++)
        {
            for (int p = 0; p < pairs; p++)
            {
                Vector<float>* tile = acc + (g * pairs + p) * 8;
                for (int j = 0; j < 8; j++)
                {
                    int r = 2 * p + j / 4, t = 4 * g + j % 4;
                    if (r >= rowCount || t >= tokenCount)
                    {
                        continue;
                    }
                    float sum = Vector.Sum(tile[j]);
                    T* a = rows + (long)r * n;
                    float* xt = tokens[t];
                    for (int i = vectorEnd; i < n; i++)
                    {
                        sum = MathF.FusedMultiplyAdd(TW.LoadOne(a + i), xt[i], sum);
                    }
                    output[(long)t * tokenStride + (long)r * rowStride] = sum;
                }
            }
        }
    }

    /// <summary>Two rows against four tokens, adding into the tile's eight vector accumulators: acc[4r + t] += a_r ⊙ x_t.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot2x4<T, TW>(T* a0, T* a1, float* x0, float* x1, float* x2, float* x3, int n, Vector<float>* acc)
        where T : unmanaged
        where TW : struct, IWeights<T>
    {
        Vector<float> s00 = acc[0], s01 = acc[1], s02 = acc[2], s03 = acc[3];
        Vector<float> s10 = acc[4], s11 = acc[5], s12 = acc[6], s13 = acc[7];
        for (int i = 0; i < n; i += W)
        {
            Vector<float> va = TW.Load(a0 + i), vb = TW.Load(a1 + i), vx = Load(x0 + i);
            s00 = Vector.FusedMultiplyAdd(va, vx, s00);
            s10 = Vector.FusedMultiplyAdd(vb, vx, s10);
            vx = Load(x1 + i);
            s01 = Vector.FusedMultiplyAdd(va, vx, s01);
            s11 = Vector.FusedMultiplyAdd(vb, vx, s11);
            vx = Load(x2 + i);
            s02 = Vector.FusedMultiplyAdd(va, vx, s02);
            s12 = Vector.FusedMultiplyAdd(vb, vx, s12);
            vx = Load(x3 + i);
            s03 = Vector.FusedMultiplyAdd(va, vx, s03);
            s13 = Vector.FusedMultiplyAdd(vb, vx, s13);
        }
        acc[0] = s00;
        acc[1] = s01;
        acc[2] = s02;
        acc[3] = s03;
        acc[4] = s10;
        acc[5] = s11;
        acc[6] = s12;
        acc[7] = s13;
    }

    /// <summary>
    /// Four tokens' expand over columns [j0, j1): y_i[j] += Σ_k v_i[k] · bT[k, j] for a rank-r expert with
    /// Bᵀ row-major <c>[r, stride]</c>. Each Bᵀ element is loaded once for the four tokens.
    /// </summary>
    public static void Expand4(WeightPrecision precision, void* bT, int stride, int rank, float* v0, float* v1, float* v2, float* v3,
        float* y0, float* y1, float* y2, float* y3, int j0, int j1)
    {
        switch (precision)
        {
            case WeightPrecision.Float32:
                Expand4<float, Float32Weights>((float*)bT, stride, rank, v0, v1, v2, v3, y0, y1, y2, y3, j0, j1);
                break;
            case WeightPrecision.BFloat16:
                Expand4<ushort, BFloat16Weights>((ushort*)bT, stride, rank, v0, v1, v2, v3, y0, y1, y2, y3, j0, j1);
                break;
            default:
                Expand4<ushort, Float16Weights>((ushort*)bT, stride, rank, v0, v1, v2, v3, y0, y1, y2, y3, j0, j1);
                break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Expand4<T, TW>(T* bT, int stride, int rank, float* v0, float* v1, float* v2, float* v3,
        float* y0, float* y1, float* y2, float* y3, int j0, int j1)
        where T : unmanaged
        where TW : struct, IWeights<T>
    {
        int j = j0;
        for (; j <= j1 - 2 * W; j += 2 * W)
        {
            Vector<float> a0 = default, b0 = default, a1 = default, b1 = default;
            Vector<float> a2 = default, b2 = default, a3 = default, b3 = default;
            T* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                Vector<float> lo = TW.Load(col), hi = TW.Load(col + W);
                var c = new Vector<float>(v0[k]);
                a0 = Vector.FusedMultiplyAdd(lo, c, a0);
                b0 = Vector.FusedMultiplyAdd(hi, c, b0);
                c = new Vector<float>(v1[k]);
                a1 = Vector.FusedMultiplyAdd(lo, c, a1);
                b1 = Vector.FusedMultiplyAdd(hi, c, b1);
                c = new Vector<float>(v2[k]);
                a2 = Vector.FusedMultiplyAdd(lo, c, a2);
                b2 = Vector.FusedMultiplyAdd(hi, c, b2);
                c = new Vector<float>(v3[k]);
                a3 = Vector.FusedMultiplyAdd(lo, c, a3);
                b3 = Vector.FusedMultiplyAdd(hi, c, b3);
            }
            Store(Load(y0 + j) + a0, y0 + j);
            Store(Load(y0 + j + W) + b0, y0 + j + W);
            Store(Load(y1 + j) + a1, y1 + j);
            Store(Load(y1 + j + W) + b1, y1 + j + W);
            Store(Load(y2 + j) + a2, y2 + j);
            Store(Load(y2 + j + W) + b2, y2 + j + W);
            Store(Load(y3 + j) + a3, y3 + j);
            Store(Load(y3 + j + W) + b3, y3 + j + W);
        }
        for (; j < j1; j++)
        {
            float s0 = 0f, s1 = 0f, s2 = 0f, s3 = 0f;
            T* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                float b = TW.LoadOne(col);
                s0 = MathF.FusedMultiplyAdd(b, v0[k], s0);
                s1 = MathF.FusedMultiplyAdd(b, v1[k], s1);
                s2 = MathF.FusedMultiplyAdd(b, v2[k], s2);
                s3 = MathF.FusedMultiplyAdd(b, v3[k], s3);
            }
            y0[j] += s0;
            y1[j] += s1;
            y2[j] += s2;
            y3[j] += s3;
        }
    }

    /// <summary>One token's expand over columns [j0, j1): y[j] += Σ_k v[k] · bT[k, j].</summary>
    public static void Expand1(WeightPrecision precision, void* bT, int stride, int rank, float* v, float* y, int j0, int j1)
    {
        switch (precision)
        {
            case WeightPrecision.Float32:
                Expand1<float, Float32Weights>((float*)bT, stride, rank, v, y, j0, j1);
                break;
            case WeightPrecision.BFloat16:
                Expand1<ushort, BFloat16Weights>((ushort*)bT, stride, rank, v, y, j0, j1);
                break;
            default:
                Expand1<ushort, Float16Weights>((ushort*)bT, stride, rank, v, y, j0, j1);
                break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Expand1<T, TW>(T* bT, int stride, int rank, float* v, float* y, int j0, int j1)
        where T : unmanaged
        where TW : struct, IWeights<T>
    {
        int j = j0;
        for (; j <= j1 - 4 * W; j += 4 * W)
        {
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
            T* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                var c = new Vector<float>(v[k]);
                a0 = Vector.FusedMultiplyAdd(TW.Load(col), c, a0);
                a1 = Vector.FusedMultiplyAdd(TW.Load(col + W), c, a1);
                a2 = Vector.FusedMultiplyAdd(TW.Load(col + 2 * W), c, a2);
                a3 = Vector.FusedMultiplyAdd(TW.Load(col + 3 * W), c, a3);
            }
            Store(Load(y + j) + a0, y + j);
            Store(Load(y + j + W) + a1, y + j + W);
            Store(Load(y + j + 2 * W) + a2, y + j + 2 * W);
            Store(Load(y + j + 3 * W) + a3, y + j + 3 * W);
        }
        for (; j <= j1 - W; j += W)
        {
            Vector<float> a = default;
            T* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                a = Vector.FusedMultiplyAdd(TW.Load(col), new Vector<float>(v[k]), a);
            }
            Store(Load(y + j) + a, y + j);
        }
        for (; j < j1; j++)
        {
            float s = 0f;
            T* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                s = MathF.FusedMultiplyAdd(TW.LoadOne(col), v[k], s);
            }
            y[j] += s;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<float> Load(float* p) => Unsafe.ReadUnaligned<Vector<float>>(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Vector<float> v, float* p) => Unsafe.WriteUnaligned(p, v);
}
