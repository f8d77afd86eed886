using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>One expert's factors for one module as the test drew them: PEFT layout, float32 values.</summary>
public sealed record RawFactors(float[] A, float[] B, int Rank, int InputDim, int OutputDim, float Scaling);

/// <summary>
/// A float64 reference output y, and for each element the sum of the absolute values of every product that
/// went into its update (the same formula with |·| on every factor). That sum, times the length of the longest
/// chain of float32 additions behind an element (<see cref="Terms"/>), bounds the rounding error of any float32
/// evaluation order (γ_n, Higham §3.1), however much the terms cancel. So it holds for every backend alike: the
/// CPU's order, the GPU reductions' trees (warp butterflies, work-group trees of another width), and fused
/// multiply-adds (CUDA contracts a·b + c into one rounding where the bound counts two).
/// </summary>
public sealed record ReferenceOutput(double[] Values, double[] Magnitudes, int Terms);

/// <summary>
/// The forward pass and the routers written plainly in float64, straight from the formulas, sharing no
/// code with the engine. Tests compare the engine against this.
/// </summary>
public static class Reference
{
    /// <summary>y[t] = base[t] + Σ_slots w · s · B (A x_t), all in float64.</summary>
    public static ReferenceOutput Forward(IReadOnlyList<RawFactors?> experts, float[] x, float[] yBase, int tokens,
        int[] ids, double[] weights, int k)
    {
        int dIn = x.Length / tokens, dOut = yBase.Length / tokens, maxRank = 0;
        var y = yBase.Select(v => (double)v).ToArray();
        var magnitude = new double[y.Length];
        for (int t = 0; t < tokens; t++)
        {
            for (int s = 0; s < k; s++)
            {
                int e = ids[t * k + s];
                if (e < 0 || experts[e] is not RawFactors f)
                {
                    continue;
                }
                maxRank = Math.Max(maxRank, f.Rank);
                var v = new double[f.Rank];
                var vAbs = new double[f.Rank];
                for (int r = 0; r < f.Rank; r++)
                {
                    for (int i = 0; i < dIn; i++)
                    {
                        v[r] += (double)f.A[r * dIn + i] * x[t * dIn + i];
                        vAbs[r] += Math.Abs((double)f.A[r * dIn + i] * x[t * dIn + i]);
                    }
                }
                for (int o = 0; o < dOut; o++)
                {
                    double sum = 0, sumAbs = 0;
                    for (int r = 0; r < f.Rank; r++)
                    {
                        sum += (double)f.B[o * f.Rank + r] * v[r];
                        sumAbs += Math.Abs((double)f.B[o * f.Rank + r]) * vAbs[r];
                    }
                    y[t * dOut + o] += weights[t * k + s] * f.Scaling * sum;
                    magnitude[t * dOut + o] += Math.Abs(weights[t * k + s] * f.Scaling) * sumAbs;
                }
            }
        }
        return new ReferenceOutput(y, magnitude, dIn + maxRank + k);
    }

