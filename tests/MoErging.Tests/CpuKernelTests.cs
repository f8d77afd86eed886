using System.Globalization;
using MoErging.Execution;
using MoErging.Execution.Cpu;
using MoErging.Experts;

namespace MoErging.Tests;

/// <summary>
/// The CPU kernels at every register width they have (128, 256 and 512 bits; a width this machine lacks runs
/// emulated, so every width is checked everywhere) and every weight precision, against float64 sums written here, on
/// fresh seeded shapes that hit every tile remainder: ranks that leave a short last panel, token counts that leave
/// every shorter token tile (1 to 7), lengths that leave an odd block or a scalar tail, column ranges that start and
/// end off a vector boundary, expert counts that leave a short last panel.
/// Tolerance: for the expand, float32 summation of its rank terms plus y's own rounding; for the blocked shrink and
/// scores a chain of at most <see cref="CpuScores.Block"/> terms per block plus one addition per block,
/// 2 · (min(n, Block) + n / Block + 1) · 2⁻²⁴ · Σ|terms|; the weights are compared as stored (<see cref="Stored"/>), so
/// the bound is the arithmetic's alone.
/// </summary>
public sealed unsafe class CpuKernelTests
{
    private const double Unit = 1.0 / (1 << 24);

    public static TheoryData<string, WeightPrecision> Widths()
    {
        var data = new TheoryData<string, WeightPrecision>();
        foreach (string width in new[] { "128", "256", "512" })
        {
            foreach (WeightPrecision precision in Enum.GetValues<WeightPrecision>())
            {
                data.Add(width, precision);
            }
        }
        return data;
    }

    public static TheoryData<string, WeightPrecision> SixteenBitWidths()
    {
        var data = new TheoryData<string, WeightPrecision>();
        foreach (string width in new[] { "128", "256", "512" })
        {
            data.Add(width, WeightPrecision.BFloat16);
            data.Add(width, WeightPrecision.Float16);
        }
        return data;
    }

    /// <summary>
    /// (rank, tokens, n): one panel or several with a short last one, every token tile, odd blocks and tails, and calls of
    /// several tiles with a short last one, up to the most tokens a call takes.
    /// </summary>
    private static readonly (int Rank, int Tokens, int N)[] ShrinkShapes =
        [(1, 1, 37), (3, 2, 300), (5, 3, 517), (16, 5, 4096), (17, 7, 1029), (8, 8, 256), (33, 4, 64), (16, 8, 1), (2, 6, 255), (24, 1, 513), (16, 2, 1029), (9, 1, 2048),
         (16, 9, 600), (5, 13, 37), (17, 23, 771), (16, CpuKernels.MaxShrinkTokens, 517)];

    [Theory]
    [MemberData(nameof(Widths))]
    public void ShrinkMatchesTheFloat64DotProductsAndWritesOnlyItsOutputs(string width, WeightPrecision precision)
    {
        var data = new TestData();
        foreach ((int rank, int tokens, int n) in ShrinkShapes)
        {
            float[] a = Stored.Values(data.Normal(rank * n), precision);
            float[] x = data.Normal(tokens * n);
            int stride = rank + 3; // a gap after each token's outputs, which must stay untouched
            float[] output = Shrink(width, precision, a, rank, x, tokens, n, stride);
            AssertBlockedDots(a, rank, x, tokens, n, output, stride, $"{data}: {width}-bit {precision} shrink of rank {rank} × {tokens} tokens, n = {n}");
        }
    }

    [Theory]
    [InlineData(WeightPrecision.Float32)]
    [InlineData(WeightPrecision.BFloat16)]
    [InlineData(WeightPrecision.Float16)]
    public void ShrinkIsTheSameBitsAtEveryRegisterWidth(WeightPrecision precision)
    {
        var data = new TestData();
        foreach ((int rank, int tokens, int n) in ShrinkShapes)
        {
            float[] a = Stored.Values(data.Normal(rank * n), precision);
            float[] x = data.Normal(tokens * n);
            AssertSameBitsAtEveryWidth(width => Shrink(width, precision, a, rank, x, tokens, n, rank),
                $"{data}: {precision} shrink of rank {rank} × {tokens} tokens, n = {n}");
        }
    }

