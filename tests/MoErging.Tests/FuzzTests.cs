using MoErging.Fuzz;

namespace MoErging.Tests;

/// <summary>
/// The loader fuzzer: a short run (3,000 cases) in which no case may crash, hang, or load differently eagerly and
/// lazily; and the fuzzer's own promises (reproducible cases, each outcome reachable). The seed is the suite's
/// (<see cref="TestData"/>: fresh each run, MOERGING_TEST_SEED replays it); each test prints it, and every failure
/// names it and the cases that failed.
/// </summary>
public sealed class FuzzTests
{
    [Fact]
    public void ShortRunHasNoCrashes()
    {
        var data = new TestData();
        string run = Announce(data);
        string work = Path.Combine(LoaderFuzzer.DefaultWorkRoot, "moerging-fuzz-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            FuzzSummary summary = new LoaderFuzzer(data.Seed, work).Run(0, 3000, threads: 2, TimeSpan.FromSeconds(30));
            // A hung case is listed among the crashes, as "did not finish".
            string crashes = string.Join("\n", summary.Crashes.Select(c => $"  {c.Case.Describe()}: {c.Detail}"));
            Assert.True(summary.Crashed == 0 && !summary.Hung,
                $"{run}: {summary.Crashed} of {summary.Tried} cases crashed{(summary.Hung ? ", and the run stopped at a hung case" : "")} (the first {summary.Crashes.Count} below; dotnet run -c Release --project tests/MoErging.Fuzz -- --seed {data.Seed} --case I replays case I alone)\n{crashes}");
            Assert.True(summary.Tried == 3000, $"{run}: tried {summary.Tried} of 3000 cases");
            Assert.True(summary.Tried == summary.Rejected + summary.Accepted, $"{run}: {summary.Tried} tried, {summary.Rejected} rejected + {summary.Accepted} accepted");
            // The generator reaches both sides: adapters that survive their mutations and every kind of rejection.
            Assert.True(summary.Accepted > 0, $"{run}: nothing was accepted");
            Assert.True(summary.RejectedBy.Keys.Order().SequenceEqual(["FileNotFoundException", "InvalidDataException", "NotSupportedException"]),
                $"{run}: rejections {string.Join(", ", summary.RejectedBy)}");
        }
        finally
        {
            if (Directory.Exists(work))
            {
                Directory.Delete(work, recursive: true);
            }
        }
    }

    [Fact]
    public void CasesAreAPureFunctionOfSeedAndIndex()
    {
        var data = new TestData();
        string run = Announce(data);
        for (long i = 0; i < 50; i++)
        {
            FuzzCase a = FuzzCase.Build(data.Seed, i), b = FuzzCase.Build(data.Seed, i);
            Assert.True(a.Describe() == b.Describe() && (a.Config ?? []).SequenceEqual(b.Config ?? []) && (a.Weights ?? []).SequenceEqual(b.Weights ?? []),
                $"{run}: {a.Describe()} differs between builds");
        }
        string first = FuzzCase.Build(data.Seed, 0).Describe() + " / " + FuzzCase.Build(data.Seed, 1).Describe();
        string next = FuzzCase.Build(data.Seed + 1, 0).Describe() + " / " + FuzzCase.Build(data.Seed + 1, 1).Describe();
        Assert.True(first != next, $"{run}: cases 0 and 1 are the same for seed {data.Seed + 1}: {first}");
    }

    /// <summary>Prints the run's seed and returns the words every failure starts with.</summary>
    private static string Announce(TestData data)
    {
        string run = $"fuzz {data} (MOERGING_TEST_SEED={data.Seed} replays this run)";
        TestContext.Current.TestOutputHelper?.WriteLine(run);
        return run;
    }

    [Fact]
    public void CommandLineReportsItsCountsAndReplaysACase()
    {
        using var dir = new TempDir();
        var (code, output, error) = Fuzz("--cases", "200", "--seed", "7", "--work", dir.Path);
        Assert.True(code == 0, error + output);
        Assert.Contains("fuzz: seed 7, cases 0..199", output);
        Assert.Matches(@"tried 200, rejected cleanly \d+, accepted \d+, crashed 0", output);

        (code, output, error) = Fuzz("--seed", "7", "--case", "3", "--save", dir.Sub("saved"));
        Assert.True(code == 0, error);
        Assert.StartsWith("seed 7, case 3: ", output);
        Assert.True(Directory.Exists(dir.Sub("saved/case-3")));
        (code, _, error) = Fuzz("--case", "3");
        Assert.Equal(2, code);
        Assert.StartsWith("fuzz: --case needs --seed", error);
        // The fuzzer is no longer a command of moerge.
        Assert.Equal(2, CliTests.Run("fuzz", "--cases", "1").Code);
    }

    private static (int Code, string Out, string Err) Fuzz(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = FuzzCommand.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
