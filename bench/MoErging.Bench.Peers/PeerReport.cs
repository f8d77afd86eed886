using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using BenchmarkDotNet.Mathematics;
using BenchmarkDotNet.Reports;
using ScottPlot;

namespace MoErging.Bench.Peers;

/// <summary>
/// What a peers run produced, per shape and implementation: the headline table for <c>bench/RESULTS.md</c>
/// (ratios of the best TorchSharp variant to the engine, against the goals) and the scaling plots.
/// </summary>
internal sealed class PeerReport
{
    public const string Begin = "<!-- cpu-peers:begin: written by `dotnet cake --target=Peers`; what lies between the markers is replaced -->";
    public const string End = "<!-- cpu-peers:end -->";

    private static readonly (string Method, string Label)[] Implementations =
    [
        (nameof(PeerBenchmarks.EngineCpu), "engine (cpu)"),
        (nameof(PeerBenchmarks.TorchLoop), "TorchSharp: PEFT loop"),
        (nameof(PeerBenchmarks.TorchGather), "TorchSharp: gather + bmm"),
    ];

    private readonly Dictionary<(Shape Shape, string Method), BenchmarkReport> _reports = [];

    private readonly IReadOnlyDictionary<Shape, double> _allocations;
    private readonly string _machine;

    /// <param name="summary">The run.</param>
    /// <param name="allocations">The engine's bytes per warm forward by shape (<see cref="EngineAllocations"/>).</param>
    /// <param name="machine">The machine's name in bench/results.</param>
    public PeerReport(Summary summary, IReadOnlyDictionary<Shape, double> allocations, string machine)
    {
        _allocations = allocations;
        _machine = machine;
        foreach (BenchmarkReport report in summary.Reports)
        {
            _reports[((Shape)report.BenchmarkCase.Parameters["Shape"], report.BenchmarkCase.Descriptor.WorkloadMethod.Name)] = report;
        }
    }

    /// <summary>The headline block, markers included; <paramref name="results"/> is where the full table went.</summary>
    public string Headline(string? results)
    {
        var text = new StringBuilder();
        text.AppendLine(Begin);
        text.AppendLine("## CPU: the engine against TorchSharp (E = 64 unless stated, d_in = d_out = 4096, r = 16, Arrow top-2, F32)");
        text.AppendLine();
        text.AppendLine(Invariant($"- **Date:** {DateTime.UtcNow:yyyy-MM-dd}"));
        long memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes >> 30;
        string torch = Invariant($"TorchSharp {typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString(3)} (libtorch {TorchSharp.torch.__version__}, {TorchSharp.torch.get_num_threads()} threads, as many as the engine's pool)");
        text.AppendLine(Invariant($"- **Machine:** `{_machine}`: {Processor()} ({Environment.ProcessorCount} logical cores), {memory} GiB; {RuntimeInformation.FrameworkDescription}; {torch}; BenchmarkDotNet, in-process job."));
        string where = results is null ? "" : $" (table and plots in `{Relative(results)}/`)";
        text.AppendLine($"- **Command:** `dotnet tool restore && dotnet cake --target=Peers`{where}");
        text.AppendLine("- Mean per forward (routing included); \"best peer ÷ engine\" is the faster TorchSharp variant's mean over the " +
            "engine's. Allocated is managed heap per forward: as BenchmarkDotNet's in-process MemoryDiagnoser counts it (every thread of the " +
            "process, libtorch's and the runtime's included), then for the engine alone over 1,000 warm forwards with nothing else " +
            "running; libtorch's native buffers are in neither.");
        text.AppendLine();
        Table(text, "T", PeerBenchmarks.TokenSweep.Select(t => new Shape(t, Workload.Experts)), s => s.Tokens,
            s => s.Tokens <= 64 ? 2.0 : 1.0);
        text.AppendLine();
        text.AppendLine("Scaling in experts at T = 64 (no goal set):");
        text.AppendLine();
        Table(text, "E", PeerBenchmarks.ExpertSweep.Select(e => new Shape(64, e)), s => s.Experts, null);
        text.AppendLine(End);
        return text.ToString();
    }

    /// <summary><c>scaling-tokens.png</c> (time against T at E = 64) and <c>scaling-experts.png</c> (against E at T = 64).</summary>
    public void SavePlots(string directory)
    {
        Plot(PeerBenchmarks.TokenSweep.Select(t => new Shape(t, Workload.Experts)), s => s.Tokens,
            "tokens T", "Routed forward against T (E = 64, d = 4096, r = 16, top-2, F32)", Path.Combine(directory, "scaling-tokens.png"));
        Plot(PeerBenchmarks.ExpertSweep.Select(e => new Shape(64, e)), s => s.Experts,
            "experts E", "Routed forward against E (T = 64, d = 4096, r = 16, top-2, F32)", Path.Combine(directory, "scaling-experts.png"));
    }

