using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Tests;

/// <summary>The moerge command line, run in-process on real files.</summary>
public sealed class CliTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    /// <summary>Runs moerge in-process; returns the exit code and what it printed.</summary>
    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Cli.Cli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void VersionIsTheOneSetForEveryAssembly()
    {
        var (code, output, _) = Run("--version");
        Assert.Equal(0, code);
        string expected = typeof(MoErging.Execution.Engine).Assembly.GetName().Version!.ToString(3);
        Assert.Equal($"moerge {expected}", output.TrimEnd());
        Assert.Equal(typeof(MoErging.Execution.Engine).Assembly.GetName().Version, typeof(Cli.Cli).Assembly.GetName().Version);
    }

    [Fact]
    public void InspectListsModulesAsTextAndJson()
    {
        using var dir = new TempDir();
        TestLibrary lib = new TestData().Library(experts: 2, dIn: 12, dOut: 7, ranks: [3, 5]);
        string[] dirs = lib.WriteTo(dir.Path);
        var (code, output, error) = Run(["inspect", .. dirs]);
        Assert.True(code == 0, error);
        Assert.Contains("e0", output);
        Assert.Contains(Module, output);
        Assert.Contains("r=5", output);
        Assert.Contains("12 → 7", output);

        (code, output, error) = Run(["inspect", .. dirs, "--json"]);
        Assert.True(code == 0, error);
        using JsonDocument json = JsonDocument.Parse(output);
        JsonElement second = json.RootElement[1];
        Assert.Equal("e1", second.GetProperty("name").GetString());
        JsonElement module = second.GetProperty("modules")[0];
        Assert.Equal(Module, module.GetProperty("name").GetString());
        Assert.Equal(5, module.GetProperty("rank").GetInt32());
        Assert.Equal(lib.Raw[Module][1]!.Scaling, module.GetProperty("scaling").GetSingle());
        Assert.Equal("F32", module.GetProperty("dtype").GetString());
    }

    [Theory]
    [InlineData("uniform")]
    [InlineData("fixed")]
    [InlineData("arrow")]
    [InlineData("assigned")]
    public void ForwardWritesYAndTheDecision(string router)
    {
        var data = new TestData();
        using var dir = new TempDir();
        TestLibrary lib = data.Library(experts: 3, dIn: 12, dOut: 7, ranks: [3, 5, 1]);
        string[] dirs = lib.WriteTo(dir.Path);
        const int tokens = 5;
        float[] x = data.Normal(tokens * 12), yBase = data.Normal(tokens * 7);
        int[] ids = [0, 2, 1, -1, 2, 2, 0, 1, 1, 0];
        float[] assigned = data.Normal(tokens * 2);
        var input = new SafeTensorsWriter().Add("x", x, [tokens, 12], TensorDType.F32).Add("base", yBase, [tokens, 7]);
        if (router == "assigned")
        {
            input.Add("expert_ids", ids, [tokens, 2]).Add("expert_weights", assigned, [tokens, 2]);
        }
        input.WriteTo(dir.Sub("in.safetensors"));
        string[] extra = router switch
        {
            "fixed" => ["--weights", "0.5,-1.25,2"],
            "arrow" => ["--top-k", "2", "--temperature", "0.5"],
            _ => [],
        };
        var (code, _, error) = Run(["forward", "--experts", .. dirs, "--module", "down_proj", "--input", dir.Sub("in.safetensors"),
            "--output", dir.Sub("out.safetensors"), "--router", router, .. extra]);
        Assert.True(code == 0, error);

        using SafeTensorsFile output = SafeTensorsFile.Open(dir.Sub("out.safetensors"));
        float[] y = output.ReadSingles(output.GetTensor("y"));
        int[] outIds = output.ReadInt32s(output.GetTensor("expert_ids"));
        float[] outWeights = output.ReadSingles(output.GetTensor("expert_weights"));
        int k = (int)output.GetTensor("expert_ids").Shape[1];
        Assert.Equal(router is "uniform" or "fixed" ? 3 : 2, k);
        Assert.Equal([tokens, 7L], output.GetTensor("y").Shape.ToArray());

        // The reference applies the decision the CLI reports, after checking it.
        double[] weights = outWeights.Select(w => (double)w).ToArray();
        switch (router)
        {
            case "uniform":
                Assert.All(outWeights, w => Assert.Equal(1f / 3, w));
                break;
            case "fixed":
                Assert.Equal([2, 0, 1], outIds.Take(3));
                Assert.Equal([2f, 0.5f, -1.25f], outWeights.Take(3));
                break;
            case "arrow":
                float[] p = Routing.ArrowRouter.ComputePrototypes(lib.Module(Module));
                for (int t = 0; t < tokens; t++)
                {
                    double[] scores = Reference.Scores(x.AsSpan(t * 12, 12), p, Routing.InputNormalization.None, Routing.ScoreFunction.AbsoluteValue, 0.5, default);
                    double[] w = Reference.CheckTopKAndWeigh(scores, outIds.AsSpan(t * 2, 2), 1e-4, $"{data}, token {t}");
                    weights[t * 2] = w[0];
                    weights[t * 2 + 1] = w[1];
                }
                break;
            default:
                // The host's slots, put in decision order: per token the same (id, weight) pairs.
                for (int t = 0; t < tokens; t++)
                {
                    var given = Enumerable.Range(0, 2).Select(s => (ids[t * 2 + s], ids[t * 2 + s] < 0 ? 0f : assigned[t * 2 + s])).Order();
                    var written = Enumerable.Range(0, 2).Select(s => (outIds[t * 2 + s], outWeights[t * 2 + s])).Order();
                    Assert.Equal(given, written);
                }
                break;
        }
        ReferenceOutput expected = Reference.Forward(lib.Raw[Module], x, yBase, tokens, outIds, weights, k);
        Reference.CheckFloat32(y, expected, yBase, k, $"{data} ({router})");
    }

    [Fact]
    public void ErrorsAreOneLineWithExitCodes()
    {
        using var dir = new TempDir();
        TestLibrary lib = new TestData().Library(experts: 2, dIn: 4, dOut: 3, ranks: [1]);
        string[] dirs = lib.WriteTo(dir.Path);
        new SafeTensorsWriter().Add("x", new float[8], [2, 4]).WriteTo(dir.Sub("in.safetensors"));

        var (code, _, error) = Run(["forward", "--experts", .. dirs, "--input", dir.Sub("in.safetensors"), "--output", dir.Sub("o"), "--router", "uniform"]);
        Assert.Equal(2, code);
        Assert.Contains("--module is required", error);

        (code, _, error) = Run(["forward", "--experts", .. dirs, "--module", "q_proj", "--input", dir.Sub("in.safetensors"), "--output", dir.Sub("o"), "--router", "uniform"]);
        Assert.Equal(1, code);
        Assert.StartsWith("moerge: error: no module matches 'q_proj'", error);
        Assert.Single(error.TrimEnd().Split('\n'));

        (code, _, error) = Run(["forward", "--experts", .. dirs, "--module", "down_proj", "--input", dir.Sub("missing.safetensors"), "--output", dir.Sub("o"), "--router", "uniform", "--verbose"]);
        Assert.Equal(1, code);
        Assert.Contains("missing.safetensors", error);
        Assert.Contains("   at ", error); // --verbose adds the stack trace

        (code, _, error) = Run(["forward", "--experts", .. dirs, "--module", "down_proj", "--input", dir.Sub("in.safetensors"), "--output", dir.Sub("o"), "--router", "uniform", "--top-k", "1"]);
        Assert.Equal(2, code);
        Assert.Contains("--top-k applies only to --router arrow", error);

        (code, _, error) = Run(["inspect", dir.Sub("nope")]);
        Assert.Equal(1, code);
        Assert.Contains("no such directory", error);

        (code, _, error) = Run(["frobnicate"]);
        Assert.Equal(2, code);
        Assert.Contains("unknown command 'frobnicate'", error);
        Assert.False(File.Exists(dir.Sub("o")), "no output is written when the command fails");
    }

    [Fact]
    public void DemoRunsEndToEndAndKeepsItsAdaptersWhenAsked()
    {
        var data = new TestData();
        using var dir = new TempDir();
        var (code, output, error) = Run("demo", "--experts", "5", "--tokens", "12", "--dim", "48", "--rank", "4", "--iterations", "2", "--threads", "2",
            "--seed", Seed(data), "--out", dir.Path);
        Assert.True(code == 0, $"{data}: {error}");
        Assert.Contains("backend: Cpu", output);
        Assert.Equal(2, int.Parse(Figure(output, @"; (\d+) CPU threads?$", data), CultureInfo.InvariantCulture));
        CheckDemoFigures(output, experts: 5, tokens: 12, topK: 2, data);
        ExpertLibrary reloaded = ExpertLibrary.Load(Directory.GetDirectories(dir.Path).Order());
        Assert.Equal(5, reloaded.ExpertCount);
        Assert.Equal(2, reloaded.Modules.Count);
    }

    [Fact]
    public void DemoOnAGpuBackendTimesDeviceResidentCallsAgainstTheDeviceCopy()
    {
        // The GPU kernels on ILGPU's CPU accelerator: the device path of the demo, at a size it runs quickly.
        var data = new TestData();
        var (code, output, error) = Run("demo", "--backend", "gpu-simulator", "--experts", "2", "--tokens", "2", "--dim", "8", "--rank", "1", "--iterations", "1",
            "--seed", Seed(data));
        Assert.True(code == 0, $"{data}: {error}");
        Assert.Contains("backend: GpuSimulator (gpusimulator: asked for; CPU accelerator (warp 32, 1 warp per group)", output);
        Assert.DoesNotContain("CPU thread", output);
        Assert.Contains("x and y on the device", output);
        Assert.Contains("copy bandwidth of the device (device to device", output);
        CheckDemoFigures(output, experts: 2, tokens: 2, topK: 2, data);
    }

    /// <summary>The demo's seed from the suite's (it takes none below 0).</summary>
    private static string Seed(TestData data) => (data.Seed & int.MaxValue).ToString(CultureInfo.InvariantCulture);

    /// <summary>The first group of <paramref name="pattern"/> in the output (multi-line), or a failure quoting the output.</summary>
    private static string Figure(string output, string pattern, TestData data)
    {
        Match m = Regex.Match(output, pattern, RegexOptions.Multiline);
        Assert.True(m.Success, $"{data}: no line matches /{pattern}/ in:\n{output}");
        return m.Groups[1].Value;
    }

    /// <summary>
    /// Checks the figures the demo prints against what they must be. Routing: the synthetic tokens are made for their
    /// task's expert, so Arrow's top-1 choice must be the task for at least 90 % of tokens; the count per expert must sum
    /// to tokens × k and agree exactly with the min, max, unused and (to its two decimals) mean it states; each shown
    /// token's weights descend over distinct experts and sum to 1 within the rounding of their three decimals
    /// (k × 0.0005). Timing: every time, bandwidth and rate must be finite, times positive and the minimum no more
    /// than the median, and each forward must read as many experts as the decision uses; no speed is compared.
    /// </summary>
    private static void CheckDemoFigures(string output, int experts, int tokens, int topK, TestData data)
    {
        var c = CultureInfo.InvariantCulture;
        Assert.True(output.Contains(string.Create(c, $"moerge demo: {experts} experts (")) && output.Contains(string.Create(c, $"{tokens} tokens, Arrow top-{topK}, seed {data.Seed & int.MaxValue}")),
            $"{data}: the header does not restate the arguments:\n{output}");

        Match hits = Regex.Match(output, @"top-1 expert is the token's task for (\d+) of (\d+) tokens \(([\d.]+) %\)");
        Assert.True(hits.Success, $"{data}: no routing summary in:\n{output}");
        int hit = int.Parse(hits.Groups[1].Value, c);
        Assert.Equal(tokens, int.Parse(hits.Groups[2].Value, c));
        Assert.True(Math.Abs(double.Parse(hits.Groups[3].Value, c) - 100.0 * hit / tokens) <= 0.05, $"{data}: {hits.Value} does not add up");
        Assert.True(hit >= 0.9 * tokens, $"{data}: Arrow sent only {hit} of {tokens} tokens to their task's expert (at least 90 % expected)");

        int[] load = new int[experts];
        foreach (string histogram in output.Split('\n').Where(l => l.StartsWith("  expert-", StringComparison.Ordinal)))
        {
            foreach (Match cell in Regex.Matches(histogram, @"expert-(\d+) #* +(\d+)"))
            {
                load[int.Parse(cell.Groups[1].Value, c)] = int.Parse(cell.Groups[2].Value, c);
            }
        }
        Assert.True(load.Sum() == tokens * topK, $"{data}: the experts' slot counts [{string.Join(", ", load)}] do not sum to {tokens} tokens × k = {topK}");
        string stated = Figure(output, @"load \(token slots per expert\): (.+)$", data);
        Assert.Equal(string.Create(c, $"min {load.Min()}, max {load.Max()}, mean {load.Average():F2}; {load.Count(l => l == 0)} experts unused"), stated);

        int shown = 0, shownHits = 0;
        foreach (Match line in Regex.Matches(output, @"^    token \d+ \(task (expert-\d+)\): (.+)$", RegexOptions.Multiline))
        {
            var slots = line.Groups[2].Value.Split(", ").Select(slot => slot.Split(' ')).Select(p => (Expert: p[0], Weight: double.Parse(p[1], c))).ToArray();
            Assert.True(slots.Length == topK && slots.DistinctBy(p => p.Expert).Count() == topK, $"{data}: {line.Value}: not {topK} distinct experts");
            Assert.True(slots.Zip(slots.Skip(1)).All(p => p.First.Weight >= p.Second.Weight), $"{data}: {line.Value}: weights not descending");
            Assert.True(Math.Abs(slots.Sum(p => p.Weight) - 1) <= topK * 0.0005 + 1e-12, $"{data}: {line.Value}: weights do not sum to 1");
            shown++;
            shownHits += slots[0].Expert == line.Groups[1].Value ? 1 : 0;
        }
        Assert.True(shown == Math.Min(5, tokens), $"{data}: {shown} tokens shown, expected {Math.Min(5, tokens)}");
        Assert.True(shownHits <= hit && hit - shownHits <= tokens - shown, $"{data}: {shownHits} of the {shown} tokens shown hit, against {hit} of {tokens} in all");

        int used = load.Count(l => l > 0);
        var timings = Regex.Matches(output, @"^  (.+?) +([\d.]+) µs \(min ([\d.]+)\) +([\d.]+) MB → +([\d.]+) GB/s +([\d.]+) GFLOP/s  (\d+) experts read$", RegexOptions.Multiline);
        Assert.True(timings.Count == 2, $"{data}: {timings.Count} timing lines, expected 2:\n{output}");
        foreach (Match t in timings)
        {
            double median = double.Parse(t.Groups[2].Value, c), min = double.Parse(t.Groups[3].Value, c);
            Assert.True(double.IsFinite(median) && min > 0 && min <= median, $"{data}: {t.Value}: times must be positive and the minimum at most the median");
            Assert.True(new[] { 4, 5, 6 }.All(g => double.IsFinite(double.Parse(t.Groups[g].Value, c))), $"{data}: {t.Value}: a figure is not finite");
            Assert.True(int.Parse(t.Groups[7].Value, c) == used, $"{data}: {t.Value}: the decision uses {used} experts");
        }
        double copy = double.Parse(Figure(output, @"copy bandwidth of .+: ([\d.]+) GB/s$", data), c);
        Assert.True(double.IsFinite(copy) && copy > 0, $"{data}: copy bandwidth {copy} GB/s");
        Assert.True(double.IsFinite(double.Parse(Figure(output, @"the routed forward reaches (\d+) % of it$", data), c)), $"{data}: no share of the copy bandwidth");
    }

    [Fact]
    public void MergeWritesAPeftAdapterAndReportsTheSpace()
    {
        var data = new TestData();
        using var dir = new TempDir();
        TestLibrary lib = data.Library(experts: 3, dIn: 12, dOut: 7, ranks: [3, 5, 3]);
        string[] dirs = lib.WriteTo(dir.Path);
        var (code, output, error) = Run(["merge", "--experts", .. dirs, "--weights", "0.5,-1,2", "--method", "svd", "--rank", "4", "--output", dir.Sub("merged")]);
        Assert.True(code == 0, error);
        Assert.Contains("merged 3 experts by svd in ΔW space into 1 modules of rank 4", output);
        Assert.Equal("", error); // no progress bar unless stderr is a terminal or --progress asks
        LoraFactors merged = PeftAdapter.Load(dir.Sub("merged")).Modules[Module];
        LoraFactors library = Merging.ExpertMerge.Merge(lib.Library, [0.5, -1, 2], new Merging.MergeOptions(Merging.MergeMethod.Svd) { Rank = 4 }).Modules[Module];
        Assert.True(merged.A.SequenceEqual(library.A) && merged.BTransposed.SequenceEqual(library.BTransposed), $"{data}: CLI and library merges differ");

        (code, output, error) = Run(["merge", "--experts", dirs[0], dirs[2], "--weights", "1,1", "--method", "dare_ties", "--density", "0.5",
            "--seed", "9", "--space", "factors", "--output", dir.Sub("dare"), "--progress"]);
        Assert.True(code == 0, error);
        Assert.Contains("dare_ties in factor space (density 0.5, seed 9)", output);
        Assert.Contains("merge [##############################] 100%", error);
        Assert.EndsWith("\n", error.ReplaceLineEndings("\n"));
    }

    [Fact]
    public void MergeIntoBaseWritesWPlusDelta()
    {
        var data = new TestData();
        using var dir = new TempDir();
        TestLibrary lib = data.Library(experts: 2, dIn: 6, dOut: 4, ranks: [2]);
        string[] dirs = lib.WriteTo(dir.Path);
        float[] w = data.Normal(24);
        new SafeTensorsWriter().Add("layers.0.mlp.down_proj.weight", w, [4, 6]).WriteTo(dir.Sub("base.safetensors"));
        var (code, output, error) = Run(["merge", "--experts", .. dirs, "--weights", "1,0.5", "--method", "cat", "--base", dir.Sub("base.safetensors"),
            "--output", dir.Sub("merged.safetensors")]);
        Assert.True(code == 0, error);
        Assert.Contains("added ΔW to 1 base weights", output);
        using SafeTensorsFile file = SafeTensorsFile.Open(dir.Sub("merged.safetensors"));
        float[] merged = file.ReadSingles(file.GetTensor("layers.0.mlp.down_proj.weight"));
        double[] d0 = MergeReference.Delta(lib.Raw[Module][0]!, lib.Raw[Module][0]!.Scaling), d1 = MergeReference.Delta(lib.Raw[Module][1]!, 0.5 * lib.Raw[Module][1]!.Scaling);
        MergeReference.Close([.. merged.Select(v => (double)v)], [.. w.Select((v, i) => v + d0[i] + d1[i])], 1e-6, $"{data}: W + ΔW");
    }

    [Fact]
    public void MergeUsageErrorsAreNamed()
    {
        using var dir = new TempDir();
        TestLibrary lib = new TestData().Library(experts: 2, dIn: 4, dOut: 3, ranks: [1, 2]);
        string[] dirs = lib.WriteTo(dir.Path);
        string[] common = ["merge", "--experts", .. dirs, "--output", dir.Sub("out")];
        foreach (var (extra, phrase) in new (string[], string)[]
        {
            (["--weights", "1,1", "--method", "mean"], "--method must be one of cat, linear, svd, ties, dare_linear, dare_ties, magnitude_prune, got 'mean'"),
            (["--weights", "1", "--method", "cat"], "--weights needs one weight per expert (2), got 1"),
            (["--weights", "1,nan", "--method", "cat"], "--weights: item 2 is NaN; weights must be finite"),
            (["--weights", "1,1", "--method", "ties"], "Ties needs a density"),
            (["--weights", "1,1", "--method", "cat", "--rank", "2"], "a rank applies only to svd"),
            (["--weights", "1,1", "--method", "ties", "--density", "2"], "density must be in (0, 1], got 2"),
            (["--weights", "1,1", "--method", "ties", "--density", "0.5", "--space", "both"], "--space must be delta or factors"),
            (["--weights", "1,1", "--method", "cat", "--module", "q_proj"], "--module applies only with --base"),
        })
        {
            var (code, _, error) = Run([.. common, .. extra]);
            Assert.True(code == 2, $"{string.Join(" ", extra)}: exit {code}, {error}");
            Assert.Contains(phrase, error);
        }
        // Unequal ranks in factor space is a data error (exit 1), named.
        var (c, _, e) = Run([.. common, "--weights", "1,1", "--method", "linear"]);
        Assert.Equal(1, c);
        Assert.Contains("needs equal ranks, but expert 'e0' has rank 1 and expert 'e1' rank 2", e);
        // The same directory twice: one line, without the API's parameter name.
        (c, _, e) = Run(["merge", "--experts", dirs[0], dirs[0], "--weights", "1,1", "--method", "cat", "--output", dir.Sub("out")]);
        Assert.Equal(1, c);
        Assert.Equal($"moerge: error: experts 0 and 1 cannot be told apart by their paths ('{Path.GetFullPath(dirs[0])}' and '{Path.GetFullPath(dirs[0])}'); give each a name of its own", e.TrimEnd());
        Assert.False(Directory.Exists(dir.Sub("out")), "nothing is written when the merge fails");
    }
}
