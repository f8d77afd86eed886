using System.Globalization;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using MoErging.Execution;
using static TorchSharp.torch;

namespace MoErging.Bench.Peers;

/// <summary>A workload shape: T tokens routed among E experts (d = 4096, r = 16, Arrow top-2).</summary>
public sealed record Shape(int Tokens, int Experts)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"T={Tokens} E={Experts}");
}

/// <summary>
/// The routed forward (Arrow top-2 scoring, then the expert mixture added into y), ours against the two
/// TorchSharp variants, on the standard workload over T (E = 64) and over E (T = 64), at each weight precision: the
/// libraries are built at it, the engine created with it (so it converts nothing: it packs A and Bᵀ into its
/// panels on first use), and the TorchSharp
/// variants hold the same rounded weights in float32 at F32 and in bfloat16 at BF16; TorchSharp has no F16 case
/// (<see cref="Runs"/>). Every call rotates among the workload's libraries, so weights come from memory (see
/// <see cref="Workload.Set"/>).
/// </summary>
[MemoryDiagnoser]
public class PeerBenchmarks
{
    /// <summary>T at E = 64, the standard workloads; E at T = 64, the scaling in experts.</summary>
    public static readonly int[] TokenSweep = [1, 16, 64, 512], ExpertSweep = [16, 64, 256, 1024];

    private const int FixedTokens = 64;

    private Workload[] _set = [];
    private TorchPeer[] _peers = [];
    private Engine? _engine;
    private Session? _session;
    private int _next;

    public static IEnumerable<Shape> Shapes() =>
        TokenSweep.Select(t => new Shape(t, Workload.Experts))
            .Concat(ExpertSweep.Where(e => e != Workload.Experts).Select(e => new Shape(FixedTokens, e)));

    [ParamsSource(nameof(Shapes))]
    public Shape Shape { get; set; } = new(FixedTokens, Workload.Experts);

    [Params(WeightPrecision.Float32, WeightPrecision.BFloat16, WeightPrecision.Float16)]
    public WeightPrecision Precision { get; set; }

    /// <summary>The TorchSharp dtype of a precision, or null where TorchSharp has no variant (F16).</summary>
    public static ScalarType? TorchType(WeightPrecision precision) => precision switch
    {
        WeightPrecision.Float32 => ScalarType.Float32,
        WeightPrecision.BFloat16 => ScalarType.BFloat16,
        _ => null,
    };

    /// <summary>
    /// Whether a case is run: the engine at every precision, TorchSharp where it has a dtype. F16 is left out on
    /// TorchSharp's side because the PyTorch CPU user it stands for serves 16-bit weights in bfloat16.
    /// </summary>
    public static bool Runs(BenchmarkCase benchmark) =>
        benchmark.Descriptor.WorkloadMethod.Name == nameof(EngineCpu) || TorchType((WeightPrecision)benchmark.Parameters["Precision"]) is not null;

    [GlobalSetup]
    public void Setup()
    {
        TorchSharp.torch.set_num_threads(Environment.ProcessorCount); // as many threads as the engine's CPU pool
        _set = Workload.Set(Shape.Tokens, Shape.Experts, Precision);
        _peers = TorchType(Precision) is ScalarType dtype ? [.. _set.Select(w => new TorchPeer(w, dtype))] : [];
        _engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, WeightPrecision = Precision });
        _session = _engine.CreateSession();
        for (int i = 0; i < _peers.Length; i++)
        {
            CheckAgreement(_set[i], _peers[i]);
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (TorchPeer peer in _peers)
        {
            peer.Dispose();
        }
        _session?.Dispose();
        _engine?.Dispose();
    }

    [Benchmark(Baseline = true, Description = "engine (cpu)")]
    public void EngineCpu()
    {
        Workload w = _set[Rotate()];
        _session!.Forward(w.Module, w.Router, w.X, w.Decision, w.Y);
    }

    [Benchmark(Description = "TorchSharp: PEFT loop")]
    public void TorchLoop() => _peers[Rotate()].Loop();

    [Benchmark(Description = "TorchSharp: gather + bmm")]
    public void TorchGather() => _peers[Rotate()].Gather();

    private int Rotate() => _next = (_next + 1) % _set.Length;

    /// <summary>
    /// A ratio means something only if the peers compute the same function: from y = 0, each must give the
    /// engine's y (at the same precision, on the same rounded weights) to within float32 summation-order differences
    /// (1e-4 of y's largest entry), or for bfloat16 to within 2e-2 of it: about ten bfloat16 roundings (2⁻⁹ each) of the
    /// largest entry, for x, the scores, the softmax weights, v, the products and the sum over the slots, which
    /// TorchSharp rounds to bfloat16 and the engine keeps in float32.
    /// </summary>
    private void CheckAgreement(Workload w, TorchPeer peer)
    {
        float tolerance = Precision == WeightPrecision.Float32 ? 1e-4f : 2e-2f;
        Array.Clear(w.Y);
        _session!.Forward(w.Module, w.Router, w.X, w.Decision, w.Y);
        float scale = w.Y.Max(MathF.Abs);
        foreach ((string name, Action run) in new (string, Action)[] { ("PEFT loop", peer.Loop), ("gather + bmm", peer.Gather) })
        {
            peer.ResetOutput();
            run();
            float[] y = peer.Output;
            float worst = 0;
            for (int i = 0; i < y.Length; i++)
            {
                worst = MathF.Max(worst, MathF.Abs(y[i] - w.Y[i]));
            }
            if (!(worst <= tolerance * scale))
            {
                throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                    $"TorchSharp {name} disagrees with the engine at {Shape} {Precision}: max |Δy| = {worst:G3}, max |y| = {scale:G3}, tolerance {tolerance:G3} of it"));
            }
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"TorchSharp {name} agrees with the engine at {Shape} {Precision}: max |Δy| = {worst / scale:G3} of max |y| (tolerance {tolerance:G3})"));
        }
    }
}
