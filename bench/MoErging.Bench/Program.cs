using System.Diagnostics;
using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Running;
using MoErging.Bench;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;
using MoErging.Samples;

// "quick [tokens] [--weight-precision f32|bf16|f16]": a stopwatch breakdown (route, forward, both) of the CPU backend,
// its library and engine at that precision (default f32);
// "boundary DIR": the managed peer of the C boundary benchmark (moerging_bench) on the adapters it wrote;
// "library write|load ...": the large-library load measurement (see LargeLibrary);
// "startup [BACKEND]": how long this fresh process takes to open an engine (Auto unless named) and why it chose it;
// "peak": the machine's measured FMA peak at 256 and 512 bits, all cores (the "share of FMA peak" figures' reference);
// anything else goes to BenchmarkDotNet (for example: --filter '*' --artifacts DIR).
// The GPU workloads are in bench/MoErging.Bench.Gpu.
if (args.Length > 0 && args[0] == "quick")
{
    return Quick(args[1..]);
}
if (args.Length == 2 && args[0] == "boundary")
{
    return Boundary(args[1]);
}
if (args.Length is 1 or 2 && args[0] == "startup")
{
    return Startup(args.Length == 2 ? Enum.Parse<Backend>(args[1], ignoreCase: true) : Backend.Auto);
}
if (args.Length == 1 && args[0] == "peak")
{
    return FmaPeak.Run();
}
if (args.Length > 0 && args[0] == "library")
{
    return LargeLibrary.Run(args[1..]);
}

IConfig config = DefaultConfig.Instance
    .AddColumn(StatisticColumn.Median, new GigabytesPerSecondColumn(MinimumBytes))
    .AddExporter(MarkdownExporter.GitHub)
    .WithOptions(ConfigOptions.JoinSummary);
BenchmarkSwitcher.FromAssembly(typeof(ForwardBenchmarks).Assembly).Run(args, config);
return 0;

// A forward's bytes at the precision it reads: the engine's, or float32 for the naive baseline, which holds float32 copies.
static long? MinimumBytes(BenchmarkCase benchmark) =>
    benchmark.Descriptor.Type == typeof(CopyBenchmarks)
        ? benchmark.Descriptor.WorkloadMethod.Name == nameof(CopyBenchmarks.Read) ? CopyBenchmarks.Bytes : CopyBenchmarks.BytesMoved
    : benchmark.Descriptor.Type == typeof(ForwardBenchmarks) ? Workload.CostOf((int)benchmark.Parameters["Tokens"],
        precision: benchmark.Descriptor.WorkloadMethod.Name == nameof(ForwardBenchmarks.NaiveScalar)
            ? WeightPrecision.Float32 : (WeightPrecision)benchmark.Parameters["Precision"]).MinimumBytes
    : null;

// The first engine of a process pays for whatever its backend choice asks the drivers: run it in a fresh process.
static int Startup(Backend backend)
{
    long start = Stopwatch.GetTimestamp();
    using Engine engine = Engine.Create(new EngineOptions { Backend = backend });
    double opened = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    double sinceStart = (DateTime.Now - Process.GetCurrentProcess().StartTime).TotalMilliseconds;
    Console.WriteLine(FormattableString.Invariant($"{backend}: {engine.Backend} engine in {opened:F1} ms ({sinceStart:F0} ms since the process started): {engine.BackendReason}"));
    return 0;
}

