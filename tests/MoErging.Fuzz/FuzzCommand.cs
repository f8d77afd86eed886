using System.Globalization;
using MoErging.Cli;

namespace MoErging.Fuzz;

/// <summary>
/// The loader fuzzer's command line (<c>dotnet run -c Release --project tests/MoErging.Fuzz -- [options]</c>):
/// mutation fuzzing of the safetensors and PEFT adapter loaders. Exit codes: 0 no crash, 1 a crash or an error,
/// 2 a usage error; errors are one line on stderr.
/// </summary>
public static class FuzzCommand
{
    /// <summary>How to run the tool, for its usage and its replay lines.</summary>
    private const string Command = "dotnet run -c Release --project tests/MoErging.Fuzz --";

    private const string Help = $$"""
        usage: {{Command}} [--cases N] [--seed S] [--case I] [--threads T] [--timeout SECONDS] [--save DIR] [--work DIR]
               [--progress]

        Builds N random valid PEFT adapters, applies 1-3 mutations to each (byte flips, truncations, appended
        and spliced bytes, header length, dtype, shape and offset edits including huge and negative values,
        duplicate, renamed, removed and added keys, metadata and config JSON edits, missing files), writes each
        as an adapter directory and loads it: safetensors from memory with every tensor read, then the adapter
        eagerly and lazily. Reports how many cases were tried, rejected cleanly (only documented exceptions),
        accepted (eager and lazy loads identical) and crashed (anything else, a hang, or eager and lazy
        disagreeing). Exit code 1 if any crashed. Case I of seed S is always the same case.

          --cases     N cases, numbered 0..N-1 (default 10000)
          --seed      S (default: random; printed so the run can be repeated)
          --case      run only case I of seed S and describe it
          --threads   workers (default: all processors)
          --timeout   seconds one case may take before it counts as a hang (default 10)
          --save      write the files of each crashing case to DIR/case-I
          --work      where cases are written while they run (default: /dev/shm if present, else the temp folder)
          --progress  draw the progress bar on stderr even when stderr is not a terminal
        """;

    private static readonly Dictionary<string, OptionKind> Options = new()
    {
        ["cases"] = OptionKind.Single,
        ["seed"] = OptionKind.Single,
        ["case"] = OptionKind.Single,
        ["threads"] = OptionKind.Single,
        ["timeout"] = OptionKind.Single,
        ["save"] = OptionKind.Single,
        ["work"] = OptionKind.Single,
        ["progress"] = OptionKind.Flag,
        ["help"] = OptionKind.Flag,
    };

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (args.Contains("--help") || args.Contains("-h"))
        {
            stdout.WriteLine(Help);
            return 0;
        }
        try
        {
            return Fuzz(args, stdout, stderr);
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"fuzz: {e.Message}");
            stderr.WriteLine("run with --help for the options");
            return 2;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A work or save folder that cannot be written; anything else is a bug of the fuzzer and keeps its stack trace.
            stderr.WriteLine($"fuzz: error: {e.Message.ReplaceLineEndings(" ")}");
            return 1;
        }
    }

    private static int Fuzz(string[] args, TextWriter stdout, TextWriter stderr)
    {
        CommandLine line = CommandLine.Parse(args, Options);
        line.NoPositionals();
        if (line.Has("case") && !line.Has("seed"))
        {
            throw new UsageException("--case needs --seed");
        }
        if (line.Has("case") && line.Has("cases"))
        {
            throw new UsageException("give --case or --cases, not both");
        }
        int seed = line.Int("seed", Random.Shared.Next(), 0);
        int cases = line.Int("cases", 10_000, 1);
        int threads = line.Int("threads", Environment.ProcessorCount, 1, 256);
        var limit = TimeSpan.FromSeconds(line.Int("timeout", 10, 1, 3600));
        string? save = line.Single("save");
        string work = Path.Combine(line.Single("work") ?? LoaderFuzzer.DefaultWorkRoot, $"moerge-fuzz-{Environment.ProcessId}-{Guid.NewGuid():N}"[..40]);
        try
        {
            if (line.Has("case"))
            {
                return One(seed, line.Int("case", 0, 0), work, save, stdout);
            }
            stdout.WriteLine($"fuzz: seed {seed}, cases 0..{cases - 1} on {threads} thread{(threads == 1 ? "" : "s")}");
            ProgressBar? bar = ProgressBar.For(stderr, line.Flag("progress"), "fuzz");
            FuzzSummary summary;
            try
            {
                summary = new LoaderFuzzer(seed, work).Run(0, cases, threads, limit,
                    bar is null ? null : done => bar.Update((double)done / cases, $"{done} cases"));
                bar?.Finish($"{summary.Tried} cases");
            }
            finally
            {
                bar?.End();
            }
            Report(summary, seed, save, stdout);
            return summary.Crashed == 0 ? 0 : 1;
        }
        finally
        {
            if (Directory.Exists(work))
            {
                Directory.Delete(work, recursive: true);
            }
        }
    }

    private static int One(int seed, int index, string work, string? save, TextWriter stdout)
    {
        FuzzCase c = FuzzCase.Build(seed, index);
        FuzzResult result = LoaderFuzzer.RunCase(c, Path.Combine(work, "adapter"));
        stdout.WriteLine($"seed {seed}, {c.Describe()}");
        stdout.WriteLine($"{result.Outcome.ToString().ToLowerInvariant()}{(result.Detail.Length > 0 ? ": " + result.Detail : "")}");
        if (save is not null)
        {
            LoaderFuzzer.Write(c, Path.Combine(save, $"case-{index}"));
        }
        return result.Outcome == FuzzOutcome.Crashed ? 1 : 0;
    }

    private static void Report(FuzzSummary summary, int seed, string? save, TextWriter stdout)
    {
        var c = CultureInfo.InvariantCulture;
        stdout.WriteLine(string.Create(c,
            $"tried {summary.Tried}, rejected cleanly {summary.Rejected}, accepted {summary.Accepted}, crashed {summary.Crashed} ({summary.Elapsed.TotalSeconds:F1} s, {summary.Tried / summary.Elapsed.TotalSeconds:F0} cases/s)"));
        stdout.WriteLine("rejected by: " + string.Join(", ", summary.RejectedBy.OrderByDescending(p => p.Value).Select(p => $"{p.Key} {p.Value}")));
        foreach (FuzzResult crash in summary.Crashes.OrderBy(r => r.Case.Index))
        {
            stdout.WriteLine($"crash: {crash.Case.Describe()}: {crash.Detail.ReplaceLineEndings(" | ")}");
            stdout.WriteLine($"  replay: {Command} --seed {seed} --case {crash.Case.Index}");
            if (save is not null)
            {
                LoaderFuzzer.Write(crash.Case, Path.Combine(save, $"case-{crash.Case.Index}"));
            }
        }
        if (summary.Hung)
        {
            stdout.WriteLine("stopped early: a case did not finish in time");
        }
    }
}
