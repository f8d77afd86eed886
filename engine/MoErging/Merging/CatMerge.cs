using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Merging;

/// <summary>
/// <c>cat</c>, in factor space, exact: A = vstack(c_i A_i), B = hstack(B_i), so B A = Σ c_i B_i A_i with c_i = w_i s_i.
/// The rank is Σ r_i; each c_i A_i is formed in float64 and rounded once.
/// </summary>
internal static class CatMerge
{
    public static LoraFactors Merge(IReadOnlyList<Contribution> parts)
    {
        LoraFactors first = parts[0].Factors;
        int n = first.InputDim, m = first.OutputDim;
        int rank = checked(parts.Sum(p => p.Factors.Rank));
        float[] a = LoraFactors.AllocatePinned(checked(rank * n));
        float[] bTransposed = LoraFactors.AllocatePinned(checked(rank * m));
        int row = 0;
        foreach (Contribution p in parts)
        {
            double c = p.Coefficient;
            ReadOnlySpan<float> source = p.Factors.A;
            Span<float> target = a.AsSpan(row * n, source.Length);
            for (int i = 0; i < source.Length; i++)
            {
                target[i] = (float)(c * source[i]);
            }
            p.Factors.BTransposed.CopyTo(bTransposed.AsSpan(row * m)); // hstack of B is vstack of Bᵀ
            row += p.Factors.Rank;
        }
        return new LoraFactors(a, bTransposed, rank, n, m, 1f, rank, TensorDType.F32);
    }
}