static int Quick(string[] args)
{
    int tokens = 64;
    WeightPrecision precision = WeightPrecision.Float32;
    for (int i = 0; i < args.Length; i++)
    {
        if (args[i] == "--weight-precision" && i + 1 < args.Length)
        {
            precision = args[++i] switch
            {
                "f32" => WeightPrecision.Float32,
                "bf16" => WeightPrecision.BFloat16,
                "f16" => WeightPrecision.Float16,
                string other => throw new ArgumentException($"--weight-precision must be f32, bf16 or f16, got '{other}'"),
            };
        }
        else
        {
            tokens = int.Parse(args[i], CultureInfo.InvariantCulture);
        }
    }
    Workload[] set = Workload.Set(tokens, precision: precision);
    using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, WeightPrecision = precision });
    using Session session = engine.CreateSession();
    double Median(Action<Workload> run)
    {
        var times = new double[40];
        for (int i = -5; i < times.Length; i++)
        {
            Workload w = set[(i + 5) % set.Length];
            long start = Stopwatch.GetTimestamp();
            run(w);
            if (i >= 0)
            {
                times[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
            }
        }
        Array.Sort(times);
        return times[times.Length / 2];
    }
    double route = Median(w => session.Route(w.Module, w.Router, w.X, w.Decision));
    double forward = Median(w => session.Forward(w.Module, w.Decision, w.X, w.Y));
    double both = Median(w => session.Forward(w.Module, w.Router, w.X, w.Decision, w.Y));
    ForwardCost cost = Workload.CostOf(tokens, precision: precision);
    double copy, read;
    using (var parallelCopy = new ParallelCopy(CopyBenchmarks.Bytes, engine.CpuThreads))
    {
        copy = parallelCopy.BestGigabytesPerSecond(5);
        read = parallelCopy.BestReadGigabytesPerSecond(5);
    }
    double reached = cost.MinimumBytes / both / 1e3;
    // Arrow scores every token against every prototype; ForwardCost.Flops counts the experts' path (2 per FMA).
    double fma = (double)tokens * Workload.Experts * Workload.Dim + cost.Flops / 2.0;
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"T={tokens}: route {route:F0} µs, forward {forward:F0} µs, both {both:F0} µs; {precision} weights, min bytes {cost.MinimumBytes / 1e6:F1} MB → {reached:F2} GB/s, {100 * reached / copy:F0}% of the copy bandwidth ({copy:F1} GB/s, {engine.CpuThreads} threads), {100 * reached / read:F0}% of the read bandwidth ({read:F1} GB/s), {fma / both / 1e3:F1} GFMA/s (router and experts; compare with peak)"));
    return 0;
}

// The calls moerging_bench times through the C API, made directly, timed the same way: the minimum and the
// median of 501 batches of 2,000 calls (short batches, so that on a shared machine some run undisturbed).
static int Boundary(string root)
{
    ExpertLibrary library = ExpertLibrary.Load(Directory.GetDirectories(root).Order(StringComparer.Ordinal));
    AdaptedModule module = library.Module("q_proj");
    using Engine engine = Engine.Create(new EngineOptions { CpuThreads = 1 }); // as moerging_bench: no pool wake-ups
    using Session session = engine.CreateSession();
    var router = new UniformRouter(library.ExpertCount);
    var decision = new RoutingDecision();
    var x = new float[module.InputDim];
    var y = new float[module.OutputDim];
    for (int i = 0; i < x.Length; i++)
    {
        x[i] = (i % 7) - 3;
    }
    int[] id = [2];
    float[] weight = [1f];
    static (double Min, double Median) Nanoseconds(Action call)
    {
        const int calls = 2_000;
        var batches = new double[501];
        for (int b = 0; b < batches.Length; b++)
        {
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < calls; i++)
            {
                call();
            }
            batches[b] = Stopwatch.GetElapsedTime(start).TotalNanoseconds / calls;
        }
        Array.Sort(batches);
        return (batches[0], batches[batches.Length / 2]);
    }
    var forward = Nanoseconds(() => session.Forward(module, router, x, decision, y));
    var assigned = Nanoseconds(() =>
    {
        decision.Assign(id, weight, 1, library.ExpertCount);
        session.Forward(module, decision, x, y);
    });
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"managed, warm, one CPU thread, 501 batches of 2000 calls, ns per call (min / median) ({module.Name}, E = {library.ExpertCount}):"));
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  Session.Forward, uniform router, T = 1:           {forward.Min:F1} / {forward.Median:F1}"));
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  RoutingDecision.Assign + Session.Forward, k = 1: {assigned.Min:F1} / {assigned.Median:F1}"));
    return 0;
}
