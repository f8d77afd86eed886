using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using BenchmarkDotNet.Mathematics;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using MoErging.Execution;
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

    private static readonly WeightPrecision[] Precisions = [WeightPrecision.Float32, WeightPrecision.BFloat16, WeightPrecision.Float16];

    private static readonly (string Method, string Label)[] Implementations =
    [
        (nameof(PeerBenchmarks.EngineCpu), "engine (cpu)"),
        (nameof(PeerBenchmarks.TorchLoop), "TorchSharp: PEFT loop"),
        (nameof(PeerBenchmarks.TorchGather), "TorchSharp: gather + bmm"),
    ];

    private static readonly string[] TorchMethods = [nameof(PeerBenchmarks.TorchLoop), nameof(PeerBenchmarks.TorchGather)];

    private readonly Dictionary<(Shape Shape, WeightPrecision Precision, string Method), BenchmarkReport> _reports = [];

    private readonly IReadOnlyDictionary<(Shape, WeightPrecision), double> _allocations;
    private readonly string _machine;

    /// <param name="summary">The run.</param>
    /// <param name="allocations">The engine's bytes per warm forward by shape and precision (<see cref="EngineAllocations"/>).</param>
    /// <param name="machine">The machine's name in bench/results.</param>
    public PeerReport(Summary summary, IReadOnlyDictionary<(Shape, WeightPrecision), double> allocations, string machine)
    {
        _allocations = allocations;
        _machine = machine;
        foreach (BenchmarkReport report in summary.Reports)
        {
            BenchmarkCase c = report.BenchmarkCase;
            _reports[((Shape)c.Parameters["Shape"], (WeightPrecision)c.Parameters["Precision"], c.Descriptor.WorkloadMethod.Name)] = report;
        }
    }

    /// <summary>
    /// The headline block, markers included; <paramref name="results"/> is where the full table went, <paramref name="reduced"/>
    /// the options of a short or filtered run (empty for the full one).
    /// </summary>
    public string Headline(string? results, string reduced)
    {
        var text = new StringBuilder();
        text.AppendLine(Begin);
        text.AppendLine("## CPU: the engine against TorchSharp at each weight precision (E = 64 unless stated, d_in = d_out = 4096, r = 16, Arrow top-2)");
        text.AppendLine();
        text.AppendLine(Invariant($"- **Date:** {DateTime.UtcNow:yyyy-MM-dd}"));
        long memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes >> 30;
        string torch = Invariant($"TorchSharp {typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString(3)} (libtorch {TorchSharp.torch.__version__}, {TorchSharp.torch.get_num_threads()} threads, as many as the engine's pool)");
        string job = reduced.Contains("--short", StringComparison.Ordinal) ? "in-process short job (3 iterations)" : "in-process job";
        text.AppendLine(Invariant($"- **Machine:** `{_machine}`: {Processor()} ({Environment.ProcessorCount} logical cores), {memory} GiB; {RuntimeInformation.FrameworkDescription}; {torch}; BenchmarkDotNet, {job}."));
        string where = results is null ? "" : $" (table and plots in `{Relative(results)}/`)";
        text.AppendLine(reduced.Length == 0
            ? $"- **Command:** `dotnet tool restore && dotnet cake --target=Peers`{where}"
            : $"- **Command:** `dotnet run -c Release --project bench/MoErging.Bench.Peers -- {reduced}`{where}: a reduced run, only " +
              "the cases it names (the full one: `dotnet tool restore && dotnet cake --target=Peers`)");
        text.AppendLine("- Mean per forward (routing included). Storage is the weight precision: the engine's (created with it, the " +
            "library built at it, so nothing is converted: factors and prototypes packed on first use); TorchSharp's tensors hold the same rounded weights in float32 at " +
            "F32 and in bfloat16 at BF16 (computing in it), and it has no F16 variant. GB/s are over the minimum bytes at the row's " +
            "storage (X and Y in float32, prototypes and selected experts at the storage). \"F32 ÷ this\" is the engine's F32 mean over " +
            "this row's; \"best peer ÷ engine\" is the fastest TorchSharp variant of the shape, of either dtype, over the engine's mean. " +
            "Allocated is managed heap per forward: as BenchmarkDotNet's in-process MemoryDiagnoser counts it (every thread of the " +
            "process, libtorch's and the runtime's included), then for the engine alone over 1,000 warm forwards with nothing else " +
            "running; libtorch's native buffers are in neither.");
        text.AppendLine();
        Table(text, "T", PeerBenchmarks.TokenSweep.Select(t => new Shape(t, Workload.Experts)), s => s.Tokens, Goal);
        text.AppendLine();
        text.AppendLine("Scaling in experts at T = 64 (no goal set):");
        text.AppendLine();
        Table(text, "E", PeerBenchmarks.ExpertSweep.Select(e => new Shape(64, e)), s => s.Experts, null);
        text.AppendLine(End);
        return text.ToString();
    }

    /// <summary>
    /// The goals against the best TorchSharp variant: at T ≤ 64 at least 5× with 16-bit storage (issue 14) and 2× in
    /// F32 (the peers issue); at larger T not slower.
    /// </summary>
    private static double Goal(Shape shape, WeightPrecision precision) =>
        shape.Tokens > 64 ? 1.0 : precision == WeightPrecision.Float32 ? 2.0 : 5.0;

    /// <summary><c>scaling-tokens.png</c> (time against T at E = 64) and <c>scaling-experts.png</c> (against E at T = 64).</summary>
    public void SavePlots(string directory)
    {
        Plot(PeerBenchmarks.TokenSweep.Select(t => new Shape(t, Workload.Experts)), s => s.Tokens,
            "tokens T", "Routed forward against T (E = 64, d = 4096, r = 16, top-2)", Path.Combine(directory, "scaling-tokens.png"));
        Plot(PeerBenchmarks.ExpertSweep.Select(e => new Shape(64, e)), s => s.Experts,
            "experts E", "Routed forward against E (T = 64, d = 4096, r = 16, top-2)", Path.Combine(directory, "scaling-experts.png"));
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

    private void Table(StringBuilder text, string axis, IEnumerable<Shape> shapes, Func<Shape, int> value, Func<Shape, WeightPrecision, double>? goal)
    {
        text.AppendLine($"| {axis} | storage | engine mean (median) | F32 ÷ this | TorchSharp PEFT loop (GB/s) | TorchSharp gather + bmm (GB/s) | best peer ÷ engine |" +
            (goal is null ? "" : " goal |") + " engine allocated (in run / alone) | engine GB/s over min bytes |");
        text.AppendLine("| ---: | :---: | ---: | ---: | ---: | ---: | ---: |" + (goal is null ? "" : " :---: |") + " ---: | ---: |");
        foreach (Shape shape in shapes)
        {
            double[] peers = [.. Precisions.SelectMany(p => TorchMethods.Select(m => Mean(shape, p, m))).OfType<double>()];
            double? f32 = Mean(shape, WeightPrecision.Float32, nameof(PeerBenchmarks.EngineCpu));
            foreach (WeightPrecision precision in Precisions.Where(p => _reports.ContainsKey((shape, p, nameof(PeerBenchmarks.EngineCpu)))))
            {
                BenchmarkReport ours = _reports[(shape, precision, nameof(PeerBenchmarks.EngineCpu))];
                Statistics engine = Stats(ours);
                long bytes = Workload.CostOf(shape.Tokens, shape.Experts, precision).MinimumBytes;
                string Peer(string method) => Mean(shape, precision, method) is double mean ? Invariant($"{Time(mean)} ({bytes / mean:F2})") : "—";
                string speedUp = f32 is double f ? Invariant($"{f / engine.Mean:F2}×") : "?";
                string ratio = peers.Length > 0 ? Invariant($"**{peers.Min() / engine.Mean:F2}×**") : "?";
                string goalCell = goal is null ? ""
                    : peers.Length == 0 ? " ? |"
                    : Invariant($" ≥ {goal(shape, precision):0.#}× {(peers.Min() / engine.Mean >= goal(shape, precision) ? "met" : "not met")} |");
                long? allocated = ours.GcStats.GetBytesAllocatedPerOperation(ours.BenchmarkCase);
                text.AppendLine(Invariant(
                    $"| {value(shape)} | {Label(precision)} | {Time(engine.Mean)} ({Time(engine.Median)}) | {speedUp} | {Peer(nameof(PeerBenchmarks.TorchLoop))} | {Peer(nameof(PeerBenchmarks.TorchGather))} | {ratio} |{goalCell} {allocated?.ToString(CultureInfo.InvariantCulture) ?? "?"} B / {Alone(shape, precision)} | {bytes / engine.Mean:F2} |"));
            }
        }
    }

    private void Plot(IEnumerable<Shape> shapes, Func<Shape, int> value, string axis, string title, string path)
    {
        Shape[] all = [.. shapes];
        // One line per implementation and storage that ran at some shape of the sweep.
        var lines = Implementations.SelectMany(i => Precisions.Select(p => (i.Method, Precision: p, Label: $"{i.Label}, {Label(p)}",
            Points: all.Where(s => Mean(s, p, i.Method) is not null).ToArray()))).Where(l => l.Points.Length > 0).ToArray();
        if (lines.Length == 0)
        {
            return;
        }
        // Log-log: cost grows with work, so equal ratios should look equally far apart.
        var plot = new Plot();
        foreach ((string method, WeightPrecision precision, string label, Shape[] points) in lines)
        {
            var series = plot.Add.Scatter(points.Select(s => Math.Log10(value(s))).ToArray(),
                points.Select(s => Math.Log10(Mean(s, precision, method)!.Value / 1e3)).ToArray());
            series.LegendText = label;
            series.MarkerSize = 8;
            series.LineWidth = 2;
        }
        var xTicks = new ScottPlot.TickGenerators.NumericManual();
        foreach (Shape s in all.Where(s => lines.Any(l => l.Points.Contains(s))))
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

    private string Alone(Shape shape, WeightPrecision precision) =>
        _allocations.TryGetValue((shape, precision), out double bytes) ? Invariant($"{bytes:0.##} B") : "?";

    /// <summary>A case's mean in ns, or null where it was not run (filtered out, or TorchSharp at F16).</summary>
    private double? Mean(Shape shape, WeightPrecision precision, string method) =>
        _reports.TryGetValue((shape, precision, method), out BenchmarkReport? report) ? Stats(report).Mean : null;

    private static Statistics Stats(BenchmarkReport report) => report.ResultStatistics
        ?? throw new InvalidOperationException($"no statistics for {report.BenchmarkCase.DisplayInfo}");

    private static string Label(WeightPrecision precision) => precision switch
    {
        WeightPrecision.Float32 => "F32",
        WeightPrecision.BFloat16 => "BF16",
        _ => "F16",
    };

    private static string Time(double nanoseconds) => nanoseconds >= 1e6
        ? Invariant($"{nanoseconds / 1e6:F2} ms")
        : Invariant($"{nanoseconds / 1e3:F1} µs");

    private static string Processor() => File.Exists("/proc/cpuinfo")
        ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown processor"
        : RuntimeInformation.ProcessArchitecture.ToString();

    private static string Relative(string path) => Path.GetRelativePath(Environment.CurrentDirectory, path).Replace('\\', '/');

    private static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
