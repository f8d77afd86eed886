using System.Diagnostics;
using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Running;
using MoErging.Bench;
using MoErging.Execution;

// "quick [tokens]": a stopwatch breakdown (route, forward, both) for iterating on the kernels;
// "library write|load ...": the large-library load measurement (see LargeLibrary);
// anything else goes to BenchmarkDotNet (for example: --filter '*' --artifacts DIR).
if (args.Length > 0 && args[0] == "quick")
{
    return Quick(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 64);
}
if (args.Length > 0 && args[0] == "library")
{
    return LargeLibrary.Run(args[1..]);
}

IConfig config = DefaultConfig.Instance
    .AddColumn(StatisticColumn.Median, new GigabytesPerSecondColumn())
    .AddExporter(MarkdownExporter.GitHub)
    .WithOptions(ConfigOptions.JoinSummary);
BenchmarkSwitcher.FromAssembly(typeof(ForwardBenchmarks).Assembly).Run(args, config);
return 0;

static int Quick(int tokens)
{
    Workload[] set = Workload.Set(tokens);
    using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu });
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
    ForwardCost cost = Workload.CostOf(tokens);
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"T={tokens}: route {route:F0} µs, forward {forward:F0} µs, both {both:F0} µs; min bytes {cost.MinimumBytes / 1e6:F1} MB → {cost.MinimumBytes / both / 1e3:F2} GB/s"));
    return 0;
}
