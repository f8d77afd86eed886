using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using MoErging.Experts;
using MoErging.Merging;
using MoErging.Samples;

namespace MoErging.Bench;

/// <summary>
/// Merging E experts of one 4096 × 4096 module (r = 16, so Σ r = 16 E) to rank 16. svd works from the stacked
/// factors (QR of both, SVD of the 16E × 16E core) and never forms ΔW; "dense ΔW only" forms the float64
/// ΔW = Σ c_i B_i A_i, the first step of any route through the dense matrix and a lower bound on its cost;
/// ties in ΔW space must form every ΔW_i (twice: threshold, then tiles) and factor the dense result
/// (randomized SVD). Seconds per call, so a few monitored iterations rather than BenchmarkDotNet's default.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 5)]
public class MergeBenchmarks
{
    public const int Dim = 4096, Rank = 16;
    private const string ModuleName = "base_model.model.model.layers.0.self_attn.q_proj";

    private ExpertLibrary? _library;
    private double[] _weights = [];

    [Params(2, 8, 32)]
    public int Experts { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _library = SyntheticExperts.Create(Experts, Dim, Rank, [ModuleName], seed: 11).Library;
        _weights = [.. Enumerable.Range(0, Experts).Select(e => 1.0 / Experts)];
    }

    [Benchmark(Description = "svd merge (from factors)")]
    public Expert Svd() => ExpertMerge.Merge(_library!, _weights, new MergeOptions(MergeMethod.Svd) { Rank = Rank });

    [Benchmark(Description = "dense ΔW only (float64)")]
    public double[] DenseDelta()
    {
        AdaptedModule module = _library!.Modules[0];
        var delta = new double[(long)Dim * Dim];
        Parallel.For(0, Dim, o =>
        {
            Span<double> row = delta.AsSpan(o * Dim, Dim);
            for (int e = 0; e < Experts; e++)
            {
                LoraFactors f = module.Factors(e)!;
                ReadOnlySpan<float> a = f.A, bt = f.BTransposed;
                for (int k = 0; k < Rank; k++)
                {
                    double c = _weights[e] * f.Scaling * bt[k * Dim + o];
                    for (int i = 0; i < Dim; i++)
                    {
                        row[i] += c * a[k * Dim + i];
                    }
                }
            }
        });
        return delta;
    }

    [Benchmark(Description = "ties merge (ΔW space, density 0.2)")]
    public Expert TiesDelta() => ExpertMerge.Merge(_library!, _weights, new MergeOptions(MergeMethod.Ties) { Density = 0.2, Rank = Rank });
}
