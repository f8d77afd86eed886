using System.Globalization;
using MoErging.Cli;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;
using MoErging.Samples;
using static MoErging.Tests.CliTests;

namespace MoErging.Tests;

/// <summary>
/// Hostile inputs to the command line: outputs onto inputs, non-finite and empty sets, failures half-way through
/// writing several files, empty batches, temperatures whose reciprocal overflows, demos larger than the machine,
/// NaN in JSON and raw file-system errors. Each run is in-process on small files in a temporary directory.
/// </summary>
public sealed class HostileCliTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";
    private const int InputDim = 12, OutputDim = 7, Experts = 3;

    private sealed record Setup(TestData Data, TempDir Dir, TestLibrary Lib, string[] Dirs) : IDisposable
    {
        public void Dispose() => Dir.Dispose();

        /// <summary>An input file of x [tokens, d_in] (tokens may be 0), optionally with every value set to <paramref name="fill"/>.</summary>
        public string Input(int tokens, float? fill = null)
        {
            float[] x = fill is float f ? Enumerable.Repeat(f, tokens * InputDim).ToArray() : Data.Normal(tokens * InputDim);
            string path = Dir.Sub($"in-{tokens}-{fill?.ToString(CultureInfo.InvariantCulture) ?? "normal"}.safetensors");
            new SafeTensorsWriter().Add("x", x, [tokens, InputDim]).WriteTo(path);
            return path;
        }
    }

    private static Setup Prepare()
    {
        var data = new TestData();
        var dir = new TempDir();
        TestLibrary lib = data.Library(experts: Experts, dIn: InputDim, dOut: OutputDim, ranks: [2]);
        return new Setup(data, dir, lib, lib.WriteTo(dir.Path));
    }

    /// <summary>Every file under the directory with its bytes (links not followed), to show that a failed command changed nothing.</summary>
    private static Dictionary<string, byte[]> Snapshot(string root) =>
        Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint })
            .ToDictionary(f => f, File.ReadAllBytes);

    private static void AssertUnchanged(Dictionary<string, byte[]> before, string root)
    {
        Dictionary<string, byte[]> after = Snapshot(root);
        Assert.Equal(before.Keys.Order(), after.Keys.Order());
        foreach (var (path, bytes) in before)
        {
            Assert.True(bytes.AsSpan().SequenceEqual(after[path]), $"{path} changed");
        }
    }

    /// <summary>The error printed as one line (plus, for usage errors, the hint line).</summary>
    private static string OneError(string error, int code)
    {
        string[] lines = error.TrimEnd('\n', '\r').Split('\n');
        Assert.Equal(code == 2 ? 2 : 1, lines.Length);
        return lines[0];
    }

    // ------------------------------------------------------------------ 1. merge --output

    [Fact]
    public void MergeRefusesItsOwnInputsAndAnExistingAdapterWithoutForce()
    {
        using Setup s = Prepare();
        string[] merge = ["merge", "--experts", s.Dirs[0], s.Dirs[1], "--weights", "1,0.5", "--method", "cat"];
        string link = s.Dir.Sub("link-to-e1"), above = s.Dir.Sub("link-to-root");
        Directory.CreateSymbolicLink(link, s.Dirs[1]);
        Directory.CreateSymbolicLink(above, s.Dir.Path);
        Dictionary<string, byte[]> before = Snapshot(s.Dir.Path);

        foreach (string[] force in new[] { Array.Empty<string>(), ["--force"] })
        {
            var (code, _, error) = Run([.. merge, "--output", s.Dirs[0], .. force]);
            Assert.Equal(1, code);
            Assert.Contains($"--output {s.Dirs[0]} is expert 1 of --experts ({s.Dirs[0]}); a merge cannot write onto its own input", OneError(error, code));

            (code, _, error) = Run([.. merge, "--output", link, .. force]);
            Assert.Equal(1, code);
            Assert.Contains($"--output {link} is expert 2 of --experts ({s.Dirs[1]})", OneError(error, code));

            // A path that reaches an input through a link to a directory above it is the input too.
            (code, _, error) = Run([.. merge, "--output", Path.Combine(above, "e0"), .. force]);
            Assert.Equal(1, code);
            Assert.Contains("is expert 1 of --experts", error);
        }

        // Another expert's directory is an existing adapter: replaced only with --force.
        var (refused, _, why) = Run([.. merge, "--output", s.Dirs[2]]);
        Assert.Equal(1, refused);
        Assert.Contains($"--output {s.Dirs[2]} already holds an adapter; give --force to replace it", OneError(why, refused));
        AssertUnchanged(before, s.Dir.Path);

        var (code2, _, error2) = Run([.. merge, "--output", s.Dir.Sub("fresh")]);
        Assert.True(code2 == 0, error2);
        (code2, _, error2) = Run([.. merge, "--output", s.Dirs[2], "--force"]);
        Assert.True(code2 == 0, error2);
        // The replaced adapter is the merge itself: byte for byte what the fresh directory got.
        foreach (string file in new[] { PeftAdapter.WeightsFileName, PeftAdapter.ConfigFileName })
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(s.Dir.Sub("fresh"), file)), File.ReadAllBytes(Path.Combine(s.Dirs[2], file)));
        }
        Assert.Equal(before[Path.Combine(s.Dirs[0], PeftAdapter.WeightsFileName)], File.ReadAllBytes(Path.Combine(s.Dirs[0], PeftAdapter.WeightsFileName)));
    }

    [Fact]
    public void MergeOntoTheBaseOrAnExistingFileOrAnEmptyPathIsRefused()
    {
        using Setup s = Prepare();
        string baseFile = s.Dir.Sub("base.safetensors");
        new SafeTensorsWriter().Add(PeftAdapter.BaseName(Module) + ".weight", s.Data.Normal(OutputDim * InputDim), [OutputDim, InputDim]).WriteTo(baseFile);
        string[] merge = ["merge", "--experts", s.Dirs[0], s.Dirs[1], "--weights", "1,1", "--method", "linear", "--base", baseFile];
        Dictionary<string, byte[]> before = Snapshot(s.Dir.Path);

        var (code, _, error) = Run([.. merge, "--output", baseFile, "--force"]);
        Assert.Equal(1, code);
        Assert.Contains($"--output {baseFile} is the --base file ({baseFile}); a merge cannot write onto its own input, even with --force", OneError(error, code));

        File.WriteAllText(s.Dir.Sub("taken.safetensors"), "keep");
        (code, _, error) = Run([.. merge, "--output", s.Dir.Sub("taken.safetensors")]);
        Assert.Equal(1, code);
        Assert.Contains("already exists; give --force to replace it", OneError(error, code));
        Assert.Equal("keep", File.ReadAllText(s.Dir.Sub("taken.safetensors")));
        File.Delete(s.Dir.Sub("taken.safetensors"));
        AssertUnchanged(before, s.Dir.Path);

        foreach (string[] output in new[] { new[] { "--output", "" }, ["--output="] })
        {
            (code, _, error) = Run([.. merge[..^2], .. output]);
            Assert.Equal(2, code);
            Assert.Equal("moerge: --output needs a value, got an empty string", OneError(error, code));
        }
        (code, _, error) = Run(["merge", "--experts", s.Dirs[0], "", "--weights", "1,1", "--method", "linear", "--output", s.Dir.Sub("m")]);
        Assert.Equal(2, code);
        Assert.Contains("--experts: item 2 is an empty string", error);
    }

    // ------------------------------------------------------------------ 2. evaluate on a bad set

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void EvaluateNamesTheFileAndRowOfANonFiniteValue(float bad)
    {
        using Setup s = Prepare();
        const int rows = 6;
        float[] x = s.Data.Normal(rows * InputDim);
        int row = s.Data.Rng.Next(rows), column = s.Data.Rng.Next(InputDim);
        x[row * InputDim + column] = bad;
        string set = s.Dir.Sub("set.safetensors");
        new SafeTensorsWriter().Add("x", x, [rows, InputDim]).Add("expert", [0, 1, 2, 0, 1, 2], [rows]).WriteTo(set);

        var (code, stdout, error) = Run(["evaluate", "--experts", .. s.Dirs, "--module", "down_proj", "--data", set, "--backend", "cpu"]);
        Assert.Equal(1, code);
        Assert.Equal("", stdout);
        string expected = string.Create(CultureInfo.InvariantCulture, $"{set}: row {row} holds {bad} at column {column}; every value of a routing set must be finite");
        Assert.Equal($"moerge: error: {expected}", OneError(error, code));

        // The managed set refuses it the same way.
        var thrown = Assert.Throws<ArgumentException>(() => new RoutingDataset(x, InputDim, [0, 1, 2, 0, 1, 2], [0, 0, 0, 0, 0, 0], ["t"]));
        Assert.Contains($"row {row} holds", thrown.Message);
    }

    [Fact]
    public void EvaluateAndTrainRouterRefuseAnEmptySet()
    {
        using Setup s = Prepare();
        string set = s.Dir.Sub("empty.safetensors");
        new SafeTensorsWriter().Add("x", Array.Empty<float>(), [0, InputDim]).Add("expert", Array.Empty<int>(), [0]).WriteTo(set);
        var (code, _, error) = Run(["evaluate", "--experts", .. s.Dirs, "--module", "down_proj", "--data", set, "--backend", "cpu"]);
        Assert.Equal(1, code);
        Assert.Equal($"moerge: error: {set}: the routing set is empty (x has no rows)", OneError(error, code));
        (code, _, error) = Run(["train-router", "--experts", .. s.Dirs, "--module", "down_proj", "--data", set, "--output", s.Dir.Sub("r.safetensors")]);
        Assert.Equal(1, code);
        Assert.Contains("the routing set is empty", error);
        Assert.False(File.Exists(s.Dir.Sub("r.safetensors")));
    }

    // ------------------------------------------------------------------ 3. all or nothing

    [Fact]
    public void CentroidsWriteEveryExpertsFileOrNone()
    {
        // Root ignores a read-only directory, so the last expert's target is made unwritable another way: a directory.
        using Setup s = Prepare();
        var files = new string[Experts];
        for (int e = 0; e < Experts; e++)
        {
            files[e] = s.Dir.Sub($"samples-{e}.safetensors");
            new SafeTensorsWriter().Add("down_proj", s.Data.Normal(4 * InputDim), [4, InputDim]).WriteTo(files[e]);
        }
        CentroidRouter.SaveCentroids(s.Dirs[0], new Dictionary<string, float[]> { [Module] = new float[InputDim] });
        string blocked = Path.Combine(s.Dirs[2], CentroidRouter.CentroidFileName);
        Directory.CreateDirectory(blocked);
        Dictionary<string, byte[]> before = Snapshot(s.Dir.Path);

        var (code, stdout, error) = Run(["centroids", "--experts", .. s.Dirs, "--data", .. files]);
        Assert.Equal(1, code);
        Assert.Equal("", stdout);
        Assert.Equal($"moerge: error: {blocked}: is a directory", OneError(error, code));
        AssertUnchanged(before, s.Dir.Path); // expert 0's old file kept, no file for expert 1, no temporaries

        Directory.Delete(blocked);
        (code, _, error) = Run(["centroids", "--experts", .. s.Dirs, "--data", .. files]);
        Assert.True(code == 0, error);
        Assert.All(s.Dirs, d => Assert.True(File.Exists(Path.Combine(d, CentroidRouter.CentroidFileName))));
    }

    [Fact]
    public void RouteWritesItsDecisionAndReportOrNone()
    {
        using Setup s = Prepare();
        string input = s.Input(5), decision = s.Dir.Sub("decision.safetensors"), report = s.Dir.Sub("report");
        string[] route = ["route", "--experts", .. s.Dirs, "--module", "down_proj", "--input", input, "--router", "arrow", "--backend", "cpu",
            "--output", decision, "--report", report];
        File.WriteAllText(decision, "old decision");
        Directory.CreateDirectory(Path.Combine(report, "statistics.json")); // fails the last of the four files
        Dictionary<string, byte[]> before = Snapshot(s.Dir.Path);

        var (code, _, error) = Run(route);
        Assert.Equal(1, code);
        Assert.Equal($"moerge: error: {Path.Combine(report, "statistics.json")}: is a directory", OneError(error, code));
        AssertUnchanged(before, s.Dir.Path);

        // A report directory that is a file; a report directory that did not exist is removed again on failure.
        Directory.Delete(report, recursive: true);
        File.WriteAllText(report, "a file");
        (code, _, error) = Run(route);
        Assert.Equal(1, code);
        Assert.Equal($"moerge: error: {report}: is a file, not a directory", OneError(error, code));
        File.Delete(report);
        string missing = s.Dir.Sub("nowhere/decision.safetensors"), nested = s.Dir.Sub("new/report");
        (code, _, error) = Run([.. route[..^4], "--output", missing, "--report", nested]);
        Assert.Equal(1, code);
        Assert.Contains($"{missing}: the directory {s.Dir.Sub("nowhere")} does not exist", error);
        Assert.False(Directory.Exists(s.Dir.Sub("new")), "the report directory made for the failed command is removed");
        Assert.Equal("old decision", File.ReadAllText(decision));

        (code, _, error) = Run(route);
        Assert.True(code == 0, error);
        Assert.True(File.Exists(Path.Combine(report, "heatmap.png")));
        using SafeTensorsFile written = SafeTensorsFile.Open(decision);
        Assert.Equal([5L, 3], written.GetTensor("expert_ids").Shape.ToArray());
        Assert.Empty(Directory.EnumerateFiles(s.Dir.Path, "*.tmp*", SearchOption.AllDirectories));
    }

    [Fact]
    public void OutputFilesPutBackWhatARenameFailureWouldLose()
    {
        // A file that turns into a directory after the checks (another process) fails the second rename; the
        // first file, already replaced, gets its old bytes back and no temporary or backup is left.
        using var dir = new TempDir();
        string first = dir.Sub("first"), second = dir.Sub("second"), third = dir.Sub("third");
        File.WriteAllText(first, "old");
        OutputFiles files = new OutputFiles()
            .Add(first, stream => stream.Write("new"u8))
            .Add(second, stream => stream.Write("2"u8))
            .Add(third, _ => Directory.CreateDirectory(second));
        var thrown = Assert.Throws<IOException>(files.Commit);
        Assert.StartsWith($"{second}: ", thrown.Message);
        Assert.DoesNotContain(".tmp", thrown.Message);
        Assert.Equal("old", File.ReadAllText(first));
        Assert.False(File.Exists(third));
        Assert.Equal([first], Directory.EnumerateFiles(dir.Path));
    }

    // ------------------------------------------------------------------ 4. T = 0

    [Theory]
    [InlineData("forward")]
    [InlineData("route")]
    public void AnEmptyBatchAtTaskGranularityGivesEmptyOutputs(string command)
    {
        using Setup s = Prepare();
        string output = s.Dir.Sub("out.safetensors");
        var (code, _, error) = Run([command, "--experts", .. s.Dirs, "--module", "down_proj", "--input", s.Input(0), "--router", "arrow", "--top-k", "2",
            "--granularity", "task", "--output", output, "--backend", "cpu"]);
        Assert.True(code == 0, error);
        using SafeTensorsFile file = SafeTensorsFile.Open(output);
        Assert.Equal([0L, 2], file.GetTensor("expert_ids").Shape.ToArray());
        Assert.Equal([0L, 2], file.GetTensor("expert_weights").Shape.ToArray());
        if (command == "forward")
        {
            Assert.Equal([0L, OutputDim], file.GetTensor("y").Shape.ToArray());
        }
    }

    [Fact]
    public void SessionRoutesAndForwardsAnEmptyBatchAtEveryGranularity()
    {
        using Setup s = Prepare();
        AdaptedModule module = s.Lib.Module(Module);
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 2 });
        using Session session = engine.CreateSession();
        Router[] routers = [new ArrowRouter(module, new RoutingOptions(2)), new FixedRouter([0.5f, 0.25f, 0.25f])];
        RoutingGranularity[] granularities = [RoutingGranularity.Token, RoutingGranularity.Task, RoutingGranularity.Example([])];
        foreach (Router router in routers)
        {
            foreach (RoutingGranularity granularity in granularities)
            {
                // A decision that held tokens before must come back empty.
                var decision = new RoutingDecision();
                session.Route(module, router, s.Data.Normal(4 * InputDim), decision);
                session.Route(module, router, granularity, ReadOnlySpan<float>.Empty, decision);
                Assert.Equal(0, decision.TokenCount);
                session.Forward(module, router, granularity, Aggregation.Output, ReadOnlySpan<float>.Empty, decision, Span<float>.Empty);
                Assert.Equal(0, decision.TokenCount);
                session.Forward(module, router, granularity, Aggregation.Parameter, ReadOnlySpan<Half>.Empty, decision, Span<Half>.Empty);
                Assert.Equal(0, decision.TokenCount);
            }
        }
    }

    // ------------------------------------------------------------------ 5. temperature

    [Fact]
    public void TheSmallestTemperatureIsTheFirstWhoseReciprocalIsFinite()
    {
        float min = RoutingOptions.MinTemperature;
        Assert.True(float.IsFinite(1f / min), $"1/{min} overflows");
        Assert.True(float.IsPositiveInfinity(1f / float.BitDecrement(min)));
        // The reference in float64: 1/τ rounds to +∞ in float32 from 2^128 - 2^103 (half an ulp above float.MaxValue) on.
        Assert.True(1.0 / min < Math.Pow(2, 128) - Math.Pow(2, 103));
        Assert.True(1.0 / float.BitDecrement(min) >= Math.Pow(2, 128) - Math.Pow(2, 103));

        using Setup s = Prepare();
        AdaptedModule module = s.Lib.Module(Module);
        _ = new ArrowRouter(module, new RoutingOptions(2, min));
        foreach (float tiny in new[] { float.BitDecrement(min), 1e-45f, float.Epsilon })
        {
            var thrown = Assert.Throws<ArgumentOutOfRangeException>(() => new ArrowRouter(module, new RoutingOptions(2, tiny)));
            Assert.Contains($"temperature is too small: 1/temperature overflows float32; the smallest allowed is {min.ToString("R", CultureInfo.InvariantCulture)}", thrown.Message);
            Assert.Throws<ArgumentOutOfRangeException>(() => RoutingOptions.ValidateTemperature(tiny));
        }
    }

    [Theory]
    [InlineData("forward")]
    [InlineData("route")]
    public void ATemperatureWhoseReciprocalOverflowsIsAUsageError(string command)
    {
        using Setup s = Prepare();
        string output = s.Dir.Sub("out.safetensors");
        var (code, stdout, error) = Run([command, "--experts", .. s.Dirs, "--module", "down_proj", "--input", s.Input(3), "--router", "arrow",
            "--temperature", "1e-45", "--output", output]);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("moerge: --temperature 1e-45: temperature is too small", OneError(error, code));
        Assert.Contains(RoutingOptions.MinTemperature.ToString("R", CultureInfo.InvariantCulture), error);
        Assert.False(File.Exists(output));
    }

    // ------------------------------------------------------------------ 6. demo size

    [Fact]
    public void DemoRefusesWhatTheMachineCannotHoldBeforeAllocating()
    {
        // 4096 experts × 2 modules × 2 factors × rank 1024 × d 65536 × 4 bytes: 4.4 TB, held twice.
        long library = 4096L * 2 * 2 * 1024 * 65536 * 4;
        long before = GC.GetAllocatedBytesForCurrentThread();
        var (code, stdout, error) = Run("demo", "--experts", "4096", "--dim", "65536", "--rank", "1024", "--backend", "cpu");
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        string line = OneError(error, code);
        Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"= {library / 1e9:F1} GB"), line);
        Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"but {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 1e9:F1} GB is available"), line);
        Assert.True(allocated < 16 << 20, $"{allocated} bytes allocated before refusing");
    }

    // ------------------------------------------------------------------ 7. messages

    [Fact]
    public void NaNRowsAreRefusedNamingTheTokenNotRoutedToNaNStatistics()
    {
        using Setup s = Prepare();
        var (code, stdout, error) = Run(["route", "--experts", .. s.Dirs, "--module", "down_proj", "--input", s.Input(4, float.NaN), "--router", "arrow",
            "--json", "--backend", "cpu"]);
        Assert.Equal(1, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("moerge: error: token 0: its router scores are not finite", OneError(error, code));
    }

    [Fact]
    public void FileSystemErrorsNameTheUsersPathInOneLine()
    {
        using Setup s = Prepare();
        string loop = s.Dir.Sub("loop"), other = s.Dir.Sub("other");
        File.CreateSymbolicLink(loop, other);
        File.CreateSymbolicLink(other, loop);
        string[] common = ["--experts", .. s.Dirs, "--module", "down_proj", "--router", "uniform", "--backend", "cpu"];

        var (code, _, error) = Run(["route", .. common, "--input", loop]);
        Assert.Equal(1, code);
        Assert.Equal($"moerge: error: {loop}: is unreadable (too many levels of symbolic links), not a safetensors file; only regular files are read", OneError(error, code));

        (code, _, error) = Run(["forward", .. common, $"--input={s.Dir.Sub("absent.safetensors")}", "--output", s.Dir.Sub("o.safetensors")]);
        Assert.Equal(1, code);
        Assert.Equal($"moerge: error: {s.Dir.Sub("absent.safetensors")}: no such file", OneError(error, code));

        (code, _, error) = Run(["merge", "--experts", s.Dirs[0], loop, "--weights", "1,1", "--method", "linear", "--output", s.Dir.Sub("m")]);
        Assert.Equal(1, code);
        Assert.Equal($"moerge: error: {loop}: too many levels of symbolic links", OneError(error, code));

        // A writer's temporary file is never the path named: the output is.
        Directory.CreateDirectory(s.Dir.Sub("taken"));
        var set = new RoutingDataset(s.Data.Normal(3 * InputDim), InputDim, [0, 1, 2], [0, 1, 2], ["a", "b", "c"]);
        set.Save(s.Dir.Sub("set.safetensors"));
        (code, _, error) = Run(["train-router", "--experts", .. s.Dirs, "--module", "down_proj", "--data", s.Dir.Sub("set.safetensors"), "--output", s.Dir.Sub("taken"),
            "--iterations", "2"]);
        Assert.Equal(1, code);
        Assert.StartsWith($"moerge: error: {s.Dir.Sub("taken")}: ", OneError(error, code));
        Assert.DoesNotContain(".tmp", error);
    }
}