    /// <summary>
    /// Parameter mixing, in float64: per token A_tok = Σ_slots w A_e and B_tok = Σ_slots w B_e, then
    /// y[t] = base[t] + s · B_tok (A_tok x_t), s being the chosen experts' common scaling.
    /// </summary>
    public static ReferenceOutput ForwardParameterMixing(IReadOnlyList<RawFactors?> experts, float[] x, float[] yBase, int tokens,
        int[] ids, double[] weights, int k)
    {
        int dIn = x.Length / tokens, dOut = yBase.Length / tokens, maxRank = 0;
        var y = yBase.Select(v => (double)v).ToArray();
        var magnitude = new double[y.Length];
        for (int t = 0; t < tokens; t++)
        {
            var chosen = Enumerable.Range(0, k).Where(s => ids[t * k + s] >= 0 && experts[ids[t * k + s]] is not null && weights[t * k + s] != 0).ToArray();
            if (chosen.Length == 0)
            {
                continue;
            }
            RawFactors first = experts[ids[t * k + chosen[0]]]!;
            int r = first.Rank;
            maxRank = Math.Max(maxRank, r);
            var a = new double[r * dIn];
            var b = new double[dOut * r];
            var aAbs = new double[r * dIn];
            var bAbs = new double[dOut * r];
            foreach (int s in chosen)
            {
                RawFactors f = experts[ids[t * k + s]]!;
                Assert.True(f.Rank == r && f.Scaling == first.Scaling, "the reference needs one rank and one scaling per token");
                double w = weights[t * k + s];
                for (int i = 0; i < a.Length; i++)
                {
                    a[i] += w * f.A[i];
                    aAbs[i] += Math.Abs(w * f.A[i]);
                }
                for (int i = 0; i < b.Length; i++)
                {
                    b[i] += w * f.B[i];
                    bAbs[i] += Math.Abs(w * f.B[i]);
                }
            }
            var v = new double[r];
            var vAbs = new double[r];
            for (int q = 0; q < r; q++)
            {
                for (int i = 0; i < dIn; i++)
                {
                    v[q] += a[q * dIn + i] * x[t * dIn + i];
                    vAbs[q] += aAbs[q * dIn + i] * Math.Abs(x[t * dIn + i]);
                }
            }
            for (int o = 0; o < dOut; o++)
            {
                double sum = 0, sumAbs = 0;
                for (int q = 0; q < r; q++)
                {
                    sum += b[o * r + q] * v[q];
                    sumAbs += bAbs[o * r + q] * vAbs[q];
                }
                y[t * dOut + o] += first.Scaling * sum;
                magnitude[t * dOut + o] += Math.Abs(first.Scaling) * sumAbs;
            }
        }
        return new ReferenceOutput(y, magnitude, dIn + maxRank * k + 2 * k);
    }

    /// <summary>score_e = f(norm(x) · p_e) / τ + b_e for one token, in float64.</summary>
    public static double[] Scores(ReadOnlySpan<float> x, ReadOnlySpan<float> prototypes, InputNormalization norm,
        ScoreFunction f, double temperature, ReadOnlySpan<float> bias)
    {
        int n = x.Length, experts = prototypes.Length / n;
        var z = new double[n];
        for (int i = 0; i < n; i++)
        {
            z[i] = x[i];
        }
        if (norm == InputNormalization.LayerNorm)
        {
            double mean = z.Average();
            double variance = z.Select(v => (v - mean) * (v - mean)).Average();
            for (int i = 0; i < n; i++)
            {
                z[i] = (z[i] - mean) / Math.Sqrt(variance + 1e-5);
            }
        }
        else if (norm == InputNormalization.L2)
        {
            double length = Math.Max(Math.Sqrt(z.Sum(v => v * v)), 1e-12);
            for (int i = 0; i < n; i++)
            {
                z[i] /= length;
            }
        }
        var scores = new double[experts];
        for (int e = 0; e < experts; e++)
        {
            double dot = 0;
            for (int i = 0; i < n; i++)
            {
                dot += z[i] * prototypes[e * n + i];
            }
            scores[e] = (f == ScoreFunction.AbsoluteValue ? Math.Abs(dot) : dot) / temperature + (bias.IsEmpty ? 0 : bias[e]);
        }
        return scores;
    }

    /// <summary>Softmax over the given scores, in float64.</summary>
    public static double[] Softmax(IReadOnlyList<double> scores)
    {
        double max = scores.Max();
        var e = scores.Select(s => Math.Exp(s - max)).ToArray();
        double sum = e.Sum();
        return e.Select(v => v / sum).ToArray();
    }

    /// <summary>LayerNorm without affine parameters, eps 1e-5, in float64.</summary>
    public static double[] LayerNorm(ReadOnlySpan<float> v)
    {
        double[] z = v.ToArray().Select(f => (double)f).ToArray();
        double mean = z.Average();
        double variance = z.Select(a => (a - mean) * (a - mean)).Average();
        return z.Select(a => (a - mean) / Math.Sqrt(variance + 1e-5)).ToArray();
    }

