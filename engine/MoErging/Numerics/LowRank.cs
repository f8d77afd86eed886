using System.Numerics.Tensors;

namespace MoErging.Numerics;

/// <summary>
/// Exact spectral facts about a low-rank product ΔW = B A without forming it: thin QR of both factors
/// reduces the problem to a small core whose SVD gives ΔW's. All arithmetic is float64. Matrices here
/// are column-major, so A's rows are Aᵀ's columns and Bᵀ's rows are B's columns, with no transposing.
/// </summary>
public static class LowRank
{
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
        // ΔW = B A = (Q_B R_B)(Q_A R_A)ᵀ = Q_B (R_B R_Aᵀ) Q_Aᵀ, from QR of Aᵀ [d_in, r] and of B [d_out, r].
        var (qa, ra, qaCols) = ThinQr(Widen(a), inputDim, rank);
        var (_, rb, qbCols) = ThinQr(Widen(bTransposed), outputDim, rank);
        // core = R_B R_Aᵀ : [qbCols, qaCols], column-major; R_X is [q, r] column-major.
        var core = new double[qbCols * qaCols];
        for (int j = 0; j < qaCols; j++)
        {
            for (int i = 0; i < qbCols; i++)
            {
                double s = 0;
                for (int k = 0; k < rank; k++)
                {
                    s += rb[k * qbCols + i] * ra[k * qaCols + j];
                }
                core[j * qbCols + i] = s;
            }
        }
        var (sigma, v) = JacobiSvd(core, qbCols, qaCols);
        int top = 0;
        for (int j = 1; j < qaCols; j++)
        {
            if (sigma[j] > sigma[top])
            {
                top = j;
            }
        }
        destination.Clear();
        if (sigma[top] == 0)
        {
            return 0;
        }
        // p = Q_A v_top: a combination of Q_A's (contiguous) columns.
        for (int j = 0; j < qaCols; j++)
        {
            double c = v[top * qaCols + j];
            ReadOnlySpan<double> column = qa.AsSpan(j * inputDim, inputDim);
            for (int i = 0; i < inputDim; i++)
            {
                destination[i] += c * column[i];
            }
        }
        Normalize(destination);
        return sigma[top];
    }

    private static double[] Widen(ReadOnlySpan<float> values)
    {
        var wide = new double[values.Length];
        TensorPrimitives.ConvertTruncating(values, wide.AsSpan()); // float → double is exact
        return wide;
    }

    /// <summary>
    /// Householder thin QR of a column-major <c>[rows, cols]</c> matrix: Q <c>[rows, q]</c> with orthonormal
    /// columns and R <c>[q, cols]</c> upper trapezoidal, both column-major, q = min(rows, cols).
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
        var qm = new double[rows * q];
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
    /// One-sided (Hestenes) Jacobi SVD of a small column-major <c>[rows, cols]</c> matrix: returns the
    /// singular values (one per column, unsorted) and V <c>[cols, cols]</c> (column-major) whose columns
    /// are the right singular vectors.
    /// </summary>
    internal static (double[] Sigma, double[] V) JacobiSvd(double[] m, int rows, int cols)
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
        return (sigma, v);
    }

    private static void Rotate(Span<double> p, Span<double> q, double c, double s)
    {
        for (int i = 0; i < p.Length; i++)
        {
            double a = p[i], b = q[i];
            p[i] = c * a - s * b;
            q[i] = s * a + c * b;
        }
    }

    /// <summary>Scales to unit length and makes the entry of largest magnitude positive.</summary>
    private static void Normalize(Span<double> x)
    {
        double norm = 0;
        int largest = 0;
        for (int i = 0; i < x.Length; i++)
        {
            norm += x[i] * x[i];
            if (Math.Abs(x[i]) > Math.Abs(x[largest]))
            {
                largest = i;
            }
        }
        double scale = (x[largest] < 0 ? -1 : 1) / Math.Sqrt(norm);
        for (int i = 0; i < x.Length; i++)
        {
            x[i] *= scale;
        }
    }
}
