using System.Numerics;
using System.Runtime.CompilerServices;

namespace MoErging.Execution.Cpu;

/// <summary>
/// SIMD building blocks of the CPU backend. Each reads its weight row once for several tokens
/// (register blocking), because the weights are what must stream from memory. The expand kernels add the
/// rank terms to each output element in the same order with fused multiply-adds on every path (vector,
/// scalar tail, one token or four), so a result never depends on how the work was split.
/// </summary>
internal static unsafe class CpuKernels
{
    private static readonly int W = Vector<float>.Count;

    /// <summary>One row a against four rows x: r[i] = a · x_i over n elements.</summary>
    public static void Dot1x4(float* a, float* x0, float* x1, float* x2, float* x3, int n, float* r)
    {
        Vector<float> s0 = default, s1 = default, s2 = default, s3 = default;
        int i = 0;
        for (; i <= n - W; i += W)
        {
            Vector<float> va = Load(a + i);
            s0 = Vector.FusedMultiplyAdd(va, Load(x0 + i), s0);
            s1 = Vector.FusedMultiplyAdd(va, Load(x1 + i), s1);
            s2 = Vector.FusedMultiplyAdd(va, Load(x2 + i), s2);
            s3 = Vector.FusedMultiplyAdd(va, Load(x3 + i), s3);
        }
        float t0 = Vector.Sum(s0), t1 = Vector.Sum(s1), t2 = Vector.Sum(s2), t3 = Vector.Sum(s3);
        for (; i < n; i++)
        {
            t0 += a[i] * x0[i];
            t1 += a[i] * x1[i];
            t2 += a[i] * x2[i];
            t3 += a[i] * x3[i];
        }
        r[0] = t0;
        r[1] = t1;
        r[2] = t2;
        r[3] = t3;
    }

    /// <summary>a · x over n elements, two accumulators deep.</summary>
    public static float Dot(float* a, float* x, int n)
    {
        Vector<float> s0 = default, s1 = default;
        int i = 0;
        for (; i <= n - 2 * W; i += 2 * W)
        {
            s0 = Vector.FusedMultiplyAdd(Load(a + i), Load(x + i), s0);
            s1 = Vector.FusedMultiplyAdd(Load(a + i + W), Load(x + i + W), s1);
        }
        for (; i <= n - W; i += W)
        {
            s0 = Vector.FusedMultiplyAdd(Load(a + i), Load(x + i), s0);
        }
        float t = Vector.Sum(s0 + s1);
        for (; i < n; i++)
        {
            t += a[i] * x[i];
        }
        return t;
    }

    /// <summary>
    /// Four tokens' expand over columns [j0, j1): y_i[j] += Σ_k v_i[k] · bT[k, j] for a rank-r expert with
    /// Bᵀ row-major <c>[r, stride]</c>. Each Bᵀ element is loaded once for the four tokens.
    /// </summary>
    public static void Expand4(float* bT, int stride, int rank, float* v0, float* v1, float* v2, float* v3,
        float* y0, float* y1, float* y2, float* y3, int j0, int j1)
    {
        int j = j0;
        for (; j <= j1 - 2 * W; j += 2 * W)
        {
            Vector<float> a0 = Load(y0 + j), b0 = Load(y0 + j + W);
            Vector<float> a1 = Load(y1 + j), b1 = Load(y1 + j + W);
            Vector<float> a2 = Load(y2 + j), b2 = Load(y2 + j + W);
            Vector<float> a3 = Load(y3 + j), b3 = Load(y3 + j + W);
            float* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                Vector<float> lo = Load(col), hi = Load(col + W);
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
            Store(a0, y0 + j);
            Store(b0, y0 + j + W);
            Store(a1, y1 + j);
            Store(b1, y1 + j + W);
            Store(a2, y2 + j);
            Store(b2, y2 + j + W);
            Store(a3, y3 + j);
            Store(b3, y3 + j + W);
        }
        for (; j < j1; j++)
        {
            float s0 = y0[j], s1 = y1[j], s2 = y2[j], s3 = y3[j];
            float* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                float b = *col;
                s0 = MathF.FusedMultiplyAdd(b, v0[k], s0);
                s1 = MathF.FusedMultiplyAdd(b, v1[k], s1);
                s2 = MathF.FusedMultiplyAdd(b, v2[k], s2);
                s3 = MathF.FusedMultiplyAdd(b, v3[k], s3);
            }
            y0[j] = s0;
            y1[j] = s1;
            y2[j] = s2;
            y3[j] = s3;
        }
    }

    /// <summary>One token's expand over columns [j0, j1): y[j] += Σ_k v[k] · bT[k, j].</summary>
    public static void Expand1(float* bT, int stride, int rank, float* v, float* y, int j0, int j1)
    {
        int j = j0;
        for (; j <= j1 - 4 * W; j += 4 * W)
        {
            Vector<float> a0 = Load(y + j), a1 = Load(y + j + W), a2 = Load(y + j + 2 * W), a3 = Load(y + j + 3 * W);
            float* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                var c = new Vector<float>(v[k]);
                a0 = Vector.FusedMultiplyAdd(Load(col), c, a0);
                a1 = Vector.FusedMultiplyAdd(Load(col + W), c, a1);
                a2 = Vector.FusedMultiplyAdd(Load(col + 2 * W), c, a2);
                a3 = Vector.FusedMultiplyAdd(Load(col + 3 * W), c, a3);
            }
            Store(a0, y + j);
            Store(a1, y + j + W);
            Store(a2, y + j + 2 * W);
            Store(a3, y + j + 3 * W);
        }
        for (; j <= j1 - W; j += W)
        {
            Vector<float> a = Load(y + j);
            float* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                a = Vector.FusedMultiplyAdd(Load(col), new Vector<float>(v[k]), a);
            }
            Store(a, y + j);
        }
        for (; j < j1; j++)
        {
            float s = y[j];
            float* col = bT + j;
            for (int k = 0; k < rank; k++, col += stride)
            {
                s = MathF.FusedMultiplyAdd(*col, v[k], s);
            }
            y[j] = s;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<float> Load(float* p) => Unsafe.ReadUnaligned<Vector<float>>(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Vector<float> v, float* p) => Unsafe.WriteUnaligned(p, v);
}
