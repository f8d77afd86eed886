using System.Numerics;
using System.Numerics.Tensors;

namespace MoErging.Numerics;

/// <summary>
/// Spectral facts about a low-rank product ΔW = B A without forming it: thin QR of both factors reduces the
/// problem to a small core whose SVD gives ΔW's. All arithmetic is float64. Matrices here are column-major,
/// so A's rows are Aᵀ's columns and Bᵀ's rows are B's columns, with no transposing.
/// </summary>
/// <remarks>
/// The core SVD is exact (one-sided Jacobi to convergence) and costs O(r³) for a product of rank r, so it is
/// used while the representation is small: rank at most <see cref="ExactRankLimit"/> for a product, or
/// min(rows, columns) at most that for a dense matrix. Beyond it, the truncated SVD is found by randomized
/// subspace iteration (Halko, Martinsson and Tropp 2011, algorithm 4.4) with <see cref="Oversampling"/> extra
/// columns and <see cref="PowerIterations"/> power iterations, seeded; the result is then
/// <see cref="TruncatedSvd.IsExact"/> false: a near-optimal rank-k approximation, not the optimal one.
/// </remarks>
public static class LowRank
{
    /// <summary>Largest rank of the representation (or smaller dimension of a dense matrix) given to the exact core SVD.</summary>
    public const int ExactRankLimit = 512;

    /// <summary>Extra columns of the randomized range finder beyond the target rank.</summary>
    public const int Oversampling = 10;

    /// <summary>Power iterations (one multiply by M and one by Mᵀ each) of the randomized range finder.</summary>
    public const int PowerIterations = 4;

    /// <summary>
    /// The unit top right singular vector of ΔW = B A (length d_in), with A row-major <c>[r, d_in]</c> and
    /// Bᵀ row-major <c>[r, d_out]</c>. Its sign is fixed so the entry of largest magnitude is positive.
    /// Returns the top singular value; 0 means ΔW = 0 and the vector is undefined (left zero).
    /// </summary>
    public static double TopRightSingularVector(ReadOnlySpan<float> a, ReadOnlySpan<float> bTransposed, int rank, int inputDim, int outputDim, Span<double> destination)
    {
        if (a.Length != (long)rank * inputDim || bTransposed.Length != (long)rank * outputDim || destination.Length != inputDim)
        {
            throw new ArgumentException("factor or destination lengths do not match rank, d_in and d_out");
        }
        TruncatedSvd svd = ExactProduct(Widen(a), Widen(bTransposed), rank, inputDim, outputDim, 1);
        double top = svd.SingularValues[0];
        destination.Clear();
        if (top > 0)
        {
            svd.V.CopyTo(destination);
        }
        return top;
    }

    /// <summary>
    /// The rank-<paramref name="k"/> truncated SVD of ΔW = B A, with A row-major <c>[rank, d_in]</c> and Bᵀ
    /// row-major <c>[rank, d_out]</c> (for a merge: the stacked factors of all experts), never forming ΔW when
    /// the rank is at most <see cref="ExactRankLimit"/>: QR of Aᵀ and of B, then the SVD of the small core.
    /// Above that limit it is exact when min(d_in, d_out) is at most the limit (ΔW is formed: d_out · d_in
    /// doubles), and randomized otherwise (see <see cref="LowRank"/>), seeded by <paramref name="seed"/>.
    /// </summary>
    /// <param name="a">A, row-major <c>[rank, inputDim]</c>.</param>
    /// <param name="bTransposed">Bᵀ, row-major <c>[rank, outputDim]</c>.</param>
    /// <param name="rank">The inner dimension r of the product, at least 1.</param>
    /// <param name="inputDim">d_in, the number of columns of ΔW.</param>
    /// <param name="outputDim">d_out, the number of rows of ΔW.</param>
    /// <param name="k">The rank kept, in [1, min(d_in, d_out)].</param>
    /// <param name="seed">Seeds the random sketch when the randomized path is taken.</param>
    /// <exception cref="ArgumentException">Lengths that do not match the dimensions, or a NaN or infinite value.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A dimension below 1 or <paramref name="k"/> out of range.</exception>
    public static TruncatedSvd TruncatedSvdOfProduct(ReadOnlySpan<double> a, ReadOnlySpan<double> bTransposed, int rank, int inputDim, int outputDim, int k, ulong seed = 0)
    {
        CheckDimensions(rank, inputDim, outputDim, k);
        CheckFactorLengths(a.Length, bTransposed.Length, rank, inputDim, outputDim);
        return ProductSvd(a.ToArray(), bTransposed.ToArray(), rank, inputDim, outputDim, k, seed, progress: null);
    }

