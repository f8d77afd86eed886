using System.Diagnostics;
using System.Globalization;
using ILGPU.Runtime;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Kernels;
using MoErging.Routing;
using MoErging.Samples;

namespace MoErging.Cli;

/// <summary>
/// <c>moerge demo</c>: the main job end to end. Writes a seeded synthetic library as real PEFT adapter
/// directories, loads it back through the public loader, routes a batch of tokens with Arrow at one module,
/// reuses the decision at a second, and reports routing and timing against the minimum bytes.
/// </summary>
internal static class DemoCommand
{
    private const string Help = $"""
        usage: moerge demo [--out DIR] [--experts E] [--tokens T] [--dim D] [--rank R] [--top-k K]
                           [--backend B] [--device D] [--weight-precision f32|bf16|f16] [--seed S] [--iterations N]
                           [--threads N]

        Writes E synthetic LoRA experts (each adapting q_proj and v_proj of layer 0, d_in = d_out = D,
        rank R) as PEFT adapter directories (in the dtype of --weight-precision), loads them back at that
        precision (bit for bit), routes T tokens with Arrow top-K at q_proj,
        reuses the decision at v_proj, and times both forwards (on a GPU with x and y on the device,
        against its device-to-device copy; on the CPU against the machine's copy bandwidth). A size the machine
        cannot hold (the memory the GC may use, the free disk where the adapters go) is refused before anything is
        allocated or written, with the estimate.

          --out          where to write the adapters (default: a temporary folder, removed afterwards)
          --experts      E (default 64)        --tokens   T (default 64)     --dim   D (default 4096)
          --rank         R (default 16)        --top-k    K (default 2)      --seed  S (default 1)
          --iterations   timed repetitions (default 20, after 3 warm-up runs)
          --threads      CPU threads (default: all processors)
        {EngineChoice.Help}
        On an OpenCL driver that runs on the CPU (PoCL, rusticl on llvmpipe) the timings are CPU timings of the
        GPU kernels, not GPU figures.
        """;

    private static readonly Dictionary<string, OptionKind> Options = EngineChoice.With(new()
    {
        ["out"] = OptionKind.Single,
        ["experts"] = OptionKind.Single,
        ["tokens"] = OptionKind.Single,
        ["dim"] = OptionKind.Single,
        ["rank"] = OptionKind.Single,
        ["top-k"] = OptionKind.Single,
        ["seed"] = OptionKind.Single,
        ["iterations"] = OptionKind.Single,
        ["threads"] = OptionKind.Single,
        ["help"] = OptionKind.Flag,
    });

    private const int CopyBytes = 128 << 20; // each buffer of the copy-bandwidth measurement, well past any cache

    private static readonly string[] Modules =
    [
        "base_model.model.model.layers.0.self_attn.q_proj",
        "base_model.model.model.layers.0.self_attn.v_proj",
    ];

