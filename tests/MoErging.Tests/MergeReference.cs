using MoErging.Experts;

namespace MoErging.Tests;

/// <summary>
/// Merges written plainly in float64 from their definitions (PEFT's merge_utils and the BRIEF), sharing no code
/// with the engine: dense ΔW, magnitude pruning by sorting, DARE with its own SplitMix64 generator drawn in the
/// documented order, sign election and disjoint mean, and a Jacobi eigensolver for spectra.
/// </summary>
public static class MergeReference
{
    /// <summary>s · B A, row-major [d_out, d_in].</summary>
    public static double[] Delta(RawFactors f, double coefficient)
    {
        var d = new double[f.OutputDim * f.InputDim];
        for (int o = 0; o < f.OutputDim; o++)
        {
            for (int i = 0; i < f.InputDim; i++)
            {
                double sum = 0;
                for (int k = 0; k < f.Rank; k++)
                {
                    sum += (double)f.B[o * f.Rank + k] * f.A[k * f.InputDim + i];
                }
                d[o * f.InputDim + i] = coefficient * sum;
            }
        }
        return d;
    }

    /// <summary>The engine's s · B A in float64, from its float32 factors.</summary>
    public static double[] Delta(LoraFactors f)
    {
        var b = new float[f.OutputDim * f.Rank];
        f.CopyB(b);
        return Delta(new RawFactors(f.A.ToArray(), b, f.Rank, f.InputDim, f.OutputDim, f.Scaling), f.Scaling);
    }

    /// <summary>Keeps the ⌊density · n⌋ entries of largest magnitude (ties: lower index), zeroes the rest.</summary>
    public static double[] PruneMagnitude(double[] t, double density)
    {
        int keep = (int)(density * t.Length);
        var kept = Enumerable.Range(0, t.Length).OrderByDescending(i => Math.Abs(t[i])).ThenBy(i => i).Take(keep).ToHashSet();
        return t.Select((v, i) => kept.Contains(i) ? v : 0).ToArray();
    }

    /// <summary>DARE: entry j kept (and divided by density) when the j-th uniform of the stream is below density.</summary>
    public static double[] PruneRandom(double[] t, double density, ulong stream)
    {
        var rng = new SplitMix64(stream);
        return t.Select(v => rng.NextUniform() < density ? v / density : 0).ToArray();
    }

    /// <summary>Σ w_i t_i, or with TIES the disjoint mean of the w_i t_i whose sign matches the elected one.</summary>
    public static double[] Combine(double[][] tensors, double[] weights, bool ties, bool frequency = false)
    {
        int n = tensors[0].Length;
        var result = new double[n];
        for (int j = 0; j < n; j++)
        {
            if (!ties)
            {
                result[j] = Enumerable.Range(0, tensors.Length).Sum(e => weights[e] * tensors[e][j]);
                continue;
            }
            double vote = Enumerable.Range(0, tensors.Length).Sum(e => frequency ? Math.Sign(tensors[e][j]) : tensors[e][j]);
            int elected = vote >= 0 ? 1 : -1;
            var agree = Enumerable.Range(0, tensors.Length).Where(e => Math.Sign(tensors[e][j]) == elected).ToList();
            result[j] = agree.Sum(e => weights[e] * tensors[e][j]) / Math.Max(agree.Count, 1);
        }
        return result;
    }

    /// <summary>The documented DARE stream: Derive(Derive(Derive(seed, Hash(module)), expert), tensor).</summary>
    public static ulong Stream(int seed, string module, int expert, ulong tensor)
    {
        ulong h = 0xCBF29CE484222325;
        foreach (char c in module)
        {
            h = (h ^ c) * 0x100000001B3;
        }
        return Derive(Derive(Derive((uint)seed, h), (ulong)expert), tensor);
    }

    private static ulong Derive(ulong key, ulong part) => SplitMix64.Mix(key ^ SplitMix64.Mix(part + SplitMix64.Gamma));

    /// <summary>A sequential SplitMix64 generator: state += γ, output Mix(state).</summary>
    public sealed class SplitMix64(ulong state)
    {
        public const ulong Gamma = 0x9E3779B97F4A7C15;

