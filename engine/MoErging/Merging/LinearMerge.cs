using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Merging;

/// <summary>
/// <c>linear</c>, in factor space, PEFT's semantics: A = Σ sgn(c_i) √|c_i| A_i and B = Σ √|c_i| B_i with
/// c_i = w_i s_i (sgn(0) = +1). B A has cross terms B_i A_j, so it is not Σ c_i B_i A_i. Equal ranks only.
/// </summary>
internal static class LinearMerge
{
    /// <summary>The factor weights PEFT uses: the sign goes on A's only, so it is not applied twice.</summary>
    public static (double[] ForA, double[] ForB) FactorWeights(IReadOnlyList<Contribution> parts)
    {
        double[] forB = [.. parts.Select(p => Math.Sqrt(Math.Abs(p.Coefficient)))];
        double[] forA = [.. parts.Select((p, i) => p.Coefficient >= 0 ? forB[i] : -forB[i])];
        return (forA, forB);
    }

    public static LoraFactors Merge(IReadOnlyList<Contribution> parts)
    {
        LoraFactors first = parts[0].Factors;
        int rank = first.Rank, n = first.InputDim, m = first.OutputDim;
        var (forA, forB) = FactorWeights(parts);
        var a = new double[rank * n];
        var bTransposed = new double[rank * m];
        for (int i = 0; i < parts.Count; i++)
        {
            Accumulate(parts[i].Factors.A, forA[i], a);
            Accumulate(parts[i].Factors.BTransposed, forB[i], bTransposed); // Σ β_i B_i, transposed
        }
        return new LoraFactors(Narrow(a), Narrow(bTransposed), rank, n, m, 1f, rank, TensorDType.F32);
    }

    private static void Accumulate(ReadOnlySpan<float> source, double weight, double[] sum)
    {
        for (int i = 0; i < source.Length; i++)
        {
            sum[i] += weight * source[i];
        }
    }

    /// <summary>Rounds float64 values once into a new pinned float32 array.</summary>
    public static float[] Narrow(ReadOnlySpan<double> values)
    {
        float[] narrow = LoraFactors.AllocatePinned(values.Length);
        for (int i = 0; i < values.Length; i++)
        {
            narrow[i] = (float)values[i];
        }
        return narrow;
    }
}
