using MoErging.Numerics;

namespace MoErging.Merging;

/// <summary>
/// The element-wise steps of TIES, DARE and magnitude pruning over task tensors (as PEFT's <c>merge_utils</c>
/// defines them), written so a large tensor can be processed in row-major tiles: a magnitude threshold is found
/// once over the whole tensor, then applied tile by tile; DARE's keep/drop draw for an entry depends only on its
/// index. All arithmetic is float64.
/// </summary>
internal static class TaskTensors
{
    /// <summary>
    /// What magnitude pruning keeps of one tensor: entries whose |value| exceeds the threshold, and the first
    /// <c>keepAtThreshold</c> entries (in row-major order) whose |value| equals it. Together they are the
    /// k = ⌊density · n⌋ entries of largest magnitude, ties at the threshold going to the lower index.
    /// NaN counts as larger than any number.
    /// </summary>
    internal sealed class MagnitudeMask(ulong thresholdBits, long keepAtThreshold)
    {
        private long _keepAtThreshold = keepAtThreshold;

        /// <summary>Zeroes what the mask drops from the next tile of the tensor (tiles must come in row-major order).</summary>
        public void Apply(Span<double> tile)
        {
            for (int i = 0; i < tile.Length; i++)
            {
                ulong bits = MagnitudeBits(tile[i]);
                if (bits > thresholdBits)
                {
                    continue;
                }
                if (bits == thresholdBits && _keepAtThreshold > 0)
                {
                    _keepAtThreshold--;
                    continue;
                }
                tile[i] = 0;
            }
        }
    }

    /// <summary>The magnitude mask keeping the top ⌊density · n⌋ entries of <paramref name="values"/> (PEFT: <c>int(density * numel)</c>).</summary>
    public static MagnitudeMask Magnitude(ReadOnlySpan<double> values, double density)
    {
        long keep = (long)(density * values.Length);
        if (keep <= 0)
        {
            return new MagnitudeMask(ulong.MaxValue, 0); // no |value|'s bits reach ulong.MaxValue: nothing is kept
        }
        // Radix select on the bit patterns of |value|, which order like the values (non-negative doubles,
        // NaN above infinity): find the keep-th largest, 16 bits at a time from the top.
        ulong prefix = 0, prefixMask = 0;
        long remaining = keep;
        var histogram = new long[1 << 16];
        for (int shift = 48; shift >= 0; shift -= 16)
        {
            Array.Clear(histogram);
            foreach (double v in values)
            {
                ulong bits = MagnitudeBits(v);
                if ((bits & prefixMask) == prefix)
                {
                    histogram[(int)((bits >> shift) & 0xFFFF)]++;
                }
            }
            int digit = 0xFFFF;
            while (remaining > histogram[digit])
            {
                remaining -= histogram[digit--];
            }
            prefix |= (ulong)digit << shift;
            prefixMask |= 0xFFFFUL << shift;
        }
        return new MagnitudeMask(prefix, remaining);
    }

    private static ulong MagnitudeBits(double value) => BitConverter.DoubleToUInt64Bits(value) & 0x7FFF_FFFF_FFFF_FFFF;

    /// <summary>
    /// DARE's random pruning with rescaling of a tile whose first entry is entry <paramref name="firstIndex"/> of its
    /// tensor: entry j is kept, divided by the density, when draw j of <paramref name="stream"/> is below the density.
    /// </summary>
    public static void DropAtRandom(Span<double> tile, long firstIndex, ulong stream, double density)
    {
        for (int i = 0; i < tile.Length; i++)
        {
            tile[i] = SeededRandom.Uniform(stream, firstIndex + i) < density ? tile[i] / density : 0;
        }
    }

    /// <summary>+1, -1, or 0 for zero and NaN (as torch.sign, whose NaN never equals an elected sign).</summary>
    private static int Sign(double t) => t > 0 ? 1 : t < 0 ? -1 : 0;

    /// <summary>
    /// Combines E pruned tiles (<paramref name="tiles"/> holds them one after another, each as long as
    /// <paramref name="destination"/>) with weights w_i: the weighted sum, or with <paramref name="election"/> the
    /// TIES disjoint mean: keep the entries whose sign equals the elected one (a zero entry never does), divide their
    /// weighted sum by their count (at least 1).
    /// </summary>
    public static void Combine(ReadOnlySpan<double> tiles, ReadOnlySpan<double> weights, SignElection? election, Span<double> destination)
    {
        int n = destination.Length, experts = weights.Length;
        for (int j = 0; j < n; j++)
        {
            if (election is null)
            {
                double sum = 0;
                for (int e = 0; e < experts; e++)
                {
                    sum += weights[e] * tiles[e * n + j];
                }
                destination[j] = sum;
                continue;
            }
            double vote = 0;
            for (int e = 0; e < experts; e++)
            {
                double t = tiles[e * n + j];
                vote += election == SignElection.Total ? t : Sign(t);
            }
            int elected = vote >= 0 ? 1 : -1;
            double agreeing = 0;
            int count = 0;
            for (int e = 0; e < experts; e++)
            {
                double t = tiles[e * n + j];
                if (Sign(t) == elected)
                {
                    agreeing += weights[e] * t;
                    count++;
                }
            }
            destination[j] = agreeing / Math.Max(count, 1);
        }
    }
}