    /// <summary>
    /// The shrink's exact order, written here in scalar float32: each block of <see cref="CpuScores.Block"/> terms as
    /// an even and an odd chain of fused multiply-adds, added together, then added to the running sum, block after
    /// block. Every tile and every register width must give these bits, so no change of tiling may reorder a sum.
    /// </summary>
    [Theory]
    [MemberData(nameof(Widths))]
    public void ShrinkSumsEachBlockAsTwoChainsInOrder(string width, WeightPrecision precision)
    {
        var data = new TestData();
        foreach ((int rank, int tokens, int n) in ShrinkShapes)
        {
            float[] a = Stored.Values(data.Normal(rank * n), precision);
            float[] x = data.Normal(tokens * n);
            float[] output = Shrink(width, precision, a, rank, x, tokens, n, rank);
            for (int t = 0; t < tokens; t++)
            {
                for (int r = 0; r < rank; r++)
                {
                    float sum = 0;
                    for (int k0 = 0; k0 < n; k0 += CpuScores.Block)
                    {
                        int k = k0, k1 = Math.Min(n, k0 + CpuScores.Block);
                        float even = 0, odd = 0;
                        for (; k < k1 - 1; k += 2)
                        {
                            even = MathF.FusedMultiplyAdd(a[r * n + k], x[t * n + k], even);
                            odd = MathF.FusedMultiplyAdd(a[r * n + k + 1], x[t * n + k + 1], odd);
                        }
                        if (k < k1)
                        {
                            even = MathF.FusedMultiplyAdd(a[r * n + k], x[t * n + k], even);
                        }
                        sum += even + odd;
                    }
                    float got = output[t * rank + r];
                    Assert.True(BitConverter.SingleToInt32Bits(got) == BitConverter.SingleToInt32Bits(sum),
                        $"{data}: {width}-bit {precision} shrink of rank {rank} × {tokens} tokens, n = {n}: token {t} row {r} is {got:R}, in order {sum:R}");
                }
            }
        }
    }

    /// <summary>
    /// output[t · stride + r] against the float64 dot product of row r of <paramref name="rows"/> and token t, within the
    /// blocked summation's bound (a chain of at most Block terms per block, then one addition per block), and NaN, never
    /// written, past the rows.
    /// </summary>
    private static void AssertBlockedDots(float[] rows, int rowCount, float[] x, int tokens, int n, float[] output, int stride, string what)
    {
        for (int t = 0; t < tokens; t++)
        {
            for (int r = 0; r < stride; r++)
            {
                float got = output[t * stride + r];
                if (r >= rowCount)
                {
                    Assert.True(float.IsNaN(got), $"{what}: token {t} row {r} is past the rows but was written ({got:R})");
                    continue;
                }
                double sum = 0, magnitude = 0;
                for (int i = 0; i < n; i++)
                {
                    double term = (double)rows[r * n + i] * x[t * n + i];
                    sum += term;
                    magnitude += Math.Abs(term);
                }
                double bound = 2 * (Math.Min(n, CpuScores.Block) + n / CpuScores.Block + 1) * Unit * magnitude;
                Assert.True(Math.Abs(got - sum) <= bound, $"{what}: token {t} row {r}: {got:R}, expected {sum:R}");
            }
        }
    }

    /// <summary>The outputs of <paramref name="run"/> at 256 and 512 bits, bit for bit those at 128.</summary>
    private static void AssertSameBitsAtEveryWidth(Func<string, float[]> run, string what)
    {
        float[] at128 = run("128");
        foreach (string width in new[] { "256", "512" })
        {
            float[] other = run(width);
            for (int i = 0; i < other.Length; i++)
            {
                Assert.True(BitConverter.SingleToInt32Bits(other[i]) == BitConverter.SingleToInt32Bits(at128[i]),
                    $"{what}: output {i} is {other[i]:R} at {width} bits, {at128[i]:R} at 128");
            }
        }
    }