    /// <summary>Replaces the block between the markers in <paramref name="path"/>, or appends it when there is none.</summary>
    public static void Splice(string path, string block)
    {
        string text = File.Exists(path) ? File.ReadAllText(path) : "";
        int begin = text.IndexOf(Begin, StringComparison.Ordinal), end = text.IndexOf(End, StringComparison.Ordinal);
        text = begin >= 0 && end > begin
            ? string.Concat(text.AsSpan(0, begin), block.TrimEnd('\n'), text.AsSpan(end + End.Length))
            : text.TrimEnd('\n') + "\n\n" + block;
        File.WriteAllText(path, text);
    }

    private void Table(StringBuilder text, string axis, IEnumerable<Shape> shapes, Func<Shape, int> value, Func<Shape, double>? goal)
    {
        text.AppendLine($"| {axis} | engine mean (median) | TorchSharp PEFT loop | TorchSharp gather + bmm | best peer ÷ engine |" +
            (goal is null ? "" : " goal |") + " engine allocated (in run / alone) | engine GB/s over min bytes |");
        text.AppendLine("| ---: | ---: | ---: | ---: | ---: |" + (goal is null ? "" : " :---: |") + " ---: | ---: |");
        foreach (Shape shape in shapes.Where(s => Implementations.All(i => _reports.ContainsKey((s, i.Method)))))
        {
            Statistics engine = Stats(shape, nameof(PeerBenchmarks.EngineCpu));
            double loop = Stats(shape, nameof(PeerBenchmarks.TorchLoop)).Mean, gather = Stats(shape, nameof(PeerBenchmarks.TorchGather)).Mean;
            double ratio = Math.Min(loop, gather) / engine.Mean;
            BenchmarkReport ours = _reports[(shape, nameof(PeerBenchmarks.EngineCpu))];
            long? allocated = ours.GcStats.GetBytesAllocatedPerOperation(ours.BenchmarkCase);
            double gigabytes = Workload.CostOf(shape.Tokens, shape.Experts).MinimumBytes / engine.Mean;
            string goalCell = goal is null ? "" : Invariant($" ≥ {goal(shape):0.#}× {(ratio >= goal(shape) ? "met" : "missed")} |");
            text.AppendLine(Invariant(
                $"| {value(shape)} | {Time(engine.Mean)} ({Time(engine.Median)}) | {Time(loop)} | {Time(gather)} | **{ratio:F2}×** |{goalCell} {allocated?.ToString(CultureInfo.InvariantCulture) ?? "?"} B / {Alone(shape)} | {gigabytes:F2} |"));
        }
    }

    private void Plot(IEnumerable<Shape> shapes, Func<Shape, int> value, string axis, string title, string path)
    {
        Shape[] measured = [.. shapes.Where(s => Implementations.All(i => _reports.ContainsKey((s, i.Method))))];
        if (measured.Length == 0)
        {
            return;
        }
        // Log-log: cost grows with work, so equal ratios should look equally far apart.
        var plot = new Plot();
        double[] xs = [.. measured.Select(s => Math.Log10(value(s)))];
        foreach ((string method, string label) in Implementations)
        {
            var series = plot.Add.Scatter(xs, [.. measured.Select(s => Math.Log10(Stats(s, method).Mean / 1e3))]);
            series.LegendText = label;
            series.MarkerSize = 8;
            series.LineWidth = 2;
        }
        var xTicks = new ScottPlot.TickGenerators.NumericManual();
        foreach (Shape s in measured)
        {
            xTicks.AddMajor(Math.Log10(value(s)), value(s).ToString(CultureInfo.InvariantCulture));
        }
        plot.Axes.Bottom.TickGenerator = xTicks;
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
        {
            IntegerTicksOnly = true,
            LabelFormatter = y => Math.Pow(10, y).ToString("G6", CultureInfo.InvariantCulture),
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
        };
        plot.Axes.Left.Label.Text = "µs per forward (mean, log scale)";
        plot.Axes.Bottom.Label.Text = $"{axis} (log scale)";
        plot.Axes.Title.Label.Text = title;
        plot.Grid.MajorLineColor = Colors.Black.WithOpacity(0.12);
        plot.Legend.Alignment = Alignment.LowerRight; // below the lines at large T and E
        plot.ShowLegend();
        plot.SavePng(path, 900, 560);
    }

    private string Alone(Shape shape) => _allocations.TryGetValue(shape, out double bytes) ? Invariant($"{bytes:0.##} B") : "?";

    private Statistics Stats(Shape shape, string method) => _reports[(shape, method)].ResultStatistics
        ?? throw new InvalidOperationException($"no statistics for {method} at {shape}");

    private static string Time(double nanoseconds) => nanoseconds >= 1e6
        ? Invariant($"{nanoseconds / 1e6:F2} ms")
        : Invariant($"{nanoseconds / 1e3:F1} µs");

    private static string Processor() => File.Exists("/proc/cpuinfo")
        ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown processor"
        : RuntimeInformation.ProcessArchitecture.ToString();

    private static string Relative(string path) => Path.GetRelativePath(Environment.CurrentDirectory, path).Replace('\\', '/');

    private static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