    public static int Run(string[] args, TextWriter stdout)
    {
        if (Cli.Help(args, Help, stdout))
        {
            return 0;
        }
        CommandLine line = CommandLine.Parse(args, Options);
        line.NoPositionals();
        int experts = line.Int("experts", 64, 1, 4096);
        int tokens = line.Int("tokens", 64, 1, 1 << 20);
        int dim = line.Int("dim", 4096, 1, 1 << 16);
        int rank = line.Int("rank", 16, 1, 1024);
        int topK = line.Int("top-k", RoutingContract.DefaultTopK(2, experts), 1, experts); // the demo's top-2, at most E
        int seed = line.Int("seed", 1, 0);
        int iterations = line.Int("iterations", 20, 1, 100_000);
        int threads = line.Int("threads", 0, 0, 1024);
        EngineOptions engineOptions = EngineChoice.Options(line, threads);
        string? outDir = line.Single("out");
        string root = outDir ?? Path.Combine(Path.GetTempPath(), $"moerge-demo-{Environment.ProcessId}-{Guid.NewGuid():N}"[..32]);
        CheckSize(root, experts, tokens, dim, rank, engineOptions.WeightPrecision);

        var c = CultureInfo.InvariantCulture;
        stdout.WriteLine(string.Create(c, $"moerge demo: {experts} experts (d = {dim}, r = {rank}, {Modules.Length} modules each), {tokens} tokens, Arrow top-{topK}, seed {seed}, {engineOptions.WeightPrecision} weights"));
        using Engine engine = Engine.Create(engineOptions);
        string threadCount = engine.Accelerator is null ? $"; {engine.CpuThreads} CPU thread{(engine.CpuThreads == 1 ? "" : "s")}" : "";
        stdout.WriteLine($"backend: {engine.Backend} ({engine.BackendReason}){threadCount}");
        if (engine.RunsGpuKernelsOnTheCpu)
        {
            stdout.WriteLine("note: this device is a CPU behind a GPU API; the timings below are CPU timings of the GPU kernels, not GPU figures");
        }
        try
        {
            return Run(engine, root, experts, tokens, dim, rank, topK, seed, iterations, stdout);
        }
        finally
        {
            if (outDir is null && Directory.Exists(root))
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }

    private static int Run(Engine engine, string root, int experts, int tokens, int dim, int rank, int topK, int seed, int iterations, TextWriter stdout)
    {
        var c = CultureInfo.InvariantCulture;

        // 1. A synthetic library, written as real PEFT adapter directories.
        var clock = Stopwatch.StartNew();
        SyntheticExperts synthetic = SyntheticExperts.Create(experts, dim, rank, Modules, seed);
        var dirs = new List<string>(experts);
        foreach (Expert expert in synthetic.Library.Experts)
        {
            string dir = Path.Combine(root, expert.Name);
            PeftAdapter.Write(dir, expert, DTypeOf(engine.WeightPrecision), baseModelName: "synthetic");
            dirs.Add(dir);
        }
        long written = dirs.Sum(d => new DirectoryInfo(d).EnumerateFiles().Sum(f => f.Length));
        stdout.WriteLine(string.Create(c, $"wrote {experts} PEFT adapters to {root} ({written / 1e6:F1} MB) in {clock.ElapsedMilliseconds} ms"));

        // 2. Loaded back through the loader users use, at the engine's precision, so the engine converts nothing.
        clock.Restart();
        ExpertLibrary library = ExpertLibrary.Load(dirs, new ExpertLibraryOptions { WeightPrecision = engine.WeightPrecision });
        stdout.WriteLine($"loaded them back in {clock.ElapsedMilliseconds} ms");
        AdaptedModule q = library.Module("q_proj"), v = library.Module("v_proj");

        // 3. Tokens of random tasks; Arrow should send each to its task's expert.
        var rng = new Random(seed);
        int[] tasks = Enumerable.Range(0, tokens).Select(_ => rng.Next(experts)).ToArray();
        var x = new float[tokens * dim];
        synthetic.Tokens(tasks, strength: 6f, seed + 1, x);
        float[] yq = new float[tokens * dim], yv = new float[tokens * dim];

        clock.Restart();
        var router = new ArrowRouter(q, new RoutingOptions(topK));
        stdout.WriteLine($"Arrow prototypes for {experts} experts computed in {clock.ElapsedMilliseconds} ms");
        using Session session = engine.CreateSession();
        var decision = new RoutingDecision(tokens, topK);
        session.Forward(q, router, x, decision, yq);
        session.Forward(v, decision, x, yv);

        ReportRouting(library, decision, tasks, q, stdout);

        // 4. Timing, against the bytes the forward must move. On a GPU, x and y stay on the device as a serving
        // host keeps them: the span calls would add host copies that the minimum bytes do not count.
        double[] routed, reused;
        double copy;
        string copyWhat;
        if (engine.Accelerator is Accelerator accelerator)
        {
            using var xOnDevice = accelerator.Allocate1D(x);
            using var yqOnDevice = accelerator.Allocate1D(yq);
            using var yvOnDevice = accelerator.Allocate1D(yv);
            using DeviceRoutingDecision onDevice = session.CreateDeviceDecision();
            routed = Time(iterations, () =>
            {
                session.Forward(q, router, xOnDevice.View, onDevice, yqOnDevice.View);
                session.Synchronize();
            });
            reused = Time(iterations, () =>
            {
                session.Forward(v, onDevice, xOnDevice.View, yvOnDevice.View);
                session.Synchronize();
            });
            copy = DeviceCopyBandwidth(accelerator);
            copyWhat = "the device (device to device, 128 MB, read + write)";
        }
        else
        {
            routed = Time(iterations, () => session.Forward(q, router, x, decision, yq));
            reused = Time(iterations, () => session.Forward(v, decision, x, yv));
            using (var parallelCopy = new ParallelCopy(CopyBytes, Math.Max(1, engine.CpuThreads)))
            {
                copy = parallelCopy.BestGigabytesPerSecond(5); // the benchmark's measurement, at the demo's size
            }
            copyWhat = $"this machine ({engine.CpuThreads} threads, 2 × 128 MB, read + write)";
        }
        ForwardCost routedCost = ForwardCost.Of(engine, q, decision, router), reusedCost = ForwardCost.Of(engine, v, decision, null);
        stdout.WriteLine();
        string where = engine.Accelerator is null ? "" : "; x and y on the device";
        stdout.WriteLine(string.Create(c, $"timing (median of {iterations} after 3 warm-up runs{where}; GB/s = minimum bytes / time):"));
        Report("route + forward at q_proj", routed, routedCost, stdout);
        Report("forward at v_proj (decision reused)", reused, reusedCost, stdout);
        stdout.WriteLine(string.Create(c, $"  copy bandwidth of {copyWhat}: {copy:F1} GB/s"));
        stdout.WriteLine(string.Create(c, $"  the routed forward reaches {MedianGbPerSecond(routed, routedCost) / copy:P0} of it"));
        return 0;
    }

    /// <summary>
    /// Refuses, before anything is allocated or written, a demo the machine cannot hold: the memory it needs
    /// against what the GC may use, and its adapter files against the free space where they go.
    /// </summary>
    private static void CheckSize(string root, int experts, int tokens, int dim, int rank, WeightPrecision precision)
    {
        long library = (long)experts * Modules.Length * 2 * rank * dim * sizeof(float);
        long stored = precision == WeightPrecision.Float32 ? library : library / 2; // as written and loaded back
        // The library made in float32, then loaded back from its files, one expert's tensors staged while its file is
        // written, the Arrow prototypes and task directions, x with both outputs, and the copy measurement's buffers.
        long memory = library + stored + library / experts + 2L * experts * dim * sizeof(float) + 3L * tokens * dim * sizeof(float) + 2L * CopyBytes;
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        string what = string.Create(CultureInfo.InvariantCulture,
            $"{experts} experts × {Modules.Length} modules × 2 factors × rank {rank} × d {dim} × 4 bytes = {library / 1e9:F1} GB");
        if (memory > available)
        {
            throw new UsageException(string.Create(CultureInfo.InvariantCulture,
                $"the demo needs about {memory / 1e9:F1} GB of memory ({what}, made, then loaded back at {precision}, plus tokens and outputs) but {available / 1e9:F1} GB is available; give fewer --experts or a smaller --dim, --rank or --tokens"));
        }
        string existing = Path.GetFullPath(root);
        while (!Directory.Exists(existing))
        {
            existing = Path.GetDirectoryName(existing)!;
        }
        long disk = stored + experts * 4096L; // each adapter's config and safetensors header fit in a few kB
        long free = new DriveInfo(existing).AvailableFreeSpace;
        if (disk > free)
        {
            throw new UsageException(string.Create(CultureInfo.InvariantCulture,
                $"the demo's adapters need about {disk / 1e9:F1} GB of disk ({what}) but {existing} has {free / 1e9:F1} GB free; give --out on a larger disk, or fewer --experts or a smaller --dim or --rank"));
        }
    }

    private static void ReportRouting(ExpertLibrary library, RoutingDecision decision, int[] tasks, AdaptedModule module, TextWriter stdout)
    {
        var c = CultureInfo.InvariantCulture;
        int experts = library.ExpertCount, tokens = decision.TokenCount;
        var load = new int[experts];
        int hits = 0;
        for (int t = 0; t < tokens; t++)
        {
            foreach (int e in decision.ExpertIdsOf(t))
            {
                load[e]++;
            }
            hits += decision.ExpertIdsOf(t)[0] == tasks[t] ? 1 : 0;
        }
        stdout.WriteLine();
        stdout.WriteLine($"routing at {module.Name} (reused at the other module):");
        stdout.WriteLine(string.Create(c, $"  top-1 expert is the token's task for {hits} of {tokens} tokens ({(double)hits / tokens:P1})"));
        stdout.WriteLine(string.Create(c, $"  load (token slots per expert): min {load.Min()}, max {load.Max()}, mean {load.Average():F2}; {load.Count(l => l == 0)} experts unused"));
        int max = Math.Max(1, load.Max());
        for (int e = 0; e < experts; e += 4)
        {
            var cells = Enumerable.Range(e, Math.Min(4, experts - e))
                .Select(i => $"{library.Experts[i].Name} {new string('#', (int)Math.Ceiling(8.0 * load[i] / max)),-8} {load[i],4}");
            stdout.WriteLine("  " + string.Join("   ", cells));
        }
        stdout.WriteLine("  first tokens:");
        for (int t = 0; t < Math.Min(5, tokens); t++)
        {
            var slots = decision.ExpertIdsOf(t).ToArray().Zip(decision.WeightsOf(t).ToArray())
                .Select(p => string.Create(c, $"{library.Experts[p.First].Name} {p.Second:F3}"));
            stdout.WriteLine($"    token {t} (task {library.Experts[tasks[t]].Name}): {string.Join(", ", slots)}");
        }
    }

    private static double[] Time(int iterations, Action forward)
    {
        for (int i = 0; i < 3; i++)
        {
            forward();
        }
        var seconds = new double[iterations];
        for (int i = 0; i < iterations; i++)
        {
            long start = Stopwatch.GetTimestamp();
            forward();
            seconds[i] = Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        Array.Sort(seconds);
        return seconds;
    }

    private static double MedianGbPerSecond(double[] sorted, ForwardCost cost) => cost.MinimumBytes / sorted[sorted.Length / 2] / 1e9;

    private static void Report(string what, double[] sorted, ForwardCost cost, TextWriter stdout)
    {
        double median = sorted[sorted.Length / 2];
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  {what,-38} {median * 1e6,9:F1} µs (min {sorted[0] * 1e6:F1})  {cost.MinimumBytes / 1e6,7:F2} MB → {MedianGbPerSecond(sorted, cost),6:F2} GB/s  {cost.Flops / median / 1e9,6:F2} GFLOP/s  {cost.SelectedExperts} experts read"));
    }

    /// <summary>The safetensors dtype the demo writes for a precision: the same format, so loading keeps every bit.</summary>
    private static TensorDType DTypeOf(WeightPrecision precision) => precision switch
    {
        WeightPrecision.BFloat16 => TensorDType.BF16,
        WeightPrecision.Float16 => TensorDType.F16,
        _ => TensorDType.F32,
    };

    /// <summary>Best of five device-to-device copies of 128 MB, counting bytes read plus written.</summary>
    private static double DeviceCopyBandwidth(Accelerator accelerator)
    {
        using var source = accelerator.Allocate1D<byte>(CopyBytes);
        using var destination = accelerator.Allocate1D<byte>(CopyBytes);
        source.MemSetToZero();
        accelerator.Synchronize();
        double best = double.MaxValue;
        for (int run = 0; run < 5; run++)
        {
            long start = Stopwatch.GetTimestamp();
            source.View.CopyTo(accelerator.DefaultStream, destination.View);
            accelerator.Synchronize();
            best = Math.Min(best, Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
        return 2.0 * CopyBytes / best / 1e9;
    }
}