    /// <summary>
    /// v[t · stride + r] = A[r] · x[t] through <see cref="CpuKernels.PackPanels{T}"/> of Aᵀ and one call per panel of rank
    /// rows (the register's lanes at the width under test), NaN elsewhere; NaN past the panels turns any read beyond
    /// them into a wrong result.
    /// </summary>
    private static float[] Shrink(string width, WeightPrecision precision, float[] a, int rank, float[] x, int tokens, int n, int stride)
    {
        int lanes = int.Parse(width, CultureInfo.InvariantCulture) / 32, elements = CpuKernels.PanelElements(n, rank, lanes), guard = 2 * lanes;
        float[] panels = [.. Enumerable.Repeat(float.NaN, elements + guard)];
        ushort[] bits = [.. Enumerable.Repeat(precision == WeightPrecision.Float16 ? (ushort)0x7E00 : (ushort)0x7FC0, elements + guard)]; // quiet NaNs
        CpuKernels.PackPanels<float>(a, n, rank, 1, n, lanes, panels);
        if (precision != WeightPrecision.Float32)
        {
            CpuKernels.PackPanels<ushort>([.. a.Select(v => Stored.Bits(v, precision))], n, rank, 1, n, lanes, bits);
        }
        float[] output = [.. Enumerable.Repeat(float.NaN, tokens * stride)];
        float** xs = stackalloc float*[CpuKernels.MaxShrinkTokens];
        float** vs = stackalloc float*[CpuKernels.MaxShrinkTokens];
        fixed (float* pa = panels, px = x, po = output)
        fixed (ushort* pb = bits)
        {
            for (int r0 = 0; r0 < rank; r0 += lanes)
            {
                byte* panel = (precision == WeightPrecision.Float32 ? (byte*)pa : (byte*)pb) + (long)r0 * n * WeightStorage.ElementSize(precision);
                for (int t = 0; t < tokens; t++)
                {
                    xs[t] = px + (long)t * n;
                    vs[t] = po + (long)t * stride + r0;
                }
                int rows = Math.Min(lanes, rank - r0);
                switch (width)
                {
                    case "128":
                        CpuKernels.Shrink<Lanes128>(precision, panel, n, rows, tokens, xs, vs);
                        break;
                    case "256":
                        CpuKernels.Shrink<Lanes256>(precision, panel, n, rows, tokens, xs, vs);
                        break;
                    default:
                        CpuKernels.Shrink<Lanes512>(precision, panel, n, rows, tokens, xs, vs);
                        break;
                }
            }
        }
        return output;
    }

    [Theory]
    [MemberData(nameof(Widths))]
    public void ScoreMatchesTheFloat64DotProductsOfThePackedPrototypesAndWritesOnlyItsOutputs(string width, WeightPrecision precision)
    {
        var data = new TestData();
        foreach ((int experts, int tokens, int n) in ScoreShapes)
        {
            float[] prototypes = Stored.Values(data.Normal(experts * n), precision);
            float[] x = data.Normal(tokens * n);
            int tokenStride = experts + 3; // a gap after each token's scores, which must stay untouched
            float[] scores = Score(width, precision, prototypes, experts, x, tokens, n, tokenStride);
            AssertBlockedDots(prototypes, experts, x, tokens, n, scores, tokenStride,
                $"{data}: {width}-bit {precision} scores of {tokens} tokens × {experts} experts, n = {n}");
        }
    }

    [Theory]
    [InlineData(WeightPrecision.Float32)]
    [InlineData(WeightPrecision.BFloat16)]
    [InlineData(WeightPrecision.Float16)]
    public void ScoresAreTheSameBitsAtEveryRegisterWidth(WeightPrecision precision)
    {
        var data = new TestData();
        foreach ((int experts, int tokens, int n) in ScoreShapes)
        {
            float[] prototypes = Stored.Values(data.Normal(experts * n), precision);
            float[] x = data.Normal(tokens * n);
            AssertSameBitsAtEveryWidth(width => Score(width, precision, prototypes, experts, x, tokens, n, experts),
                $"{data}: {precision} {tokens} tokens × {experts} experts, n = {n}");
        }
    }