    /// <summary>
    /// As the public overload, on arrays the caller hands over (they are not copied, and may be modified);
    /// <paramref name="progress"/> gets the fraction done after each product on the randomized path, the one that can take long.
    /// </summary>
    internal static TruncatedSvd TruncatedSvdOfProductWithoutCopy(double[] a, double[] bTransposed, int rank, int inputDim, int outputDim, int k, ulong seed,
        Action<double>? progress)
    {
        CheckDimensions(rank, inputDim, outputDim, k);
        CheckFactorLengths(a.Length, bTransposed.Length, rank, inputDim, outputDim);
        return ProductSvd(a, bTransposed, rank, inputDim, outputDim, k, seed, progress);
    }

    private static void CheckFactorLengths(int aLength, int bLength, int rank, int inputDim, int outputDim)
    {
        if (aLength != (long)rank * inputDim || bLength != (long)rank * outputDim)
        {
            throw new ArgumentException($"A must hold rank × d_in = {rank} × {inputDim} values and Bᵀ rank × d_out = {rank} × {outputDim}; got {aLength} and {bLength}");
        }
    }

    private static TruncatedSvd ProductSvd(double[] a, double[] bTransposed, int rank, int inputDim, int outputDim, int k, ulong seed, Action<double>? progress)
    {
        if (rank <= ExactRankLimit)
        {
            return ExactProduct(a, bTransposed, rank, inputDim, outputDim, k);
        }
        if (Math.Min(inputDim, outputDim) <= ExactRankLimit)
        {
            // ΔW = B A, row-major [d_out, d_in]: row o is Σ_r Bᵀ[r, o] A_r.
            double[] dense = MultiplyTransposed(bTransposed, rank, outputDim, a, inputDim);
            return TruncatedSvdOfDense(dense, outputDim, inputDim, k, seed, progress);
        }
        return Randomized(
            x => MultiplyTransposed(bTransposed, rank, outputDim, Multiply(a, rank, inputDim, x, x.Length / inputDim), x.Length / inputDim),
            y => MultiplyTransposed(a, rank, inputDim, Multiply(bTransposed, rank, outputDim, y, y.Length / outputDim), y.Length / outputDim),
            inputDim, outputDim, k, seed, progress);
    }

    /// <summary>
    /// The rank-<paramref name="k"/> truncated SVD of a dense matrix M, row-major <c>[rows, columns]</c> (for a merge:
    /// ΔW <c>[d_out, d_in]</c>). Exact when min(rows, columns) is at most <see cref="ExactRankLimit"/>, randomized
    /// otherwise (see <see cref="LowRank"/>), seeded by <paramref name="seed"/>. <paramref name="matrix"/> is not modified.
    /// </summary>
    /// <exception cref="ArgumentException">A length that does not match the dimensions, or a NaN or infinite value.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A dimension below 1 or <paramref name="k"/> out of range.</exception>
    public static TruncatedSvd TruncatedSvdOfDense(double[] matrix, int rows, int columns, int k, ulong seed = 0) =>
        TruncatedSvdOfDense(matrix, rows, columns, k, seed, progress: null);