        public static ulong Mix(ulong z)
        {
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
            return z ^ (z >> 31);
        }

        public ulong Next() => Mix(state += Gamma);

        public double NextUniform() => (Next() >> 11) / 9007199254740992.0;
    }

    /// <summary>Eigenvalues (descending) of a symmetric matrix by cyclic Jacobi rotations.</summary>
    public static double[] SymmetricEigenvalues(double[,] g)
    {
        int n = g.GetLength(0);
        g = (double[,])g.Clone();
        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0, diagonal = 0;
            for (int p = 0; p < n; p++)
            {
                diagonal += g[p, p] * g[p, p];
                for (int q = p + 1; q < n; q++)
                {
                    off += g[p, q] * g[p, q];
                }
            }
            if (off <= 1e-30 * diagonal)
            {
                break;
            }
            for (int p = 0; p < n; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    if (g[p, q] == 0)
                    {
                        continue;
                    }
                    double theta = (g[q, q] - g[p, p]) / (2 * g[p, q]);
                    double t = theta == 0 ? 1 : Math.Sign(theta) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    double c = 1 / Math.Sqrt(t * t + 1), s = t * c;
                    for (int k = 0; k < n; k++)
                    {
                        double gkp = g[k, p], gkq = g[k, q];
                        g[k, p] = c * gkp - s * gkq;
                        g[k, q] = s * gkp + c * gkq;
                    }
                    for (int k = 0; k < n; k++)
                    {
                        double gpk = g[p, k], gqk = g[q, k];
                        g[p, k] = c * gpk - s * gqk;
                        g[q, k] = s * gpk + c * gqk;
                    }
                }
            }
        }
        return Enumerable.Range(0, n).Select(i => g[i, i]).OrderDescending().ToArray();
    }

    /// <summary>Singular values (descending) of a row-major [m, n] matrix: square roots of the eigenvalues of MᵀM.</summary>
    public static double[] SingularValues(double[] m, int rows, int cols)
    {
        var g = new double[cols, cols];
        for (int i = 0; i < cols; i++)
        {
            for (int j = i; j < cols; j++)
            {
                double s = 0;
                for (int o = 0; o < rows; o++)
                {
                    s += m[o * cols + i] * m[o * cols + j];
                }
                g[i, j] = g[j, i] = s;
            }
        }
        return SymmetricEigenvalues(g).Select(v => Math.Sqrt(Math.Max(v, 0))).ToArray();
    }

    /// <summary>
    /// n orthonormal columns of length m (m ≥ n), row-major [m, n]: the first n orthonormal DCT-II basis vectors with
    /// the rows permuted and their signs flipped at random (still orthonormal, and dense).
    /// </summary>
    public static double[] OrthonormalColumns(TestData data, int m, int n)
    {
        int[] rows = [.. Enumerable.Range(0, m).OrderBy(_ => data.Rng.Next())];
        var result = new double[m * n];
        for (int i = 0; i < m; i++)
        {
            double sign = data.Rng.Next(2) == 0 ? -1 : 1;
            for (int j = 0; j < n; j++)
            {
                double scale = j == 0 ? Math.Sqrt(1.0 / m) : Math.Sqrt(2.0 / m);
                result[rows[i] * n + j] = sign * scale * Math.Cos(Math.PI * (i + 0.5) * j / m);
            }
        }
        return result;
    }

    /// <summary>Asserts |actual - expected| ≤ tolerance · max |expected| element by element.</summary>
    public static void Close(ReadOnlySpan<double> actual, double[] expected, double tolerance, string where)
    {
        Assert.True(actual.Length == expected.Length, $"{where}: {actual.Length} values, expected {expected.Length}");
        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < expected.Length; i++)
        {
            double error = Math.Abs(actual[i] - expected[i]);
            Assert.True(error <= tolerance * scale, $"{where}: entry {i} is {actual[i]:R}, expected {expected[i]:R} (error {error:E2} > {tolerance:E0} · {scale:E2})");
        }
    }
}