    /// <summary>
    /// 16-bit prototypes give, bit for bit, the float32 scores of their values: read in place for one token tile, widened
    /// once per block for more (the shapes cross that threshold at every width). Every eighth value is scaled into
    /// binary16's subnormal range, where an inexact widening would show first.
    /// </summary>
    [Theory]
    [MemberData(nameof(SixteenBitWidths))]
    public void ScoresOf16BitPrototypesAreTheFloat32ScoresOfTheirValues(string width, WeightPrecision precision)
    {
        var data = new TestData();
        foreach ((int experts, int tokens, int n) in ScoreShapes)
        {
            float[] values = data.Normal(experts * n);
            for (int i = 0; i < values.Length; i += 8)
            {
                values[i] *= 1e-6f;
            }
            float[] prototypes = Stored.Values(values, precision);
            float[] x = data.Normal(tokens * n);
            float[] expected = Score(width, WeightPrecision.Float32, prototypes, experts, x, tokens, n, experts);
            float[] actual = Score(width, precision, prototypes, experts, x, tokens, n, experts);
            for (int i = 0; i < expected.Length; i++)
            {
                Assert.True(BitConverter.SingleToInt32Bits(actual[i]) == BitConverter.SingleToInt32Bits(expected[i]),
                    $"{data}: {width}-bit {precision} score {i} of {tokens} tokens × {experts} experts, n = {n}: {actual[i]:R}, float32 on the same values {expected[i]:R}");
            }
        }
    }

    /// <summary>(experts, tokens, n): one panel or several with a short last one, token tiles with every remainder.</summary>
    private static readonly (int Experts, int Tokens, int N)[] ScoreShapes =
        [(1, 1, 37), (3, 2, 64), (5, 3, 300), (37, 9, 517), (64, 16, 4096), (20, 13, 1029), (33, 8, 256), (8, 7, 255),
         (17, 6, 100), (40, 12, 130), (9, 14, 77), (2, 4, 1), (33, 64, 520), (6, 45, 300)];

    /// <summary>
    /// The scores of every token against every prototype, through <see cref="CpuScores.Pack"/> and one call per panel; the
    /// panel width picks the register width (emulated where the machine lacks it).
    /// </summary>
    private static float[] Score(string width, WeightPrecision precision, float[] prototypes, int experts, float[] x, int tokens, int n, int tokenStride)
    {
        int panelWidth = width switch
        {
            "128" => CpuScores.PanelWidthOf<Lanes128>(),
            "256" => CpuScores.PanelWidthOf<Lanes256>(),
            _ => CpuScores.PanelWidthOf<Lanes512>(),
        };
        Array panels = CpuScores.Pack(prototypes, experts, n, panelWidth, precision);
        float[] scores = [.. Enumerable.Repeat(float.NaN, tokens * tokenStride)];
        fixed (float* px = x, ps = scores)
        {
            for (int e0 = 0; e0 < experts; e0 += panelWidth)
            {
                void* panel = (byte*)WeightStorage.Address(panels) + e0 / panelWidth * CpuScores.PanelElements(n, panelWidth) * WeightStorage.ElementSize(precision);
                CpuScores.Score(precision, panelWidth, panel, Math.Min(panelWidth, experts - e0), px, tokens, n, ps + e0, tokenStride);
            }
        }
        return scores;
    }