    /// <summary>PHATGOOSE: score_e = LayerNorm(x) · LayerNorm(g_e) / sqrt(d_in), in float64.</summary>
    public static double[] PhatgooseScores(ReadOnlySpan<float> x, float[] gates)
    {
        int n = x.Length;
        double[] xn = LayerNorm(x);
        return Enumerable.Range(0, gates.Length / n).Select(e =>
        {
            double[] g = LayerNorm(gates.AsSpan(e * n, n));
            return xn.Zip(g, (a, b) => a * b).Sum() / Math.Sqrt(n);
        }).ToArray();
    }

    /// <summary>Centroid routing: score_e = x · c_e / (|c_e| sqrt(d_in)), in float64.</summary>
    public static double[] CentroidScores(ReadOnlySpan<float> x, float[] centroids)
    {
        int n = x.Length;
        double[] xs = x.ToArray().Select(f => (double)f).ToArray();
        return Enumerable.Range(0, centroids.Length / n).Select(e =>
        {
            double[] c = centroids.AsSpan(e * n, n).ToArray().Select(f => (double)f).ToArray();
            return xs.Zip(c, (a, b) => a * b).Sum() / Math.Sqrt(c.Sum(v => v * v)) / Math.Sqrt(n);
        }).ToArray();
    }

    /// <summary>
    /// The weights of the engine's chosen experts as the papers state them: a softmax over ALL experts, then
    /// the chosen ones renormalised to sum to 1 (after checking the choice is a valid top-k).
    /// </summary>
    public static double[] RenormalisedTopK(double[] scores, ReadOnlySpan<int> chosen, double slack, string where)
    {
        CheckTopKAndWeigh(scores, chosen, slack, where);
        double[] p = Softmax(scores);
        double kept = chosen.ToArray().Sum(e => p[e]);
        return chosen.ToArray().Select(e => p[e] / kept).ToArray();
    }

    /// <summary>
    /// Checks that the engine's choice for one token is a valid top-k of the float64 scores (every kept
    /// score at least every dropped one, in descending order, up to <paramref name="slack"/> for near
    /// ties), and returns the float64 softmax weights of the engine's chosen experts.
    /// </summary>
    public static double[] CheckTopKAndWeigh(double[] scores, ReadOnlySpan<int> chosen, double slack, string where)
    {
        var kept = new HashSet<int>();
        for (int s = 0; s < chosen.Length; s++)
        {
            Assert.InRange(chosen[s], 0, scores.Length - 1);
            Assert.True(kept.Add(chosen[s]), $"{where}: expert {chosen[s]} chosen twice");
            if (s > 0)
            {
                Assert.True(scores[chosen[s]] <= scores[chosen[s - 1]] + slack,
                    $"{where}: slot {s} (expert {chosen[s]}, {scores[chosen[s]]}) ranks above slot {s - 1} (expert {chosen[s - 1]}, {scores[chosen[s - 1]]})");
            }
        }
        double lowestKept = chosen.ToArray().Min(e => scores[e]);
        for (int e = 0; e < scores.Length; e++)
        {
            if (!kept.Contains(e))
            {
                Assert.True(scores[e] <= lowestKept + slack, $"{where}: dropped expert {e} scores {scores[e]} above a kept one ({lowestKept})");
            }
        }
        return Softmax(chosen.ToArray().Select(e => scores[e]).ToArray());
    }

    /// <summary>
    /// Checks float32 outputs element by element against the float64 result:
    /// |y - y_ref| ≤ 1e-5 · max |y_ref - y_base| + (k + 1) · 2⁻²⁴ · |y_ref| + (n + 4) · 2⁻²⁴ · m.
    /// The first term is the stated tolerance, relative to the size of the update (so a wrong update cannot
    /// hide behind the base); the second is the rounding of y itself, stored in float32 after each of at most
    /// k expert contributions, which no implementation avoids when the update is much smaller than the base; the
    /// third bounds the rounding of the dot products behind the element (m its <see cref="ReferenceOutput.Magnitudes"/>,
    /// n its <see cref="ReferenceOutput.Terms"/>, 4 for the products w · s and the conversions), which exceeds the
    /// first only where the terms of A x cancel. A wrong expert, weight or scaling is off by a share of the update
    /// itself, far above both rounding terms.
    /// </summary>
    public static void CheckFloat32(ReadOnlySpan<float> actual, ReferenceOutput expected, float[] yBase, int slots, string where)
    {
        double[] y = expected.Values;
        double scale = UpdateScale(y, yBase);
        for (int i = 0; i < y.Length; i++)
        {
            double bound = 1e-5 * scale + (slots + 1) * Math.Pow(2, -24) * Math.Abs(y[i]) + DotRounding(expected, i);
            double error = Math.Abs(actual[i] - y[i]);
            Assert.True(error <= bound, $"{where}: output {i} is {actual[i]}, expected {y[i]} (error {error:E2} > bound {bound:E2}, update scale {scale:E2})");
        }
    }

