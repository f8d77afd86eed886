using MoErging.Experts;
using MoErging.Formats;
using System.Numerics.Tensors;
using MoErging.Numerics;

namespace MoErging.Merging;

/// <summary>
/// TIES, DARE (linear and TIES) and magnitude pruning, on ΔW or on the factors (see <see cref="MergeSpace"/>),
/// following PEFT's <c>merge_utils</c>: each task tensor is pruned on its own (magnitude: top ⌊density · n⌋ entries,
/// ties to the lower index; DARE: seeded random keep with probability density, survivors divided by it), signs
/// are elected from the pruned unweighted tensors, and the weighted tensors are summed or averaged disjointly.
/// </summary>
internal static class PruneMerge
{
    /// <summary>Doubles held by the tiles of task tensors at once in ΔW space (64 MiB), whatever the number of experts.</summary>
    private const long TileBudget = 8L << 20;

    /// <summary>ΔW space: prune each ΔW_i = s_i B_i A_i, combine with weights w_i, factor the result to rank k.</summary>
    public static LoraFactors MergeDelta(IReadOnlyList<Contribution> parts, MergeMethod method, double density, SignElection? election,
        int k, int seed, string module, ulong sketchSeed, Action<double> progress, long tileBudget = TileBudget)
    {
        LoraFactors first = parts[0].Factors;
        int n = first.InputDim, m = first.OutputDim, experts = parts.Count;
        bool byMagnitude = method is MergeMethod.Ties or MergeMethod.MagnitudePrune;
        double[][] aWide = [.. parts.Select(p => p.AWide())];
        double[][] bTransposedWide = [.. parts.Select(p => p.BTransposedWide())];
        double[] weights = [.. parts.Select(p => p.Weight)];
        // Magnitude pruning needs each tensor's threshold over the whole tensor before any tile is pruned; forming
        // ΔW_i twice (here and per tile) keeps memory at one ΔW, not E of them.
        var masks = new TaskTensors.MagnitudeMask[experts];
        double work = byMagnitude ? 2 * experts + 1 : experts + 1, done = 0;
        if (byMagnitude)
        {
            var delta = new double[(long)m * n];
            for (int e = 0; e < experts; e++)
            {
                FillDelta(parts[e], aWide[e], bTransposedWide[e], 0, m, delta, 0);
                masks[e] = TaskTensors.Magnitude(delta, density);
                progress(++done / work);
            }
        }
        var merged = new double[(long)m * n];
        int tileRows = (int)Math.Clamp(tileBudget / ((long)experts * n), 1, m);
        var tiles = new double[(long)experts * tileRows * n];
        for (int r0 = 0; r0 < m; r0 += tileRows)
        {
            int rows = Math.Min(tileRows, m - r0), length = rows * n;
            for (int e = 0; e < experts; e++)
            {
                FillDelta(parts[e], aWide[e], bTransposedWide[e], r0, rows, tiles, (long)e * length);
                Span<double> tile = tiles.AsSpan(e * length, length);
                if (byMagnitude)
                {
                    masks[e].Apply(tile);
                }
                else
                {
                    TaskTensors.DropAtRandom(tile, (long)r0 * n, Contribution.Stream(seed, module, parts[e].Expert, 0), density);
                }
            }
            TaskTensors.Combine(tiles.AsSpan(0, experts * length), weights, Election(method, election), merged.AsSpan(r0 * n, length));
            progress((done + (double)(r0 + rows) / m * experts) / work);
        }
        return SvdMerge.ToFactors(LowRank.TruncatedSvdOfDense(merged, m, n, k, sketchSeed, f => progress((work - 1 + f) / work)));
    }

    /// <summary>Factor space (PEFT): prune A_i and B_i separately, combine with weights sgn(c_i) √|c_i| and √|c_i|. Equal ranks.</summary>
    public static LoraFactors MergeFactors(IReadOnlyList<Contribution> parts, MergeMethod method, double density, SignElection? election,
        int seed, string module)
    {
        LoraFactors first = parts[0].Factors;
        int rank = first.Rank, n = first.InputDim, m = first.OutputDim;
        var (forA, forB) = LinearMerge.FactorWeights(parts);
        double[] a = MergeTensor(parts, p => p.AWide(), 1, forA, method, density, election, seed, module);
        double[] b = MergeTensor(parts, p => p.BWide(), 2, forB, method, density, election, seed, module);
        float[] bTransposed = LoraFactors.AllocatePinned(m * rank);
        for (int o = 0; o < m; o++)
        {
            for (int j = 0; j < rank; j++)
            {
                bTransposed[j * m + o] = (float)b[o * rank + j];
            }
        }
        return new LoraFactors(LinearMerge.Narrow(a), bTransposed, rank, n, m, 1f, rank, TensorDType.F32);
    }

    private static double[] MergeTensor(IReadOnlyList<Contribution> parts, Func<Contribution, double[]> tensorOf, ulong tag, double[] weights,
        MergeMethod method, double density, SignElection? election, int seed, string module)
    {
        int length = tensorOf(parts[0]).Length;
        var tiles = new double[parts.Count * length];
        for (int e = 0; e < parts.Count; e++)
        {
            Span<double> tile = tiles.AsSpan(e * length, length);
            tensorOf(parts[e]).CopyTo(tile);
            if (method is MergeMethod.Ties or MergeMethod.MagnitudePrune)
            {
                TaskTensors.Magnitude(tile, density).Apply(tile);
            }
            else
            {
                TaskTensors.DropAtRandom(tile, 0, Contribution.Stream(seed, module, parts[e].Expert, tag), density);
            }
        }
        var merged = new double[length];
        TaskTensors.Combine(tiles, weights, Election(method, election), merged);
        return merged;
    }

    private static SignElection? Election(MergeMethod method, SignElection? election) =>
        method is MergeMethod.Ties or MergeMethod.DareTies ? election ?? SignElection.Total : null;

    /// <summary>Rows [r0, r0 + rows) of ΔW_i = s_i B_i A_i, row-major, into <paramref name="destination"/> from <paramref name="offset"/>.</summary>
    private static void FillDelta(Contribution part, double[] aWide, double[] bTransposedWide, int r0, int rows, double[] destination, long offset)
    {
        LoraFactors f = part.Factors;
        int n = f.InputDim, m = f.OutputDim, rank = f.Rank;
        double s = f.Scaling;
        Parallel.For(0, rows, i =>
        {
            Span<double> row = destination.AsSpan(checked((int)(offset + (long)i * n)), n);
            row.Clear();
            for (int j = 0; j < rank; j++)
            {
                double coefficient = s * bTransposedWide[j * m + r0 + i];
                if (coefficient != 0)
                {
                    TensorPrimitives.MultiplyAdd(aWide.AsSpan(j * n, n), coefficient, row, row);
                }
            }
        });
    }
}
