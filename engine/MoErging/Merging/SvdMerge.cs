using MoErging.Experts;
using MoErging.Formats;
using MoErging.Numerics;

namespace MoErging.Merging;

/// <summary>
/// <c>svd</c>, in ΔW space, exact: ΔW = Σ c_i B_i A_i (c_i = w_i s_i, each scaling applied once) truncated to rank k:
/// B = U_k Σ_k, A = V_kᵀ. ΔW = [B_1 … B_E] · vstack(c_i A_i), so the SVD works from the stacked factors
/// (<see cref="LowRank.TruncatedSvdOfProduct"/>) and never forms ΔW while Σ r_i ≤ <see cref="LowRank.ExactRankLimit"/>.
/// </summary>
internal static class SvdMerge
{
    public static LoraFactors Merge(IReadOnlyList<Contribution> parts, int k, ulong sketchSeed, Action<double> progress)
    {
        LoraFactors first = parts[0].Factors;
        int n = first.InputDim, m = first.OutputDim;
        int rank = checked(parts.Sum(p => p.Factors.Rank));
        var a = new double[checked(rank * n)];
        var bTransposed = new double[checked(rank * m)];
        int row = 0;
        foreach (Contribution p in parts)
        {
            double c = p.Coefficient;
            ReadOnlySpan<float> source = p.Factors.A;
            for (int i = 0; i < source.Length; i++)
            {
                a[row * n + i] = c * source[i];
            }
            ReadOnlySpan<float> bt = p.Factors.BTransposed;
            for (int i = 0; i < bt.Length; i++)
            {
                bTransposed[row * m + i] = bt[i];
            }
            row += p.Factors.Rank;
        }
        return ToFactors(LowRank.TruncatedSvdOfProductWithoutCopy(a, bTransposed, rank, n, m, k, sketchSeed, progress));
    }

    /// <summary>B = U Σ and A = Vᵀ as float32 factors with scaling 1 (lora_alpha = k).</summary>
    public static LoraFactors ToFactors(TruncatedSvd svd)
    {
        int k = svd.Rank, n = svd.Columns, m = svd.Rows;
        float[] a = LinearMerge.Narrow(svd.V); // V column-major [n, k] is Vᵀ row-major [k, n]
        float[] bTransposed = LoraFactors.AllocatePinned(k * m);
        ReadOnlySpan<double> u = svd.U, sigma = svd.SingularValues;
        for (int j = 0; j < k; j++)
        {
            for (int o = 0; o < m; o++)
            {
                bTransposed[j * m + o] = (float)(sigma[j] * u[j * m + o]);
            }
        }
        return new LoraFactors(a, bTransposed, k, n, m, 1f, k, TensorDType.F32);
    }
}
