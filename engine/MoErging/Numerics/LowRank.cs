namespace MoErging.Numerics;

/// <summary>
/// Exact spectral facts about a low-rank product ΔW = B A without forming it: thin QR of both factors
/// reduces the problem to a small core whose SVD gives ΔW's. All arithmetic is float64.
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
        // ΔW = B A = (Q_B R_B)(Q_A R_A)ᵀ = Q_B (R_B R_Aᵀ) Q_Aᵀ, from QR of B = (Bᵀ)ᵀ and of Aᵀ.
        var (qa, ra, qaCols) = ThinQr(Transposed(a, rank, inputDim), inputDim, rank);
        var (_, rb, qbCols) = ThinQr(Transposed(bTransposed, rank, outputDim), outputDim, rank);
        // core = R_B R_Aᵀ : [qbCols, qaCols]
        var core = new double[qbCols * qaCols];
        for (int i = 0; i < qbCols; i++)
        {
            for (int j = 0; j < qaCols; j++)
            {
                double s = 0;
                for (int k = 0; k < rank; k++)
                {
                    s += rb[i * rank + k] * ra[j * rank + k];
                }
                core[i * qaCols + j] = s;
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
        // p = Q_A v_top
        for (int i = 0; i < inputDim; i++)
        {
            double s = 0;
            for (int j = 0; j < qaCols; j++)
            {
                s += qa[i * qaCols + j] * v[j * qaCols + top];
            }
            destination[i] = s;
        }
        Normalize(destination);
        return sigma[top];
    }

    private static double[] Transposed(ReadOnlySpan<float> m, int rows, int cols)
    {
        var t = new double[m.Length];
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < cols; j++)
            {
                t[j * rows + i] = m[i * cols + j];
            }
        }
        return t;
    }

    /// <summary>
    /// Householder thin QR of a row-major <c>[rows, cols]</c> matrix: Q <c>[rows, q]</c> with orthonormal
    /// columns and R <c>[q, cols]</c> upper trapezoidal, q = min(rows, cols).
    /// </summary>
    internal static (double[] Q, double[] R, int Q_Cols) ThinQr(double[] m, int rows, int cols)
    {
        int q = Math.Min(rows, cols);
        var work = (double[])m.Clone();
        var reflectors = new double[q][];
        for (int k = 0; k < q; k++)
        {
            // Reflector v that zeroes column k below the diagonal.
            double norm = 0;
            for (int i = k; i < rows; i++)
            {
                norm += work[i * cols + k] * work[i * cols + k];
            }
            norm = Math.Sqrt(norm);
            var v = new double[rows - k];
            if (norm == 0)
            {
                reflectors[k] = v;
                continue;
            }
            double alpha = work[k * cols + k] >= 0 ? -norm : norm;
            for (int i = k; i < rows; i++)
            {
                v[i - k] = work[i * cols + k];
            }
            v[0] -= alpha;
            double vNorm = 0;
            foreach (double x in v)
            {
                vNorm += x * x;
            }
            vNorm = Math.Sqrt(vNorm);
            for (int i = 0; i < v.Length; i++)
            {
                v[i] /= vNorm;
            }
            reflectors[k] = v;
            ApplyReflector(work, rows, cols, k, v, k);
        }
        var r = new double[q * cols];
        for (int i = 0; i < q; i++)
        {
            for (int j = i; j < cols; j++)
            {
                r[i * cols + j] = work[i * cols + j];
            }
        }
        // Q = H_0 H_1 ... H_{q-1} applied to the first q columns of the identity.
        var qm = new double[rows * q];
        for (int i = 0; i < q; i++)
        {
            qm[i * q + i] = 1;
        }
        for (int k = q - 1; k >= 0; k--)
        {
            ApplyReflector(qm, rows, q, k, reflectors[k], 0);
        }
        return (qm, r, q);
    }

    /// <summary>M[k:, firstCol:] -= 2 v (vᵀ M[k:, firstCol:]) for a unit (or zero) reflector v.</summary>
    private static void ApplyReflector(double[] m, int rows, int cols, int k, double[] v, int firstCol)
    {
        for (int j = firstCol; j < cols; j++)
        {
            double dot = 0;
            for (int i = k; i < rows; i++)
            {
                dot += v[i - k] * m[i * cols + j];
            }
            if (dot == 0)
            {
                continue;
            }
            for (int i = k; i < rows; i++)
            {
                m[i * cols + j] -= 2 * v[i - k] * dot;
            }
        }
    }

    /// <summary>
    /// One-sided (Hestenes) Jacobi SVD of a small row-major <c>[rows, cols]</c> matrix: returns the
    /// singular values (one per column, unsorted) and V <c>[cols, cols]</c> whose columns are the right
    /// singular vectors.
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
                    double alpha = 0, beta = 0, gamma = 0;
                    for (int i = 0; i < rows; i++)
                    {
                        double up = u[i * cols + p], uq = u[i * cols + q];
                        alpha += up * up;
                        beta += uq * uq;
                        gamma += up * uq;
                    }
                    if (gamma == 0 || Math.Abs(gamma) <= 1e-15 * Math.Sqrt(alpha * beta))
                    {
                        continue;
                    }
                    rotated = true;
                    double zeta = (beta - alpha) / (2 * gamma);
                    double t = Math.Sign(zeta) / (Math.Abs(zeta) + Math.Sqrt(1 + zeta * zeta));
                    if (zeta == 0)
                    {
                        t = 1;
                    }
                    double c = 1 / Math.Sqrt(1 + t * t), s = c * t;
                    Rotate(u, rows, cols, p, q, c, s);
                    Rotate(v, cols, cols, p, q, c, s);
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
            double s = 0;
            for (int i = 0; i < rows; i++)
            {
                s += u[i * cols + j] * u[i * cols + j];
            }
            sigma[j] = Math.Sqrt(s);
        }
        return (sigma, v);
    }

    private static void Rotate(double[] m, int rows, int cols, int p, int q, double c, double s)
    {
        for (int i = 0; i < rows; i++)
        {
            double mp = m[i * cols + p], mq = m[i * cols + q];
            m[i * cols + p] = c * mp - s * mq;
            m[i * cols + q] = s * mp + c * mq;
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