    [Theory]
    [MemberData(nameof(Widths))]
    public void ExpandAddsEachTokensRankSumIntoItsColumnsOnly(string width, WeightPrecision precision)
    {
        var data = new TestData();
        float** vs = stackalloc float*[CpuKernels.MaxTileTokens];
        float** ys = stackalloc float*[CpuKernels.MaxTileTokens];
        foreach ((int tokens, int rank, int j0, int j1, int stride) in new[]
        {
            (1, 1, 0, 1, 1), (1, 1, 0, 7, 7), (1, 16, 0, 1024, 1030), (2, 5, 3, 130, 140), (2, 16, 5, 700, 720), (3, 16, 64, 1000, 1029), (4, 16, 0, 512, 512), (4, 3, 17, 18, 40),
            (5, 16, 0, 99, 100), (6, 7, 32, 200, 230), (7, 16, 1, 64, 70), (8, 16, 0, 1024, 1030), (8, 2, 5, 36, 40),
        })
        {
            float[] bT = Stored.Values(data.Normal(rank * stride), precision);
            // The kernel reads Bᵀ in panels of two registers' worth of columns at the width under test. NaN past the
            // panels turns any read beyond them into a wrong result.
            int panelColumns = 2 * int.Parse(width, CultureInfo.InvariantCulture) / 32, elements = CpuKernels.PanelElements(rank, stride, panelColumns);
            int guard = rank * panelColumns;
            float[] panels = [.. Enumerable.Repeat(float.NaN, elements + guard)];
            ushort[] bits = [.. Enumerable.Repeat(precision == WeightPrecision.Float16 ? (ushort)0x7E00 : (ushort)0x7FC0, elements + guard)]; // quiet NaNs
            CpuKernels.PackPanels<float>(bT, rank, stride, stride, 1, panelColumns, panels);
            if (precision != WeightPrecision.Float32)
            {
                CpuKernels.PackPanels<ushort>([.. bT.Select(v => Stored.Bits(v, precision))], rank, stride, stride, 1, panelColumns, bits);
            }
            float[] v = data.Normal(tokens * rank);
            // Two slots of one token (a repeated expert is a pair of its own) add into the same row, one after the other.
            int rows = tokens is 4 or 8 ? tokens - 1 : tokens;
            float[] y = data.Normal(rows * stride);
            float[] before = [.. y], split = [.. y];
            // The same columns in two calls, split off a panel boundary: every column is summed the same way whichever call holds it.
            int middle = Math.Min(j1, j0 + (j1 - j0) / 2 + 1);
            fixed (float* pb = panels, pv = v, py = y, ps = split)
            fixed (ushort* pbits = bits)
            {
                void* weights = precision == WeightPrecision.Float32 ? pb : pbits;
                Expand(width, precision, weights, rank, tokens, pv, py, rows, stride, j0, j1, vs, ys);
                Expand(width, precision, weights, rank, tokens, pv, ps, rows, stride, j0, middle, vs, ys);
                Expand(width, precision, weights, rank, tokens, pv, ps, rows, stride, middle, j1, vs, ys);
            }
            for (int i = 0; i < y.Length; i++)
            {
                Assert.True(BitConverter.SingleToInt32Bits(split[i]) == BitConverter.SingleToInt32Bits(y[i]),
                    $"{data}: {width}-bit {precision} expand of {tokens} tokens, rank {rank}, columns [{j0}, {j1}) split at {middle}: " +
                    $"element {i} = {split[i]:R}, in one call {y[i]:R}");
            }
            for (int row = 0; row < rows; row++)
            {
                for (int j = 0; j < stride; j++)
                {
                    double expected = before[row * stride + j], magnitude = Math.Abs(expected);
                    if (j >= j0 && j < j1)
                    {
                        for (int i = 0; i < tokens; i++)
                        {
                            if (Math.Min(i, rows - 1) != row)
                            {
                                continue;
                            }
                            for (int k = 0; k < rank; k++)
                            {
                                double term = (double)v[i * rank + k] * bT[k * stride + j];
                                expected += term;
                                magnitude += Math.Abs(term);
                            }
                        }
                    }
                    float got = y[row * stride + j];
                    string what = $"{data}: {width}-bit {precision} expand of {tokens} tokens, rank {rank}, columns [{j0}, {j1}): y[{row}][{j}]";
                    Assert.True(Math.Abs(got - expected) <= 2 * (rank + 2) * Unit * magnitude, $"{what} = {got:R}, expected {expected:R}");
                }
            }
        }
    }

    /// <summary>
    /// One expand call at the width under test: token i's rank terms at v + i · rank, into row min(i, rows − 1) of y.
    /// </summary>
    private static void Expand(string width, WeightPrecision precision, void* panels, int rank, int tokens, float* v, float* y, int rows, int stride,
        int j0, int j1, float** vs, float** ys)
    {
        for (int i = 0; i < tokens; i++)
        {
            vs[i] = v + (long)i * rank;
            ys[i] = y + (long)Math.Min(i, rows - 1) * stride;
        }
        switch (width)
        {
            case "128":
                CpuKernels.Expand<Lanes128>(precision, panels, rank, tokens, vs, ys, j0, j1);
                break;
            case "256":
                CpuKernels.Expand<Lanes256>(precision, panels, rank, tokens, vs, ys, j0, j1);
                break;
            default:
                CpuKernels.Expand<Lanes512>(precision, panels, rank, tokens, vs, ys, j0, j1);
                break;
        }
    }
}