    /// <summary>As the public overload, reporting the fraction done after each product on the randomized path.</summary>
    internal static TruncatedSvd TruncatedSvdOfDense(double[] matrix, int rows, int columns, int k, ulong seed, Action<double>? progress)
    {
        ArgumentNullException.ThrowIfNull(matrix);
        CheckDimensions(1, columns, rows, k);
        if (matrix.Length != (long)rows * columns)
        {
            throw new ArgumentException($"the matrix must hold rows × columns = {rows} × {columns} values, got {matrix.Length}", nameof(matrix));
        }
        if (rows <= ExactRankLimit && rows <= columns)
        {
            // M = I · M: Bᵀ = I [rows, rows], A = M [rows, columns].
            return ExactProduct((double[])matrix.Clone(), Identity(rows), rows, columns, rows, k);
        }
        if (columns <= ExactRankLimit)
        {
            // M = Mᵀᵀ · I: Bᵀ = Mᵀ [columns, rows], A = I [columns, columns].
            return ExactProduct(Identity(columns), Transpose(matrix, rows, columns), columns, columns, rows, k);
        }
        return Randomized(
            x => Multiply(matrix, rows, columns, x, x.Length / columns),
            y => MultiplyTransposed(matrix, rows, columns, y, y.Length / rows),
            columns, rows, k, seed, progress);
    }

