using MoErging.Fuzz;

namespace MoErging.Tests;

/// <summary>
/// The loader fuzzer: a short run (3,000 cases, fresh seed each time) in which no case may crash, hang, or load
/// differently eagerly and lazily; and the fuzzer's own promises (reproducible cases, each outcome reachable).
/// </summary>
public sealed class FuzzTests
{
    [Fact]
    public void ShortRunHasNoCrashes()
    {
        var data = new TestData();
        string work = Path.Combine(LoaderFuzzer.DefaultWorkRoot, "moerging-fuzz-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            FuzzSummary summary = new LoaderFuzzer(data.Seed, work).Run(0, 3000, threads: 2, TimeSpan.FromSeconds(30));
            string crashes = string.Join("\n", summary.Crashes.Select(c => $"{c.Case.Describe()}: {c.Detail}"));
            Assert.True(summary.Crashed == 0, $"fuzz seed {data.Seed}: {summary.Crashed} crashed (replay: dotnet run -c Release --project tests/MoErging.Fuzz -- --seed {data.Seed} --case I)\n{crashes}");
            Assert.False(summary.Hung);
            Assert.Equal(3000, summary.Tried);
            Assert.Equal(summary.Tried, summary.Rejected + summary.Accepted);
            // The generator reaches both sides: adapters that survive their mutations and every kind of rejection.
            Assert.True(summary.Accepted > 0, $"fuzz seed {data.Seed}: nothing was accepted");
            Assert.True(summary.RejectedBy.Keys.Order().SequenceEqual(["FileNotFoundException", "InvalidDataException", "NotSupportedException"]),
                $"fuzz seed {data.Seed}: rejections {string.Join(", ", summary.RejectedBy)}");
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
        for (long i = 0; i < 50; i++)
        {
            FuzzCase a = FuzzCase.Build(data.Seed, i), b = FuzzCase.Build(data.Seed, i);
            Assert.True(a.Describe() == b.Describe() && (a.Config ?? []).SequenceEqual(b.Config ?? []) && (a.Weights ?? []).SequenceEqual(b.Weights ?? []),
                $"seed {data.Seed}, case {i} differs between builds");
        }
        Assert.NotEqual(FuzzCase.Build(data.Seed, 0).Describe() + FuzzCase.Build(data.Seed, 1).Describe(),
            FuzzCase.Build(data.Seed + 1, 0).Describe() + FuzzCase.Build(data.Seed + 1, 1).Describe());
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
