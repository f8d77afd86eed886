using System.Diagnostics;
using System.Globalization;
using System.Text;
using ILGPU.Runtime;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;
using MoErging.Samples;

namespace MoErging.Bench.Gpu;

/// <summary>
/// <c>gpu</c>: the GPU workloads, on device-resident F16 activations and F16 weights, each the median of
/// many forwards timed with a device synchronisation after every call, after warm-up:
/// W1 decode (T = 1, 16, 64; Arrow top-2 over E = 64, d = 4096, r = 16), W2 prefill (T = 1024, 4096),
/// W3 multi-tenant (64 tokens, each its own adapter: no router). Every row carries the minimum bytes and
/// FLOPs (BRIEF §6), the GB/s reached and its share of a device-to-device copy measured in the same run.
/// <c>--small</c> shrinks every shape (d = 256, E = 8) to check the program on the GPU simulator or an OpenCL
/// driver that runs on the CPU; on such a device the table says its timings are CPU timings, not GPU figures.
/// </summary>
internal static class GpuBenchmark
{
    private const string ModuleName = "base_model.model.model.layers.0.self_attn.q_proj";

    public static int Run(string[] args)
    {
        Backend backend = Option(args, "--backend") switch
        {
            null or "cuda" => Backend.Cuda,
            "opencl" => Backend.OpenCL,
            "gpu-simulator" => Backend.GpuSimulator,
            string other => throw new ArgumentException($"--backend must be cuda, opencl or gpu-simulator, not '{other}'"),
        };
        bool small = args.Contains("--small");
        int iterations = int.Parse(Option(args, "--iterations") ?? (small ? "5" : "200"), CultureInfo.InvariantCulture);
        string? output = Option(args, "--out");
        int dim = small ? Workload.SmallDim : Workload.Dim, experts = small ? Workload.SmallExperts : Workload.Experts;

        using Engine engine = Engine.Create(new EngineOptions { Backend = backend, Device = Option(args, "--device"), WeightPrecision = WeightPrecision.Float16 });
        Accelerator accelerator = engine.Accelerator!;
        Console.WriteLine($"device: {engine.BackendReason}");
        if (engine.RunsGpuKernelsOnTheCpu)
        {
            Console.WriteLine(NotAGpu);
        }
        double copy = CopyBandwidth(accelerator, small ? 16L << 20 : 1L << 30, Math.Max(5, iterations / 10));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"device-to-device copy: {copy:F0} GB/s (bytes read + written)"));

        SyntheticExperts synthetic = SyntheticExperts.Create(experts, dim, Workload.Rank, [ModuleName], seed: 11);
        AdaptedModule module = synthetic.Library.Module(ModuleName);
        var arrow = new ArrowRouter(module, new RoutingOptions(2));
        using Session session = engine.CreateSession();
        var rows = new List<Row>();
        foreach (Workload w in Workload.Standard(small))
        {
            rows.Add(Measure(w.Label, w.Tokens, session, synthetic, module, w.Routed ? arrow : null, w.Name == "W2" ? Math.Max(5, iterations / 4) : iterations, copy));
        }

        string table = Table(rows, engine.BackendReason, copy, iterations, engine.RunsGpuKernelsOnTheCpu);
        Console.WriteLine();
        Console.WriteLine(table);
        if (output is not null)
        {
            File.WriteAllText(output, table);
        }
        return 0;
    }

    private sealed record Row(string Workload, int Tokens, double MedianUs, double MinUs, double BackToBackUs, ForwardCost Cost, double CopyGbPerSecond)
    {
        public double GbPerSecond => Cost.MinimumBytes / (MedianUs * 1e3);
    }

    /// <summary>Times one workload. With a router: Arrow top-2 on the device; without: token t uses adapter t.</summary>
    private static Row Measure(string workload, int tokens, Session session, SyntheticExperts synthetic, AdaptedModule module,
        ArrowRouter? router, int iterations, double copy)
    {
        Accelerator accelerator = session.Engine.Accelerator!;
        int dim = module.InputDim;
        var rng = new Random(tokens);
        int[] tasks = Enumerable.Range(0, tokens).Select(_ => rng.Next(module.ExpertCount)).ToArray();
        var x = new float[tokens * dim];
        synthetic.Tokens(tasks, 6f, tokens + 1, x);
        using var xd = accelerator.Allocate1D(x.Select(HalfBits.FromSingle).ToArray());
        using var yd = accelerator.Allocate1D<ushort>(tokens * module.OutputDim);
        yd.MemSetToZero();
        using DeviceRoutingDecision decision = session.CreateDeviceDecision();
        if (router is null)
        {
            decision.Assign(Enumerable.Range(0, tokens).ToArray(), Enumerable.Repeat(1f, tokens).ToArray(), 1, module.ExpertCount);
        }

        void Forward()
        {
            if (router is null)
            {
                session.Forward(module, decision, xd.View, yd.View);
            }
            else
            {
                session.Forward(module, router, xd.View, decision, yd.View);
            }
        }

        for (int i = 0; i < 10; i++)
        {
            Forward();
        }
        session.Synchronize();
        var times = new double[iterations];
        for (int i = 0; i < iterations; i++)
        {
            long start = Stopwatch.GetTimestamp();
            Forward();
            session.Synchronize();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
        }
        Array.Sort(times);
        long batch = Stopwatch.GetTimestamp();
        for (int i = 0; i < iterations; i++)
        {
            Forward();
        }
        session.Synchronize();
        double backToBack = Stopwatch.GetElapsedTime(batch).TotalMicroseconds / iterations;

        var host = new RoutingDecision();
        decision.CopyTo(host);
        ForwardCost cost = ForwardCost.Of(module, host, router, activationBytes: 2, weightBytes: 2);
        var row = new Row(workload, tokens, times[iterations / 2], times[0], backToBack, cost, copy);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{workload,-16} T={tokens,5}: {row.MedianUs,9:F1} µs median, {row.MinUs,9:F1} min, {backToBack,9:F1} back to back; {row.GbPerSecond,7:F1} GB/s"));
        return row;
    }

    /// <summary>Median of device-to-device copies of <paramref name="bytes"/>, counting bytes read plus written.</summary>
    private static double CopyBandwidth(Accelerator accelerator, long bytes, int iterations)
    {
        using var source = accelerator.Allocate1D<byte>(bytes);
        using var target = accelerator.Allocate1D<byte>(bytes);
        source.MemSetToZero();
        AcceleratorStream stream = accelerator.DefaultStream;
        source.View.CopyTo(stream, target.View);
        stream.Synchronize();
        var times = new double[iterations];
        for (int i = 0; i < iterations; i++)
        {
            long start = Stopwatch.GetTimestamp();
            source.View.CopyTo(stream, target.View);
            stream.Synchronize();
            times[i] = Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
        Array.Sort(times);
        return 2.0 * bytes / times[iterations / 2] / 1e9;
    }

    private const string NotAGpu = "This device is a CPU behind a GPU API: these are CPU timings of the GPU kernels, not GPU figures.";

    private static string Table(List<Row> rows, string device, double copy, int iterations, bool onTheCpu)
    {
        var c = CultureInfo.InvariantCulture;
        var s = new StringBuilder();
        s.AppendLine(string.Create(c, $"Device: {device}. Device-to-device copy: {copy:F0} GB/s. F16 activations and weights; median of {iterations} synchronised forwards (W2: a quarter as many) after 10 warm-up calls."));
        if (onTheCpu)
        {
            s.AppendLine().AppendLine(NotAGpu);
        }
        s.AppendLine();
        s.AppendLine("| workload | T | µs (median) | µs (min) | µs (back to back) | min bytes (MB) | expert MFLOP | GB/s | % of copy |");
        s.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (Row r in rows)
        {
            s.AppendLine(string.Create(c,
                $"| {r.Workload} | {r.Tokens} | {r.MedianUs:F1} | {r.MinUs:F1} | {r.BackToBackUs:F1} | {r.Cost.MinimumBytes / 1e6:F2} | {r.Cost.Flops / 1e6:F1} | {r.GbPerSecond:F1} | {r.GbPerSecond / copy:P0} |"));
        }
        return s.ToString();
    }

    private static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }
}
