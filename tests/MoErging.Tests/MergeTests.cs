using System.Text.Json;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Merging;
using MoErging.Numerics;
using static MoErging.Tests.MergeReference;

namespace MoErging.Tests;

/// <summary>
/// Every merge against the float64 reference in <see cref="MergeReference"/>: cat and svd exactly (to float32
/// rounding of the result), TIES, DARE and magnitude pruning on small tensors in both spaces with the same seed,
/// literal hand-worked cases, the randomized SVD's near-optimality, and the PEFT adapter the merge writes.
/// </summary>
public sealed class MergeTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    private static double[] Weights(TestData data, int count) =>
        [.. Enumerable.Range(0, count).Select(_ => Math.Round(data.Rng.NextDouble() * 2.5 - 1, 3))];

    private static double[] Wide(ReadOnlySpan<float> values) => [.. values.ToArray().Select(v => (double)v)];

    private static double[] PeftB(LoraFactors f)
    {
        var b = new float[f.OutputDim * f.Rank];
        f.CopyB(b);
        return Wide(b);
    }

    [Fact]
    public void CatStacksScaledFactorsExactly()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, dIn: 11, dOut: 7, ranks: [2, 5, 3]);
        double[] w = Weights(data, 3);
        LoraFactors f = ExpertMerge.Merge(lib.Library, w, new MergeOptions(MergeMethod.Cat)).Modules[Module];
        Assert.True(f.Rank == 10 && f.Scaling == 1f && f.Alpha == 10f, $"{data}: rank {f.Rank}, scaling {f.Scaling}, alpha {f.Alpha}");

        // Structure, bit for bit: A's rows are (float)(c_i · A_i) rounded once from float64; B's columns are B_i's.
        double[] b = PeftB(f);
        int row = 0;
        var expected = new double[7 * 11];
        for (int e = 0; e < 3; e++)
        {
            RawFactors raw = lib.Raw[Module][e]!;
            double c = w[e] * raw.Scaling;
            for (int i = 0; i < raw.A.Length; i++)
            {
                Assert.True((float)(c * raw.A[i]) == f.A[row * 11 + i], $"{data}: A[{row * 11 + i}]");
            }
            for (int o = 0; o < 7; o++)
            {
                for (int k = 0; k < raw.Rank; k++)
                {
                    Assert.True(raw.B[o * raw.Rank + k] == b[o * 10 + row + k], $"{data}: B[{o}, {row + k}]");
                }
            }
            row += raw.Rank;
            double[] delta = Delta(raw, c);
            for (int i = 0; i < delta.Length; i++)
            {
                expected[i] += delta[i];
            }
        }
        // Function: B A = Σ c_i B_i A_i up to the float32 rounding of A (relative 2⁻²⁴ per entry, summed over rank 10).
        Close(Delta(f), expected, 1e-5, $"{data}: cat ΔW");
    }

    [Fact]
    public void LinearMergesFactorsSeparatelyWithPeftsSquareRootWeights()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, dIn: 9, dOut: 6, ranks: [4]);
        double[] w = [.. Weights(data, 2), 0]; // a zero weight has sign +1 in PEFT
        LoraFactors f = ExpertMerge.Merge(lib.Library, w, new MergeOptions(MergeMethod.Linear)).Modules[Module];
        Assert.Equal(4, f.Rank);
        var a = new double[4 * 9];
        var b = new double[6 * 4];
        for (int e = 0; e < 3; e++)
        {
            RawFactors raw = lib.Raw[Module][e]!;
            double c = w[e] * raw.Scaling, beta = Math.Sqrt(Math.Abs(c)), alpha = c >= 0 ? beta : -beta;
            for (int i = 0; i < a.Length; i++)
            {
                a[i] += alpha * raw.A[i];
            }
            for (int i = 0; i < b.Length; i++)
            {
                b[i] += beta * raw.B[i];
            }
        }
        Close(Wide(f.A), a, 1e-6, $"{data}: linear A");
        Close(PeftB(f), b, 1e-6, $"{data}: linear B");
    }

    [Fact]
    public void SvdIsTheExactDeltaWithTheScalingAppliedOnceThenTruncated()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, dIn: 14, dOut: 12, ranks: [2, 3, 4]);
        double[] w = Weights(data, 3);
        var expected = new double[12 * 14];
        for (int e = 0; e < 3; e++)
        {
            RawFactors raw = lib.Raw[Module][e]!;
            double[] delta = Delta(raw, w[e] * raw.Scaling);
            for (int i = 0; i < delta.Length; i++)
            {
                expected[i] += delta[i];
            }
        }

        // Rank 9 = Σ r_i holds ΔW exactly.
        LoraFactors full = ExpertMerge.Merge(lib.Library, w, new MergeOptions(MergeMethod.Svd) { Rank = 9 }).Modules[Module];
        Assert.Equal(9, full.Rank);
        Close(Delta(full), expected, 1e-5, $"{data}: svd rank 9");

        // The default rank is the largest expert rank (4): the best rank-4 approximation. B = U Σ and A = Vᵀ, so
        // A's rows are orthonormal, B's column norms are the singular values, and the residual is the tail.
        LoraFactors top = ExpertMerge.Merge(lib.Library, w, new MergeOptions(MergeMethod.Svd)).Modules[Module];
        Assert.Equal(4, top.Rank);
        double[] sigma = SingularValues(expected, 12, 14);
        double[] b = PeftB(top);
        for (int j = 0; j < 4; j++)
        {
            double norm = Math.Sqrt(Enumerable.Range(0, 12).Sum(o => b[o * 4 + j] * b[o * 4 + j]));
            Assert.True(Math.Abs(norm - sigma[j]) <= 1e-5 * sigma[0], $"{data}: σ_{j} = {norm}, expected {sigma[j]}");
            for (int l = 0; l < 4; l++)
            {
                double dot = Enumerable.Range(0, 14).Sum(i => (double)top.A[j * 14 + i] * top.A[l * 14 + i]);
                Assert.True(Math.Abs(dot - (j == l ? 1 : 0)) <= 1e-6, $"{data}: A rows {j}, {l}: {dot}");
            }
        }
        double[] approx = Delta(top);
        double residual = expected.Select((v, i) => (v - approx[i]) * (v - approx[i])).Sum();
        double tail = sigma.Skip(4).Sum(s => s * s);
        Assert.True(Math.Abs(residual - tail) <= 1e-5 * sigma[0] * sigma[0], $"{data}: residual {residual}, optimal {tail}");

        // A rank beyond min(d_in, d_out) is capped there.
        Assert.Equal(12, ExpertMerge.Merge(lib.Library, w, new MergeOptions(MergeMethod.Svd) { Rank = 50 }).Modules[Module].Rank);
    }

    [Theory]
    [InlineData(MergeMethod.Ties, null)]
    [InlineData(MergeMethod.Ties, SignElection.Frequency)]
    [InlineData(MergeMethod.MagnitudePrune, null)]
    [InlineData(MergeMethod.DareLinear, null)]
    [InlineData(MergeMethod.DareTies, null)]
    [InlineData(MergeMethod.DareTies, SignElection.Frequency)]
    public void PruningMergesInDeltaSpaceMatchTheReference(MergeMethod method, SignElection? election)
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 4, dIn: 8, dOut: 6, ranks: [2, 3, 1]);
        double[] w = Weights(data, 4);
        double density = method is MergeMethod.Ties or MergeMethod.MagnitudePrune ? 0.4 : 0.6;
        int seed = data.Rng.Next();
        bool dare = method is MergeMethod.DareLinear or MergeMethod.DareTies;
        var options = new MergeOptions(method) { Density = density, Seed = seed, Rank = 6, SignElection = election };
        LoraFactors f = ExpertMerge.Merge(lib.Library, w, options).Modules[Module];

        var pruned = new double[4][];
        for (int e = 0; e < 4; e++)
        {
            RawFactors raw = lib.Raw[Module][e]!;
            double[] tau = Delta(raw, raw.Scaling);
            pruned[e] = dare ? PruneRandom(tau, density, Stream(seed, Module, e, 0)) : PruneMagnitude(tau, density);
        }
        double[] expected = Combine(pruned, w, ties: method is MergeMethod.Ties or MergeMethod.DareTies, election == SignElection.Frequency);
        // Rank 6 = min(d_out, d_in) represents the merged ΔW exactly, up to float32 rounding of the factors.
        Close(Delta(f), expected, 1e-5, $"{data}, seed {seed}: {method} in ΔW space");
    }

    [Theory]
    [InlineData(MergeMethod.Ties, null)]
    [InlineData(MergeMethod.MagnitudePrune, null)]
    [InlineData(MergeMethod.DareLinear, null)]
    [InlineData(MergeMethod.DareTies, SignElection.Frequency)]
    public void PruningMergesInFactorSpaceMatchPeftsFormulas(MergeMethod method, SignElection? election)
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, dIn: 10, dOut: 7, ranks: [3]);
        double[] w = Weights(data, 3);
        double density = 0.5;
        int seed = data.Rng.Next();
        bool dare = method is MergeMethod.DareLinear or MergeMethod.DareTies, ties = method is MergeMethod.Ties or MergeMethod.DareTies;
        var options = new MergeOptions(method) { Density = density, Seed = seed, Space = MergeSpace.Factors, SignElection = election };
        LoraFactors f = ExpertMerge.Merge(lib.Library, w, options).Modules[Module];
        Assert.Equal(3, f.Rank);

        var alphas = new double[3];
        var betas = new double[3];
        var aTensors = new double[3][];
        var bTensors = new double[3][];
        for (int e = 0; e < 3; e++)
        {
            RawFactors raw = lib.Raw[Module][e]!;
            double c = w[e] * raw.Scaling;
            betas[e] = Math.Sqrt(Math.Abs(c));
            alphas[e] = c >= 0 ? betas[e] : -betas[e];
            double[] a = Wide(raw.A), b = Wide(raw.B);
            aTensors[e] = dare ? PruneRandom(a, density, Stream(seed, Module, e, 1)) : PruneMagnitude(a, density);
            bTensors[e] = dare ? PruneRandom(b, density, Stream(seed, Module, e, 2)) : PruneMagnitude(b, density);
        }
        bool frequency = election == SignElection.Frequency;
        Close(Wide(f.A), Combine(aTensors, alphas, ties, frequency), 1e-6, $"{data}, seed {seed}: {method} A");
        Close(PeftB(f), Combine(bTensors, betas, ties, frequency), 1e-6, $"{data}, seed {seed}: {method} B");
    }

    private static Expert Literal(string name, float[] a, float[] b) =>
        new(name, [new(Module, new LoraFactors(a, b, rank: 1, inputDim: 4, outputDim: 2, scaling: 1f))]);

    [Fact]
    public void TiesAndMagnitudePruningByHand()
    {
        // A_1 = [4, -1, 2, -3], A_2 = [-5, 1, 1, 2]; B_1 = [1, -2]ᵀ, B_2 = [3, 0.5]ᵀ; w = [1, 0.25], s = 1, density 0.5.
        // Factor weights: √c = [1, 0.5] for A and B alike (both weights positive).
        // Top half by magnitude: A_1 → [4, 0, 0, -3], A_2 → [-5, 0, 0, 2]; B_1 → [0, -2], B_2 → [3, 0].
        // TIES signs (sum of pruned): A [-1, 0, 0, -1] → [-, +, +, -]; B [3, -2] → [+, -].
        //   A = [0.5·(-5), 0, 0, 1·(-3)] = [-2.5, 0, 0, -3]; B = [0.5·3, 1·(-2)] = [1.5, -2].
        // Magnitude pruning sums instead: A = [4 - 2.5, 0, 0, -3 + 1] = [1.5, 0, 0, -2]; B = [1.5, -2].
        var library = new ExpertLibrary([Literal("one", [4, -1, 2, -3], [1, -2]), Literal("two", [-5, 1, 1, 2], [3, 0.5f])]);
        double[] w = [1, 0.25];
        LoraFactors ties = ExpertMerge.Merge(library, w, new MergeOptions(MergeMethod.Ties) { Density = 0.5, Space = MergeSpace.Factors }).Modules[Module];
        Assert.Equal([-2.5f, 0, 0, -3], ties.A.ToArray());
        Assert.Equal([1.5f, -2], ties.BTransposed.ToArray());
        LoraFactors magnitude = ExpertMerge.Merge(library, w, new MergeOptions(MergeMethod.MagnitudePrune) { Density = 0.5, Space = MergeSpace.Factors }).Modules[Module];
        Assert.Equal([1.5f, 0, 0, -2], magnitude.A.ToArray());
        Assert.Equal([1.5f, -2], magnitude.BTransposed.ToArray());
    }

    [Fact]
    public void MagnitudeThresholdKeepsTheLargestWithTiesToTheLowerIndexAcrossTiles()
    {
        var data = new TestData();
        for (int round = 0; round < 200; round++)
        {
            int n = 1 + data.Rng.Next(60);
            // Few distinct magnitudes, so ties at the threshold are the rule; plus ±0, ±∞ and NaN.
            double[] special = [0.0, -0.0, double.PositiveInfinity, double.NegativeInfinity, double.NaN];
            double[] t = [.. Enumerable.Range(0, n).Select(_ => data.Rng.Next(10) == 0
                ? special[data.Rng.Next(special.Length)]
                : (data.Rng.Next(2) == 0 ? -1 : 1) * data.Rng.Next(4) * 0.5)];
            double density = data.Rng.NextDouble();
            // Reference: NaN ranks above everything, then |value| descending, then index.
            int keep = (int)(density * n);
            var kept = Enumerable.Range(0, n).OrderByDescending(i => double.IsNaN(t[i]) ? double.MaxValue : 0).ThenByDescending(i => double.IsNaN(t[i]) ? 0 : Math.Abs(t[i])).ThenBy(i => i).Take(keep).ToHashSet();
            double[] expected = [.. t.Select((v, i) => kept.Contains(i) ? v : 0)];

            var actual = (double[])t.Clone();
            var mask = TaskTensors.Magnitude(actual, density);
            for (int start = 0; start < n;)
            {
                int length = Math.Min(n - start, 1 + data.Rng.Next(8)); // random tiles, in order
                mask.Apply(actual.AsSpan(start, length));
                start += length;
            }
            for (int i = 0; i < n; i++)
            {
                Assert.True(BitConverter.DoubleToInt64Bits(actual[i]) == BitConverter.DoubleToInt64Bits(expected[i]) || (actual[i] == 0 && expected[i] == 0),
                    $"{data}, round {round}: entry {i} of [{string.Join(", ", t)}] at density {density}: {actual[i]}, expected {expected[i]}");
            }
        }
    }

    [Fact]
    public void DeltaSpaceTilesGiveTheSameResultAsOneTile()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, dIn: 9, dOut: 13, ranks: [2, 3]);
        AdaptedModule module = lib.Module(Module);
        var parts = Enumerable.Range(0, 3).Select(e => new Contribution(e, module.Factors(e)!, 0.5 + e)).ToList();
        foreach (MergeMethod method in new[] { MergeMethod.Ties, MergeMethod.DareTies })
        {
            LoraFactors one = PruneMerge.MergeDelta(parts, method, 0.3, SignElection.Total, 5, 7, Module, 11, _ => { });
            LoraFactors tiled = PruneMerge.MergeDelta(parts, method, 0.3, SignElection.Total, 5, 7, Module, 11, _ => { }, tileBudget: 2 * 3 * 9);
            Assert.True(one.A.SequenceEqual(tiled.A) && one.BTransposed.SequenceEqual(tiled.BTransposed), $"{data}: {method} differs when tiled by 2 rows");
        }
    }

    [Fact]
    public void DareIsReproducibleBySeedAndVariesWithIt()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 2, dIn: 8, dOut: 6, ranks: [3]);
        double[] w = [0.6, 0.9];
        LoraFactors Run(int seed) => ExpertMerge.Merge(lib.Library, w,
            new MergeOptions(MergeMethod.DareLinear) { Density = 0.5, Seed = seed, Space = MergeSpace.Factors }).Modules[Module];
        Assert.True(Run(5).A.SequenceEqual(Run(5).A), $"{data}: same seed, different result");
        Assert.False(Run(5).A.SequenceEqual(Run(6).A), $"{data}: seeds 5 and 6 dropped the same entries of 48");
    }

    [Fact]
    public void ExpertsThatDoNotAdaptAModuleTakeNoPart()
    {
        var data = new TestData();
        string other = "base_model.model.layers.1.mlp.down_proj";
        TestLibrary lib = data.Library(experts: 3, dIn: 6, dOut: 5, ranks: [2, 3, 4], modules: [Module, other], skip: [(1, other)]);
        double[] w = [1, 2, 3];
        Expert merged = ExpertMerge.Merge(lib.Library, w, new MergeOptions(MergeMethod.Cat));
        Assert.Equal(9, merged.Modules[Module].Rank);
        Assert.Equal(6, merged.Modules[other].Rank);
        double[] expected = Delta(lib.Raw[other][0]!, lib.Raw[other][0]!.Scaling);
        double[] third = Delta(lib.Raw[other][2]!, 3 * lib.Raw[other][2]!.Scaling);
        Close(Delta(merged.Modules[other]), [.. expected.Select((v, i) => v + third[i])], 1e-5, $"{data}: cat without expert 1");
    }

    [Fact]
    public void ProgressRisesToOne()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, dIn: 6, dOut: 5, ranks: [2], modules: [Module, "base_model.model.layers.1.mlp.down_proj"]);
        var reports = new List<MergeProgress>();
        var progress = new SynchronousProgress(reports.Add);
        ExpertMerge.Merge(lib.Library, [1, 1, 1], new MergeOptions(MergeMethod.Ties) { Density = 0.5, Progress = progress });
        Assert.True(reports.Count >= 4, $"{reports.Count} reports");
        for (int i = 1; i < reports.Count; i++)
        {
            Assert.True(reports[i].Fraction >= reports[i - 1].Fraction, $"progress fell from {reports[i - 1].Fraction} to {reports[i].Fraction}");
        }
        Assert.Equal(1.0, reports[^1].Fraction);
    }

    [Fact]
    public void ProgressMovesWithinOneModuleWhoseSvdIsRandomized()
    {
        // Σ r = 520 and min(d_in, d_out) = 520, both above LowRank.ExactRankLimit: the slow, randomized path, which
        // must report as it goes, or a merge of many experts into one module shows no progress until it ends.
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 2, dIn: 520, dOut: 520, ranks: [260]);
        foreach (MergeMethod method in new[] { MergeMethod.Svd, MergeMethod.Ties })
        {
            var reports = new List<MergeProgress>();
            ExpertMerge.Merge(lib.Library, [1, 1], new MergeOptions(method) { Density = method == MergeMethod.Svd ? null : 0.5, Progress = new SynchronousProgress(reports.Add) });
            double[] within = [.. reports.Where(r => r.Module == 0).Select(r => r.ModuleFraction)];
            // One report per product with ΔW (2 + 2 · PowerIterations of them), all but the last strictly inside.
            Assert.True(within.Count(f => f > 0 && f < 1) >= 1 + 2 * LowRank.PowerIterations, $"{method}: fractions within the module {string.Join(", ", within)}");
            Assert.True(within.Zip(within.Skip(1)).All(p => p.First <= p.Second), $"{method}: progress fell: {string.Join(", ", within)}");
        }
    }

    private sealed class SynchronousProgress(Action<MergeProgress> report) : IProgress<MergeProgress>
    {
        public void Report(MergeProgress value) => report(value);
    }

    [Fact]
    public void BadOptionsAndMismatchedRanksAreNamedErrors()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 2, dIn: 6, dOut: 5, ranks: [2, 3]);
        ExpertLibrary library = lib.Library;
        void Fails(MergeOptions options, string phrase, double[]? w = null)
        {
            var e = Assert.ThrowsAny<ArgumentException>(() => ExpertMerge.Merge(library, w ?? [1, 1], options));
            Assert.Contains(phrase, e.Message);
        }
        Fails(new MergeOptions(MergeMethod.Ties) { Density = 0.5, Space = MergeSpace.Factors }, $"module '{Module}': Ties in factor space needs equal ranks, but expert 'e0' has rank 2 and expert 'e1' rank 3");
        Fails(new MergeOptions(MergeMethod.Linear), "needs equal ranks");
        Fails(new MergeOptions(MergeMethod.Ties), "Ties needs a density");
        Fails(new MergeOptions(MergeMethod.Cat) { Density = 0.5 }, "density applies only to");
        Fails(new MergeOptions(MergeMethod.DareLinear) { Density = 0 }, "density must be in (0, 1]");
        Fails(new MergeOptions(MergeMethod.DareLinear) { Density = 1.5 }, "density must be in (0, 1]");
        Fails(new MergeOptions(MergeMethod.Cat) { Rank = 4 }, "a rank applies only to svd");
        Fails(new MergeOptions(MergeMethod.Ties) { Density = 0.5, Space = MergeSpace.Factors, Rank = 2 }, "a rank applies only to svd");
        Fails(new MergeOptions(MergeMethod.Svd) { Rank = 0 }, "rank must be at least 1");
        Fails(new MergeOptions(MergeMethod.Cat) { Space = MergeSpace.Delta }, "Cat works in Factors space only");
        Fails(new MergeOptions(MergeMethod.Svd) { SignElection = SignElection.Total }, "sign election applies only to TIES");
        Fails(new MergeOptions(MergeMethod.Cat), "one weight per expert is needed (2), got 3", [1, 2, 3]);
        Fails(new MergeOptions(MergeMethod.Cat), "weight 1 is NaN", [1, double.NaN]);
    }

    [Fact]
    public void RandomizedSvdIsNearOptimalForLargeProductsAndDenseMatrices()
    {
        var data = new TestData();
        const int m = 520, n = 516, r = 514, k = 6; // r and min(m, n) above LowRank.ExactRankLimit
        double[] u = OrthonormalColumns(data, m, r), v = OrthonormalColumns(data, n, r);
        double[] sigma = [.. Enumerable.Range(0, r).Select(j => 10.0 / (1 + j))];
        var a = new double[r * n];      // A = Σ Vᵀ
        var bTransposed = new double[r * m]; // B = U
        var dense = new double[m * n];
        for (int j = 0; j < r; j++)
        {
            for (int i = 0; i < n; i++)
            {
                a[j * n + i] = sigma[j] * v[i * r + j];
            }
            for (int o = 0; o < m; o++)
            {
                bTransposed[j * m + o] = u[o * r + j];
            }
        }
        for (int o = 0; o < m; o++)
        {
            for (int j = 0; j < r; j++)
            {
                double c = u[o * r + j] * sigma[j];
                for (int i = 0; i < n; i++)
                {
                    dense[o * n + i] += c * v[i * r + j];
                }
            }
        }
        double optimal = sigma.Skip(k).Sum(s => s * s);
        foreach (var (what, svd) in new[]
        {
            ("product", LowRank.TruncatedSvdOfProduct(a, bTransposed, r, n, m, k, seed: 3)),
            ("dense", LowRank.TruncatedSvdOfDense(dense, m, n, k, seed: 3)),
        })
        {
            Assert.False(svd.IsExact, what);
            Assert.True(Math.Abs(svd.SingularValues[0] - sigma[0]) <= 1e-6 * sigma[0], $"{data}: {what}: σ_1 = {svd.SingularValues[0]}, expected {sigma[0]}");
            double residual = 0;
            for (int o = 0; o < m; o++)
            {
                for (int i = 0; i < n; i++)
                {
                    double approx = 0;
                    for (int j = 0; j < k; j++)
                    {
                        approx += svd.U[j * m + o] * svd.SingularValues[j] * svd.V[j * n + i];
                    }
                    residual += (dense[o * n + i] - approx) * (dense[o * n + i] - approx);
                }
            }
            // Near-optimal in the Frobenius norm: within 0.01% of the tail Σ_{j>k} σ_j² (about 1e-8 is typical here).
            Assert.True(residual <= (1 + 1e-4) * optimal, $"{data}: {what}: residual {residual}, optimal {optimal}");
        }
    }

    [Theory]
    [InlineData(double.NaN)]
    [InlineData(double.PositiveInfinity)]
    public void SvdOfANonFiniteInputIsANamedError(double poison)
    {
        var data = new TestData();
        const int r = 3, n = 7, m = 5;
        double[] a = data.Normal(r * n).Select(v => (double)v).ToArray(), bTransposed = data.Normal(r * m).Select(v => (double)v).ToArray();
        double[] dense = data.Normal(m * n).Select(v => (double)v).ToArray();
        a[data.Rng.Next(a.Length)] = poison;
        dense[data.Rng.Next(dense.Length)] = poison;
        const string phrase = "holds a NaN or infinite value, so its SVD is undefined";
        Assert.Contains(phrase, Assert.Throws<ArgumentException>(() => LowRank.TruncatedSvdOfProduct(a, bTransposed, r, n, m, 2)).Message);
        Assert.Contains(phrase, Assert.Throws<ArgumentException>(() => LowRank.TruncatedSvdOfDense(dense, m, n, 2)).Message);
    }

    [Fact]
    public void MergedAdapterIsWrittenWithPeftsNamesAndConfigAndReadsBackIdentically()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string q = "base_model.model.model.layers.0.self_attn.q_proj", v = "base_model.model.model.layers.0.self_attn.v_proj";
        TestLibrary lib = data.Library(experts: 3, dIn: 16, dOut: 12, ranks: [4, 2, 3], modules: [q, v]);
        Expert merged = ExpertMerge.Merge(lib.Library, [0.5, 1, -0.25], new MergeOptions(MergeMethod.Svd) { Rank = 5 }, "merged-svd");
        string dir = tmp.Sub("merged-svd");
        PeftAdapter.Write(dir, merged);

        using (JsonDocument config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json"))))
        {
            JsonElement root = config.RootElement;
            Assert.Equal("LORA", root.GetProperty("peft_type").GetString());
            Assert.Equal(5, root.GetProperty("r").GetInt32());
            Assert.Equal(5.0, root.GetProperty("lora_alpha").GetDouble()); // scaling 1
            Assert.False(root.GetProperty("use_rslora").GetBoolean());
            Assert.False(root.GetProperty("use_dora").GetBoolean());
            Assert.Equal(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"],
                root.GetProperty("target_modules").EnumerateArray().Select(x => x.GetString()));
            Assert.Empty(root.GetProperty("rank_pattern").EnumerateObject());
            Assert.Empty(root.GetProperty("alpha_pattern").EnumerateObject());
        }
        using (SafeTensorsFile weights = SafeTensorsFile.Open(Path.Combine(dir, "adapter_model.safetensors")))
        {
            Assert.Equal([q + ".lora_A.weight", q + ".lora_B.weight", v + ".lora_A.weight", v + ".lora_B.weight"],
                weights.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
            Assert.Equal([5L, 16], weights.GetTensor(q + ".lora_A.weight").Shape.ToArray());
            Assert.Equal([12L, 5], weights.GetTensor(q + ".lora_B.weight").Shape.ToArray());
            Assert.Equal("pt", weights.Metadata["format"]);
        }
        Expert back = PeftAdapter.Load(dir);
        Assert.Equal("merged-svd", back.Name);
        foreach (string module in new[] { q, v })
        {
            LoraFactors x = merged.Modules[module], y = back.Modules[module];
            Assert.True(x.A.SequenceEqual(y.A) && x.BTransposed.SequenceEqual(y.BTransposed), $"{data}: {module} changed in the round trip");
            Assert.Equal(1f, y.Scaling);
        }
    }
}