    /// <summary>
    /// Checks Half outputs element by element: y must be the float64 result rounded to Half, give or take
    /// float32 accumulation: |y - y_ref| ≤ |y_ref| · 2⁻¹¹ (half an ulp) + 1e-5 · max |y_ref - y_base| + 2⁻²⁴ (subnormals)
    /// + the dot products' rounding bound of <see cref="CheckFloat32"/>.
    /// </summary>
    public static void CheckHalf(ReadOnlySpan<Half> actual, ReferenceOutput expected, float[] yBase, string where)
    {
        double[] y = expected.Values;
        double scale = UpdateScale(y, yBase);
        for (int i = 0; i < y.Length; i++)
        {
            double bound = Math.Abs(y[i]) * Math.Pow(2, -11) + 1e-5 * scale + Math.Pow(2, -24) + DotRounding(expected, i);
            double error = Math.Abs((double)actual[i] - y[i]);
            Assert.True(error <= bound, $"{where}: output {i} is {(double)actual[i]}, expected {y[i]} (error {error:E2} > bound {bound:E2})");
        }
    }

    private static double UpdateScale(double[] y, float[] yBase)
    {
        double scale = 0;
        for (int i = 0; i < y.Length; i++)
        {
            scale = Math.Max(scale, Math.Abs(y[i] - yBase[i]));
        }
        return scale;
    }

    private static double DotRounding(ReferenceOutput expected, int i) => (expected.Terms + 4) * Math.Pow(2, -24) * expected.Magnitudes[i];

    /// <summary>
    /// The unit top right singular vector of the full ΔW = B A, from the eigenvectors of ΔWᵀ ΔW by
    /// cyclic Jacobi rotations in float64: an independent route to what Arrow computes from the factors.
    /// </summary>
    public static double[] TopRightSingularVectorByJacobi(RawFactors f)
    {
        int n = f.InputDim, m = f.OutputDim, r = f.Rank;
        var dw = new double[m * n];
        for (int o = 0; o < m; o++)
        {
            for (int i = 0; i < n; i++)
            {
                for (int k = 0; k < r; k++)
                {
                    dw[o * n + i] += (double)f.B[o * r + k] * f.A[k * n + i];
                }
            }
        }
        var g = new double[n, n];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++)
            {
                for (int o = 0; o < m; o++)
                {
                    g[i, j] += dw[o * n + i] * dw[o * n + j];
                }
            }
        }
        var v = new double[n, n];
        for (int i = 0; i < n; i++)
        {
            v[i, i] = 1;
        }
        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0;
            for (int p = 0; p < n; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    off += g[p, q] * g[p, q];
                }
            }
            if (off < 1e-30)
            {
                break;
            }
            for (int p = 0; p < n; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    if (Math.Abs(g[p, q]) < 1e-300)
                    {
                        continue;
                    }
                    double theta = (g[q, q] - g[p, p]) / (2 * g[p, q]);
                    double t = Math.Sign(theta) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    if (theta == 0)
                    {
                        t = 1;
                    }
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
                    for (int k = 0; k < n; k++)
                    {
                        double vkp = v[k, p], vkq = v[k, q];
                        v[k, p] = c * vkp - s * vkq;
                        v[k, q] = s * vkp + c * vkq;
                    }
                }
            }
        }
        int top = Enumerable.Range(0, n).MaxBy(i => g[i, i]);
        return Enumerable.Range(0, n).Select(i => v[i, top]).ToArray();
    }
}