    private static void CheckDimensions(int rank, int inputDim, int outputDim, int k)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rank, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(inputDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(outputDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(k, Math.Min(inputDim, outputDim));
    }

    /// <summary>
    /// The exact SVD of B A through the core R_B R_Aᵀ, truncated to k components sorted by singular value
    /// (ties: the lower core index first). Components beyond the representation's rank have σ = 0 and zero vectors.
    /// </summary>
    private static TruncatedSvd ExactProduct(double[] a, double[] bTransposed, int rank, int n, int m, int k, bool exact = true)
    {
        // Every route (exact, from a dense matrix, randomized) ends here; the Jacobi rotations cannot take NaN.
        if (!TensorPrimitives.IsFiniteAll<double>(a) || !TensorPrimitives.IsFiniteAll<double>(bTransposed))
        {
            throw new ArgumentException("the input holds a NaN or infinite value, so its SVD is undefined");
        }
        // ΔW = B A = (Q_B R_B)(Q_A R_A)ᵀ = Q_B (R_B R_Aᵀ) Q_Aᵀ, from QR of Aᵀ [n, r] and of B [m, r].
        var (qa, ra, qaCols) = ThinQr(a, n, rank);
        var (qb, rb, qbCols) = ThinQr(bTransposed, m, rank);
        // core = R_B R_Aᵀ : [qbCols, qaCols], column-major; R_X is [q, r] column-major.
        var core = new double[qbCols * qaCols];
        for (int j = 0; j < qaCols; j++)
        {
            for (int i = 0; i < qbCols; i++)
            {
                double s = 0;
                for (int r = 0; r < rank; r++)
                {
                    s += rb[r * qbCols + i] * ra[r * qaCols + j];
                }
                core[j * qbCols + i] = s;
            }
        }
        var (sigma, coreUSigma, coreV) = JacobiSvd(core, qbCols, qaCols);
        int[] order = [.. Enumerable.Range(0, qaCols).OrderByDescending(j => sigma[j])]; // stable: ties keep index order

        var values = new double[k];
        var u = new double[(long)k * m];
        var v = new double[(long)k * n];
        for (int c = 0; c < Math.Min(k, qaCols); c++)
        {
            int j = order[c];
            values[c] = sigma[j];
            if (sigma[j] == 0)
            {
                break; // the rest are 0 too: their vectors stay zero
            }
            Span<double> vc = v.AsSpan(c * n, n), uc = u.AsSpan(c * m, m);
            Combine(qa, n, coreV.AsSpan(j * qaCols, qaCols), vc);          // v = Q_A v_core
            Combine(qb, m, coreUSigma.AsSpan(j * qbCols, qbCols), uc);     // σ u = Q_B (core v_core)
            double sign = vc[TensorPrimitives.IndexOfMaxMagnitude<double>(vc)] < 0 ? -1 : 1;
            TensorPrimitives.Multiply(vc, sign, vc);
            TensorPrimitives.Multiply(uc, sign / sigma[j], uc);
        }
        return new TruncatedSvd(values, u, v, m, n, k, exact);
    }

    /// <summary>destination = Σ_j c_j · column j of the column-major <c>[rows, c.Length]</c> matrix q.</summary>
    private static void Combine(double[] q, int rows, ReadOnlySpan<double> c, Span<double> destination)
    {
        destination.Clear();
        for (int j = 0; j < c.Length; j++)
        {
            if (c[j] != 0)
            {
                TensorPrimitives.MultiplyAdd(q.AsSpan(j * rows, rows), c[j], destination, destination);
            }
        }
    }

    /// <summary>
    /// Randomized subspace iteration for an operator M <c>[m, n]</c> given by its products with column-major
    /// blocks: <paramref name="apply"/> maps X <c>[n, l]</c> to M X <c>[m, l]</c>, <paramref name="applyTransposed"/>
    /// maps Y <c>[m, l]</c> to Mᵀ Y <c>[n, l]</c>. M ≈ Q (Mᵀ Q)ᵀ, whose exact SVD (rank l) gives the result.
    /// </summary>
    private static TruncatedSvd Randomized(Func<double[], double[]> apply, Func<double[], double[]> applyTransposed, int n, int m, int k, ulong seed,
        Action<double>? progress)
    {
        // The products with M are the cost: 2 + 2 · PowerIterations of them.
        int products = 0;
        double[] Step(double[] result)
        {
            progress?.Invoke(++products / (2.0 + 2 * PowerIterations));
            return result;
        }
        int l = Math.Min(k + Oversampling, Math.Min(m, n));
        // Gaussian sketch Ω [n, l] by Box-Muller: entry e of Ω uses draws 2e and 2e + 1 of the seed's stream.
        var omega = new double[(long)n * l];
        for (long e = 0; e < omega.Length; e++)
        {
            double u1 = 1 - SeededRandom.Uniform(seed, 2 * e), u2 = SeededRandom.Uniform(seed, 2 * e + 1);
            omega[e] = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
        }
        double[] q = ThinQr(Step(apply(omega)), m, l).Q;
        for (int i = 0; i < PowerIterations; i++)
        {
            double[] z = ThinQr(Step(applyTransposed(q)), n, l).Q;
            q = ThinQr(Step(apply(z)), m, l).Q;
        }
        double[] qtM = Step(applyTransposed(q)); // [n, l] column-major = row-major (Qᵀ M) [l, n]
        // M ≈ Q (Qᵀ M): Bᵀ = Qᵀ (row-major [l, m] is Q column-major), A = Qᵀ M.
        return ExactProduct(qtM, q, l, n, m, k, exact: false);
    }

    /// <summary>M X for M row-major <c>[p, q]</c> and X column-major <c>[q, l]</c>: column-major <c>[p, l]</c>.</summary>
    private static double[] Multiply(double[] matrix, int p, int q, double[] x, int l)
    {
        var result = new double[(long)p * l];
        Parallel.For(0, (p + 63) / 64, block =>
        {
            for (int i = block * 64; i < Math.Min(p, block * 64 + 64); i++)
            {
                ReadOnlySpan<double> row = matrix.AsSpan(i * q, q);
                for (int c = 0; c < l; c++)
                {
                    result[(long)c * p + i] = TensorPrimitives.Dot(row, x.AsSpan(c * q, q));
                }
            }
        });
        return result;
    }

    /// <summary>Mᵀ Y for M row-major <c>[p, q]</c> and Y column-major <c>[p, l]</c>: column-major <c>[q, l]</c>.</summary>
    private static double[] MultiplyTransposed(double[] matrix, int p, int q, double[] y, int l)
    {
        // Each worker owns a slab of M's columns, so M is read once and the result slab stays in cache.
        const int slab = 256;
        var result = new double[(long)q * l];
        Parallel.For(0, (q + slab - 1) / slab, block =>
        {
            int start = block * slab, width = Math.Min(slab, q - start);
            for (int i = 0; i < p; i++)
            {
                ReadOnlySpan<double> row = matrix.AsSpan(i * q + start, width);
                for (int c = 0; c < l; c++)
                {
                    double coefficient = y[(long)c * p + i];
                    if (coefficient != 0)
                    {
                        Span<double> target = result.AsSpan(c * q + start, width);
                        TensorPrimitives.MultiplyAdd(row, coefficient, target, target);
                    }
                }
            }
        });
        return result;
    }

    private static double[] Identity(int size)
    {
        var identity = new double[(long)size * size];
        for (int i = 0; i < size; i++)
        {
            identity[(long)i * size + i] = 1;
        }
        return identity;
    }

    private static double[] Transpose(double[] matrix, int rows, int columns)
    {
        var transposed = new double[matrix.Length];
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < columns; j++)
            {
                transposed[(long)j * rows + i] = matrix[(long)i * columns + j];
            }
        }
        return transposed;
    }

    private static double[] Widen(ReadOnlySpan<float> values)
    {
        var wide = new double[values.Length];
        TensorPrimitives.ConvertTruncating(values, wide.AsSpan()); // float → double is exact
        return wide;
    }

    /// <summary>
    /// Householder thin QR of a column-major <c>[rows, cols]</c> matrix: Q <c>[rows, q]</c> with orthonormal
    /// columns and R <c>[q, cols]</c> upper trapezoidal, both column-major, q = min(rows, cols). The input is not modified.
    /// </summary>
    internal static (double[] Q, double[] R, int QCols) ThinQr(double[] m, int rows, int cols)
    {
        int q = Math.Min(rows, cols);
        var work = (double[])m.Clone();
        var reflectors = new double[q][];
        for (int k = 0; k < q; k++)
        {
            // Reflector v (unit) with (I - 2vvᵀ) column_k = alpha e_k.
            Span<double> column = work.AsSpan(k * rows + k, rows - k);
            double norm = Math.Sqrt(Dot(column, column));
            var v = new double[rows - k];
            reflectors[k] = v;
            if (norm == 0)
            {
                continue;
            }
            double alpha = column[0] >= 0 ? -norm : norm;
            column.CopyTo(v);
            v[0] -= alpha;
            double vNorm = Math.Sqrt(Dot(v, v));
            for (int i = 0; i < v.Length; i++)
            {
                v[i] /= vNorm;
            }
            for (int j = k; j < cols; j++)
            {
                Reflect(v, work.AsSpan(j * rows + k, rows - k));
            }
        }
        var r = new double[q * cols];
        for (int j = 0; j < cols; j++)
        {
            for (int i = 0; i <= Math.Min(j, q - 1); i++)
            {
                r[j * q + i] = work[j * rows + i];
            }
        }
        // Q = H_0 H_1 ... H_{q-1} applied to the first q columns of the identity.
        var qm = new double[(long)rows * q];
        for (int j = 0; j < q; j++)
        {
            qm[j * rows + j] = 1;
        }
        for (int k = q - 1; k >= 0; k--)
        {
            for (int j = 0; j < q; j++)
            {
                Reflect(reflectors[k], qm.AsSpan(j * rows + k, rows - k));
            }
        }
        return (qm, r, q);
    }

    /// <summary>x -= 2 v (v · x) for a unit (or zero) reflector v.</summary>
    private static void Reflect(ReadOnlySpan<double> v, Span<double> x)
    {
        double dot = 2 * Dot(v, x);
        if (dot != 0)
        {
            TensorPrimitives.MultiplyAdd(v, -dot, x, x);
        }
    }

    private static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b) => TensorPrimitives.Dot(a, b);

    /// <summary>
    /// One-sided (Hestenes) Jacobi SVD of a small column-major <c>[rows, cols]</c> matrix M: returns the singular
    /// values (one per column, unsorted), M V (column-major <c>[rows, cols]</c>: column j is σ_j u_j) and V
    /// <c>[cols, cols]</c> (column-major) whose columns are the right singular vectors.
    /// </summary>
    internal static (double[] Sigma, double[] USigma, double[] V) JacobiSvd(double[] m, int rows, int cols)
    {
        var u = (double[])m.Clone();
        var v = new double[cols * cols];
        for (int i = 0; i < cols; i++)
        {
            v[i * cols + i] = 1;
        }
        for (int sweep = 0; sweep < 60; sweep++)
        {
            bool rotated = false;
            for (int p = 0; p < cols - 1; p++)
            {
                for (int q = p + 1; q < cols; q++)
                {
                    Span<double> up = u.AsSpan(p * rows, rows), uq = u.AsSpan(q * rows, rows);
                    double alpha = Dot(up, up), beta = Dot(uq, uq), gamma = Dot(up, uq);
                    if (gamma == 0 || Math.Abs(gamma) <= 1e-15 * Math.Sqrt(alpha * beta))
                    {
                        continue;
                    }
                    rotated = true;
                    double zeta = (beta - alpha) / (2 * gamma);
                    double t = zeta == 0 ? 1 : Math.Sign(zeta) / (Math.Abs(zeta) + Math.Sqrt(1 + zeta * zeta));
                    double c = 1 / Math.Sqrt(1 + t * t), s = c * t;
                    Rotate(up, uq, c, s);
                    Rotate(v.AsSpan(p * cols, cols), v.AsSpan(q * cols, cols), c, s);
                }
            }
            if (!rotated)
            {
                break;
            }
        }
        var sigma = new double[cols];
        for (int j = 0; j < cols; j++)
        {
            Span<double> column = u.AsSpan(j * rows, rows);
            sigma[j] = Math.Sqrt(Dot(column, column));
        }
        return (sigma, u, v);
    }

    /// <summary>(p, q) ← (c p - s q, s p + c q), vectorized; the same arithmetic per element either way.</summary>
    private static void Rotate(Span<double> p, Span<double> q, double c, double s)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var vc = new Vector<double>(c);
            var vs = new Vector<double>(s);
            for (; i <= p.Length - Vector<double>.Count; i += Vector<double>.Count)
            {
                var a = new Vector<double>(p[i..]);
                var b = new Vector<double>(q[i..]);
                (vc * a - vs * b).CopyTo(p[i..]);
                (vs * a + vc * b).CopyTo(q[i..]);
            }
        }
        for (; i < p.Length; i++)
        {
            double a = p[i], b = q[i];
            p[i] = c * a - s * b;
            q[i] = s * a + c * b;
        }
    }
}

