using System.Runtime.InteropServices;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Filters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using MoErging.Bench;
using MoErging.Bench.Peers;
using MoErging.Execution;

// dotnet run -c Release --project bench/MoErging.Bench.Peers -- [--machine NAME] [--results DIR]
//     [--summary RESULTS.md] [--artifacts DIR] [--filter GLOB]... [--short]
// Runs PeerBenchmarks, copies BenchmarkDotNet's markdown table and the scaling plots into --results, and puts
// the headline ratios between the peers markers of --summary. --filter may be repeated: a case runs when any glob
// matches its full name (for example '*T=64 E=64*'). --short: 3 iterations, to check the pipeline.
if (LibstdcxxCompat.Ensure(args) is int rerun)
{
    return rerun;
}

string Option(string name, string fallback)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
}
string artifacts = Path.GetFullPath(Option("--artifacts", Path.Combine("artifacts", "bench-peers")));
string? results = Option("--results", "") is { Length: > 0 } r ? Path.GetFullPath(r) : null;
string? summaryFile = Option("--summary", "") is { Length: > 0 } s ? Path.GetFullPath(s) : null;

// In process: the run's own copy of libtorch (and, on older libstdc++, the shim above) is what gets measured;
// BenchmarkDotNet's separate build of the project would load the NuGet cache's copy instead.
Job job = (args.Contains("--short") ? Job.ShortRun : Job.Default).WithToolchain(InProcessEmitToolchain.Instance);
IConfig config = DefaultConfig.Instance
    .AddJob(job)
    .AddColumn(StatisticColumn.Median, new GigabytesPerSecondColumn(MinimumBytes))
    .AddExporter(MarkdownExporter.GitHub)
    .WithArtifactsPath(artifacts)
    .AddFilter(new SimpleFilter(PeerBenchmarks.Runs));
string[] filters = [.. args.Where((_, i) => i > 0 && args[i - 1] == "--filter")];
if (filters.Length > 0)
{
    config = config.AddFilter(new GlobFilter(filters));
}
Summary summary = BenchmarkRunner.Run<PeerBenchmarks>(config);
if (summary.HasCriticalValidationErrors || summary.Reports.Any(report => !report.Success))
{
    Console.Error.WriteLine("some benchmarks failed; no results written");
    return 1;
}
Dictionary<(Shape, WeightPrecision), double> allocations = summary.BenchmarksCases
    .Select(c => ((Shape)c.Parameters["Shape"], (WeightPrecision)c.Parameters["Precision"])).Distinct()
    .ToDictionary(key => key, key => EngineAllocations.PerForward(key.Item1, key.Item2));
var report = new PeerReport(summary, allocations, Option("--machine",
    $"{RuntimeInformation.OSArchitecture}-{Environment.ProcessorCount}core".ToLowerInvariant()));
if (results is not null)
{
    Directory.CreateDirectory(results);
    foreach (string table in Directory.GetFiles(Path.Combine(artifacts, "results"), "*.md"))
    {
        File.Copy(table, Path.Combine(results, Path.GetFileName(table)), overwrite: true);
    }
    report.SavePlots(results);
}
// A reduced or short run says so in its headline, with the options that made it so.
string reduced = string.Join(' ', filters.Select(f => $"--filter '{f}'").Prepend(args.Contains("--short") ? "--short" : ""))
    .Trim();
string headline = report.Headline(results, reduced);
Console.WriteLine(headline);
if (summaryFile is not null)
{
    PeerReport.Splice(summaryFile, headline);
    Console.WriteLine($"headline written into {summaryFile}");
}
return 0;

// Every case reads its weights at the case's precision: the engine's storage, or TorchSharp's tensors.
static long? MinimumBytes(BenchmarkCase benchmark) =>
    benchmark.Parameters["Shape"] is Shape shape
        ? Workload.CostOf(shape.Tokens, shape.Experts, (WeightPrecision)benchmark.Parameters["Precision"]).MinimumBytes : null;
