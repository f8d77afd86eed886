using BenchmarkDotNet.Attributes;
using MoErging.Execution;

namespace MoErging.Bench;

/// <summary>
/// The standard CPU workload: route (Arrow top-2) and forward T tokens, ours against the naive scalar
/// baseline, rotating among four libraries so that weights come from memory, at each weight precision: the
/// libraries are built at it and the engine created with it, so the engine converts nothing (it packs A and Bᵀ into its
/// panels on first use). The naive
/// baseline stays float32: it holds float32 copies of the same (rounded) factors, so it does the same work at every
/// precision and its rows differ only by noise.
/// </summary>
[MemoryDiagnoser]
public class ForwardBenchmarks
{
    private Workload[] _set = [];
    private NaiveForward[] _naive = [];
    private Engine? _engine;
    private Session? _session;
    private int _next;

    [Params(64, 512)]
    public int Tokens { get; set; }

    [Params(WeightPrecision.Float32, WeightPrecision.BFloat16, WeightPrecision.Float16)]
    public WeightPrecision Precision { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _set = Workload.Set(Tokens, precision: Precision);
        _naive = [.. _set.Select(w => new NaiveForward(w))];
        _engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, WeightPrecision = Precision });
        _session = _engine.CreateSession();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _session?.Dispose();
        _engine?.Dispose();
    }

    [Benchmark(Baseline = true, Description = "naive scalar")]
    public void NaiveScalar() => _naive[Rotate()].Run();

    [Benchmark(Description = "engine (cpu)")]
    public void EngineCpu()
    {
        Workload w = _set[Rotate()];
        _session!.Forward(w.Module, w.Router, w.X, w.Decision, w.Y);
    }

    private int Rotate() => _next = (_next + 1) % _set.Length;
}