/// <summary>
/// A rank-k truncated SVD M ≈ U Σ Vᵀ of an <c>[m, n]</c> matrix (ΔW: m = d_out, n = d_in), with singular values
/// in descending order. U and V are column-major, so column j is contiguous: U is row-major Uᵀ <c>[k, m]</c>
/// and V row-major Vᵀ <c>[k, n]</c>, the layouts of LoRA's Bᵀ and A. Each pair (u_j, v_j) has its sign fixed so
/// that v_j's entry of largest magnitude is positive. Components with σ = 0 have zero vectors.
/// </summary>
public sealed class TruncatedSvd
{
    private readonly double[] _sigma;
    private readonly double[] _u;
    private readonly double[] _v;

    internal TruncatedSvd(double[] sigma, double[] u, double[] v, int rows, int columns, int rank, bool exact)
    {
        _sigma = sigma;
        _u = u;
        _v = v;
        Rows = rows;
        Columns = columns;
        Rank = rank;
        IsExact = exact;
    }

    /// <summary>m: the rows of M (d_out).</summary>
    public int Rows { get; }

    /// <summary>n: the columns of M (d_in).</summary>
    public int Columns { get; }

    /// <summary>k: the number of components kept.</summary>
    public int Rank { get; }

    /// <summary>True when computed by the exact core SVD; false for the randomized range finder.</summary>
    public bool IsExact { get; }

    /// <summary>σ_1 ≥ ... ≥ σ_k.</summary>
    public ReadOnlySpan<double> SingularValues => _sigma;

    /// <summary>U, column-major <c>[m, k]</c>: u_j at offset j · m.</summary>
    public ReadOnlySpan<double> U => _u;

    /// <summary>V, column-major <c>[n, k]</c>: v_j at offset j · n.</summary>
    public ReadOnlySpan<double> V => _v;
}
