using System.Buffers.Binary;
using System.IO.Compression;
using System.Text.Json;
using MoErging.Cli;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;
using MoErging.Samples;
using static MoErging.Tests.CliTests;

namespace MoErging.Tests;

/// <summary>
/// The routing commands in-process on real files: forward with the new routers, granularities and parameter
/// mixing (checked against float64 from the decision it writes), centroids and train-router feeding them,
/// route with its report (PNG files decoded here, JSON parsed), evaluate, and their errors.
/// </summary>
public sealed class RoutingCliTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";
    private const int InputDim = 12, OutputDim = 7, Experts = 3, Tokens = 6;

    private sealed record Setup(TestData Data, TempDir Dir, TestLibrary Lib, string[] Dirs, float[] X, float[] Base, string Input) : IDisposable
    {
        public void Dispose() => Dir.Dispose();
    }

    /// <summary>A library of one rank and scaling (so parameter mixing applies), written out with an input file.</summary>
    private static Setup Prepare()
    {
        var data = new TestData();
        var dir = new TempDir();
        RawFactors[] raw = Enumerable.Range(0, Experts).Select(_ => data.Factors(3, InputDim, OutputDim, 2f)).ToArray();
        var library = new ExpertLibrary(raw.Select((f, e) => new Expert($"e{e}", [new(Module, new LoraFactors(f.A, f.B, f.Rank, InputDim, OutputDim, f.Scaling))])));
        var lib = new TestLibrary(library, new() { [Module] = raw });
        string[] dirs = lib.WriteTo(dir.Path);
        float[] x = data.Normal(Tokens * InputDim), yBase = data.Normal(Tokens * OutputDim);
        string input = dir.Sub("in.safetensors");
        new SafeTensorsWriter().Add("x", x, [Tokens, InputDim]).Add("base", yBase, [Tokens, OutputDim]).WriteTo(input);
        return new Setup(data, dir, lib, dirs, x, yBase, input);
    }

    [Theory]
    [InlineData("phatgoose", "token", "output")]
    [InlineData("centroid", "example", "output")]
    [InlineData("classifier", "task", "parameter")]
    [InlineData("arrow", "example", "parameter")]
    public void ForwardWithEveryRouterGranularityAndAggregation(string router, string granularity, string aggregation)
    {
        using Setup s = Prepare();
        string[] extra = router switch
        {
            "phatgoose" => WriteGates(s),
            "centroid" => ComputeCentroids(s),
            "classifier" => TrainClassifier(s),
            _ => WriteGeneralExpert(s),
        };
        string[] levels = granularity switch
        {
            "example" => ["--granularity", "example", "--sequence-lengths", "2,3,1", "--pool", "last"],
            "task" => ["--granularity", "task"],
            _ => [],
        };
        string output = s.Dir.Sub("out.safetensors");
        var (code, stdout, error) = Run(["forward", "--experts", .. s.Dirs, "--module", "down_proj", "--input", s.Input, "--output", output,
            "--router", router, .. extra, .. levels, "--aggregation", aggregation, "--backend", "cpu"]);
        Assert.True(code == 0, error);
        Assert.Contains($"{granularity} level, {aggregation} mixing", stdout);

        using SafeTensorsFile file = SafeTensorsFile.Open(output);
        int k = (int)file.GetTensor("expert_ids").Shape[1];
        Assert.Equal(Tokens, file.GetTensor("expert_ids").Shape[0]); // one row per token at every granularity
        int[] ids = file.ReadInt32s(file.GetTensor("expert_ids"));
        double[] weights = file.ReadSingles(file.GetTensor("expert_weights")).Select(w => (double)w).ToArray();
        int[][] groups = granularity switch
        {
            "example" => [[0, 1], [2, 3, 4], [5]],
            "task" => [[0, 1, 2, 3, 4, 5]],
            _ => Enumerable.Range(0, Tokens).Select(t => new[] { t }).ToArray(),
        };
        foreach (int[] group in groups)
        {
            Assert.All(group, t => Assert.Equal(ids.AsSpan(group[0] * k, k).ToArray(), ids.AsSpan(t * k, k).ToArray()));
        }
        RawFactors?[] experts = s.Lib.Raw[Module];
        if (router == "arrow")
        {
            // GenKnowSub: the forward uses every factor minus the (single) general expert's.
            LoraFactors general = Expert.Load(s.Dir.Sub("general")).Modules[Module];
            var generalB = new float[OutputDim * 3];
            general.CopyB(generalB);
            experts = experts.Select(f => (RawFactors?)(f! with { A = Minus(f.A, general.A.ToArray()), B = Minus(f.B, generalB) })).ToArray();
        }
        float[] y = file.ReadSingles(file.GetTensor("y"));
        ReferenceOutput expected = aggregation == "parameter"
            ? Reference.ForwardParameterMixing(experts, s.X, s.Base, Tokens, ids, weights, k)
            : Reference.Forward(experts, s.X, s.Base, Tokens, ids, weights, k);
        Reference.CheckFloat32(y, expected, s.Base, k, $"{s.Data} ({router}, {granularity}, {aggregation})");
    }

    [Fact]
    public void CentroidsAreTheMeansOfEachExpertsSamplesAndOtherModulesAreKept()
    {
        using Setup s = Prepare();
        ComputeCentroids(s);
        for (int e = 0; e < Experts; e++)
        {
            using SafeTensorsFile samples = SafeTensorsFile.Open(s.Dir.Sub($"samples-{e}.safetensors"));
            float[] rows = samples.ReadSingles(samples.GetTensor("down_proj"));
            using SafeTensorsFile written = SafeTensorsFile.Open(Path.Combine(s.Dirs[e], CentroidRouter.CentroidFileName));
            float[] centroid = written.ReadSingles(written.GetTensor(Module + CentroidRouter.CentroidSuffix));
            for (int i = 0; i < InputDim; i++)
            {
                double mean = Enumerable.Range(0, rows.Length / InputDim).Average(t => (double)rows[t * InputDim + i]);
                Assert.True(Math.Abs(centroid[i] - mean) <= 1e-6 * (1 + Math.Abs(mean)), $"{s.Data}: expert {e} column {i}: {centroid[i]} vs {mean}");
            }
        }
        // A second run for the same module, from a directory of <expert>.safetensors, replaces its centroid
        // and keeps any other module's.
        CentroidRouter.SaveCentroids(s.Dirs[0], new Dictionary<string, float[]> { ["other.module"] = new float[3], [Module] = new float[InputDim] });
        string sampleDir = s.Dir.Sub("samples");
        Directory.CreateDirectory(sampleDir);
        for (int e = 0; e < Experts; e++)
        {
            File.Copy(s.Dir.Sub($"samples-{e}.safetensors"), Path.Combine(sampleDir, $"e{e}.safetensors"));
        }
        var (code, _, error) = Run(["centroids", "--experts", .. s.Dirs, "--data", sampleDir, "--module", "down_proj"]);
        Assert.True(code == 0, error);
        using SafeTensorsFile kept = SafeTensorsFile.Open(Path.Combine(s.Dirs[0], CentroidRouter.CentroidFileName));
        Assert.True(kept.TryGetTensor("other.module" + CentroidRouter.CentroidSuffix, out _));
        Assert.NotEqual(new float[InputDim], kept.ReadSingles(kept.GetTensor(Module + CentroidRouter.CentroidSuffix)));

        // One expert with one directory: the directory still holds <expert>.safetensors, it is not the file.
        (code, _, error) = Run(["centroids", "--experts", s.Dirs[0], "--data", sampleDir]);
        Assert.True(code == 0, error);
    }

    [Fact]
    public void RouteReportWritesPicturesAndTheSameNumbersAsJson()
    {
        using Setup s = Prepare();
        string report = s.Dir.Sub("report");
        var (code, stdout, error) = Run(["route", "--experts", .. s.Dirs, "--module", "down_proj", "--input", s.Input, "--router", "arrow",
            "--top-k", "2", "--report", report, "--output", s.Dir.Sub("decision.safetensors"), "--backend", "cpu"]);
        Assert.True(code == 0, error);
        Assert.Contains("mean entropy of the weights", stdout);
        Assert.Contains("wrote " + Path.Combine(report, "heatmap.png"), stdout);

        using SafeTensorsFile decisionFile = SafeTensorsFile.Open(s.Dir.Sub("decision.safetensors"));
        int[] ids = decisionFile.ReadInt32s(decisionFile.GetTensor("expert_ids"));
        float[] weights = decisionFile.ReadSingles(decisionFile.GetTensor("expert_weights"));
        using JsonDocument json = JsonDocument.Parse(File.ReadAllText(Path.Combine(report, "statistics.json")));
        JsonElement root = json.RootElement;
        Assert.Equal(Tokens, root.GetProperty("tokens").GetInt32());
        double entropy = 0;
        for (int t = 0; t < Tokens; t++)
        {
            entropy -= weights.AsSpan(t * 2, 2).ToArray().Sum(w => w * Math.Log(w)) / Tokens;
        }
        double written = root.GetProperty("mean_entropy").GetDouble();
        Assert.True(Math.Abs(written - entropy) < 1e-6, $"{s.Data}: mean entropy {written}, expected {entropy}"); // float32 weights summing to 1 ± 1e-7
        for (int e = 0; e < Experts; e++)
        {
            JsonElement expert = root.GetProperty("per_expert")[e];
            Assert.Equal($"e{e}", expert.GetProperty("name").GetString());
            Assert.Equal(ids.Count(id => id == e), expert.GetProperty("load").GetInt32());
            Assert.Equal(Enumerable.Range(0, Tokens).Count(t => ids[t * 2] == e), expert.GetProperty("top1").GetInt32());
        }

        string[] names = [.. Enumerable.Range(0, Experts).Select(e => $"e{e}")];
        var heatmap = DecodePng(Path.Combine(report, "heatmap.png"));
        Assert.True(heatmap.Width >= 640 && heatmap.Height >= 480, $"heatmap is {heatmap.Width} × {heatmap.Height}");
        Assert.Contains(Rgb(RoutingReport.Hottest), heatmap.Colours()); // the top of the colour scale: the largest cell
        AssertTextAtTheBottom(heatmap, "heatmap.png");
        var load = DecodePng(Path.Combine(report, "load.png"));
        Assert.Contains(Rgb(RoutingReport.LoadColour), load.Colours());
        Assert.Contains(Rgb(RoutingReport.TopOneColour), load.Colours());
        AssertTextAtTheBottom(load, "load.png");

        // The experts are named on the pictures' expert axis, in order.
        var decision = new RoutingDecision();
        decision.Assign(ids, weights, topK: 2, Experts);
        foreach (var (plot, width) in new[] { RoutingReport.Heatmap(decision, names), RoutingReport.LoadChart(RoutingStatistics.Of(decision), names) })
        {
            using (plot)
            {
                plot.RenderInMemory(width, 560); // the axis's ticks are laid out in a render
                Assert.Equal(names, plot.Axes.Bottom.TickGenerator.Ticks.Where(t => t.IsMajor).OrderBy(t => t.Position).Select(t => t.Label));
            }
        }
    }

    private static (int, int, int) Rgb(ScottPlot.Color c) => (c.R, c.G, c.B);

    /// <summary>The axis name under the expert names is drawn: dark pixels on the white margin at the picture's foot.</summary>
    private static void AssertTextAtTheBottom(Png png, string name)
    {
        int dark = 0;
        for (int y = png.Height - 30; y < png.Height; y++)
        {
            for (int x = 0; x < png.Width; x++)
            {
                var (r, g, b) = png.Pixel(x, y);
                dark += r + g + b < 200 ? 1 : 0;
            }
        }
        Assert.True(dark > 20, $"{name}: {dark} dark pixels in its bottom 30 rows; the axis label is not drawn (no font?)");
    }

    [Fact]
    public void EvaluatePrintsOneTableForEveryRouter()
    {
        var (code, stdout, error) = Run("evaluate", "--synthetic", "--experts", "4", "--dim", "16", "--rows", "20", "--held-out", "2", "--seed", "3", "--backend", "cpu");
        Assert.True(code == 0, error);
        string[] lines = stdout.Split('\n');
        string header = lines.First(l => l.Contains("uniform"));
        foreach (string router in new[] { "arrow", "phatgoose", "centroid", "classifier" })
        {
            Assert.Contains(router, header);
        }
        string accuracy = lines.First(l => l.StartsWith("top-1 accuracy ", StringComparison.Ordinal));
        Assert.Equal(5, accuracy.Split(' ', StringSplitOptions.RemoveEmptyEntries).Count(p => p.EndsWith('%')));
        Assert.Contains(lines, l => l.TrimStart().StartsWith("held-out-1 (near expert-001)", StringComparison.Ordinal));

        using Setup s = Prepare();
        var set = new RoutingDataset(s.X, InputDim, [0, 1, 2, 0, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"]);
        set.Save(s.Dir.Sub("set.safetensors"));
        (code, stdout, error) = Run(["evaluate", "--experts", .. s.Dirs, "--module", "down_proj", "--data", s.Dir.Sub("set.safetensors"), "--backend", "cpu"]);
        Assert.True(code == 0, error);
        Assert.Contains("phatgoose: not run (expert 'e0' has no PHATGOOSE gate file", stdout);
        Assert.Contains("classifier: not run (no --classifier given)", stdout);
    }

    [Fact]
    public void RoutingErrorsAreClear()
    {
        using Setup s = Prepare();
        string[] common = ["--experts", .. s.Dirs, "--module", "down_proj", "--input", s.Input, "--output", s.Dir.Sub("o.safetensors")];

        var (code, _, error) = Run(["forward", .. common, "--router", "arrow", "--granularity", "example", "--sequence-lengths", "2,3"]);
        Assert.Equal(1, code);
        Assert.Contains("the sequence lengths sum to 5 but x holds 6 rows", error);
        Assert.DoesNotContain("(Parameter", error); // the library's parameter name means nothing here

        (code, _, error) = Run(["forward", .. common, "--router", "arrow", "--temperature", "0"]);
        Assert.Equal(2, code);
        Assert.Contains("--temperature 0: temperature must be positive and finite", error);

        (code, _, error) = Run(["forward", .. common, "--router", "arrow", "--granularity", "example"]);
        Assert.Equal(2, code);
        Assert.Contains("--granularity example needs --sequence-lengths", error);

        (code, _, error) = Run(["forward", .. common, "--router", "arrow", "--pool", "last"]);
        Assert.Equal(2, code);
        Assert.Contains("--pool applies only to --granularity example", error);

        (code, _, error) = Run(["forward", .. common, "--router", "phatgoose"]);
        Assert.Equal(1, code);
        Assert.Contains("expert 'e0' has no PHATGOOSE gate file", error);

        (code, _, error) = Run(["forward", .. common, "--router", "classifier"]);
        Assert.Equal(2, code);
        Assert.Contains("--router classifier needs --classifier FILE", error);

        new ClassifierRouter(new float[2 * InputDim], new float[2], InputDim).Save(s.Dir.Sub("two.safetensors"));
        (code, _, error) = Run(["forward", .. common, "--router", "classifier", "--classifier", s.Dir.Sub("two.safetensors")]);
        Assert.Equal(1, code);
        Assert.Contains("the classifier routes rows of 12 among 2 experts", error);

        (code, _, error) = Run(["route", .. common[..^2], "--router", "uniform", "--aggregation", "parameter"]);
        Assert.Equal(2, code);
        Assert.Contains("unknown option --aggregation", error);
        Assert.False(File.Exists(s.Dir.Sub("o.safetensors")), "no output is written when the command fails");
    }

    /// <summary>Writes one general expert of the library's rank; returns the forward options naming it.</summary>
    private static string[] WriteGeneralExpert(Setup s)
    {
        RawFactors f = s.Data.Factors(3, InputDim, OutputDim, 2f);
        PeftAdapter.Write(s.Dir.Sub("general"), new Expert("general", [new(Module, new LoraFactors(f.A, f.B, 3, InputDim, OutputDim, 2f))]));
        return ["--general", s.Dir.Sub("general")];
    }

    private static string[] WriteGates(Setup s)
    {
        for (int e = 0; e < Experts; e++)
        {
            PhatgooseRouter.SaveGates(s.Dirs[e], new Dictionary<string, float[]> { [Module] = s.Data.Normal(InputDim) });
        }
        return [];
    }

    /// <summary>Writes samples for every expert and runs 'moerge centroids' on them.</summary>
    private static string[] ComputeCentroids(Setup s)
    {
        var files = new string[Experts];
        for (int e = 0; e < Experts; e++)
        {
            files[e] = s.Dir.Sub($"samples-{e}.safetensors");
            if (!File.Exists(files[e]))
            {
                new SafeTensorsWriter().Add("down_proj", s.Data.Normal(5 * InputDim, 2).Select(v => v + e).ToArray(), [5, InputDim]).WriteTo(files[e]);
            }
        }
        var (code, _, error) = Run(["centroids", "--experts", .. s.Dirs, "--data", .. files]);
        Assert.True(code == 0, error);
        return [];
    }

    /// <summary>Trains a classifier with 'moerge train-router' on labelled rows; returns the forward options naming it.</summary>
    private static string[] TrainClassifier(Setup s)
    {
        int[] labels = Enumerable.Range(0, 30).Select(t => t % Experts).ToArray();
        var set = new RoutingDataset(s.Data.Normal(30 * InputDim), InputDim, labels, labels, ["e0", "e1", "e2"]);
        set.Save(s.Dir.Sub("train.safetensors"));
        string router = s.Dir.Sub("router.safetensors");
        var (code, stdout, error) = Run(["train-router", "--experts", .. s.Dirs, "--module", "down_proj", "--data", s.Dir.Sub("train.safetensors"),
            "--output", router, "--iterations", "50"]);
        Assert.True(code == 0, error);
        Assert.Contains("training accuracy", stdout);
        return ["--classifier", router, "--top-k", "2"];
    }

    private static float[] Minus(float[] a, float[] b) => a.Zip(b, (p, q) => p - q).ToArray();

    /// <summary>A decoded picture: 8-bit RGB or RGBA rows (alpha dropped: the report draws on white).</summary>
    private sealed record Png(int Width, int Height, byte[] Rgb)
    {
        public (int, int, int) Pixel(int x, int y) => (Rgb[3 * (y * Width + x)], Rgb[3 * (y * Width + x) + 1], Rgb[3 * (y * Width + x) + 2]);

        public HashSet<(int, int, int)> Colours() => [.. Enumerable.Range(0, Width * Height).Select(i => Pixel(i % Width, i / Width))];
    }

    /// <summary>
    /// Decodes the PNG files the report writes (8-bit RGB or RGBA, not interlaced, any of the five row filters),
    /// checking the signature and every chunk's CRC-32 with an implementation of the test's own.
    /// </summary>
    private static Png DecodePng(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Assert.Equal(new byte[] { 137, 80, 78, 71, 13, 10, 26, 10 }, bytes[..8]);
        int width = 0, height = 0, channels = 0;
        using var idat = new MemoryStream();
        for (int at = 8; at < bytes.Length;)
        {
            int length = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(at));
            string type = System.Text.Encoding.ASCII.GetString(bytes, at + 4, 4);
            byte[] body = bytes[(at + 8)..(at + 8 + length)];
            uint crc = 0xFFFFFFFF;
            foreach (byte b in bytes[(at + 4)..(at + 8 + length)])
            {
                crc ^= b;
                for (int bit = 0; bit < 8; bit++)
                {
                    crc = (crc >> 1) ^ (0xEDB88320 & (uint)-(int)(crc & 1));
                }
            }
            Assert.Equal(~crc, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(at + 8 + length)));
            if (type == "IHDR")
            {
                (width, height) = (BinaryPrimitives.ReadInt32BigEndian(body), BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(4)));
                Assert.Equal(8, body[8]);
                Assert.True(body[9] is 2 or 6, $"{path}: colour type {body[9]}, expected RGB or RGBA");
                channels = body[9] == 2 ? 3 : 4;
                Assert.Equal(new byte[] { 0, 0, 0 }, body[10..]);
            }
            else if (type == "IDAT")
            {
                idat.Write(body);
            }
            at += 12 + length;
        }
        idat.Position = 0;
        using var inflated = new MemoryStream();
        using (var zlib = new ZLibStream(idat, CompressionMode.Decompress))
        {
            zlib.CopyTo(inflated);
        }
        byte[] raw = inflated.ToArray();
        int stride = channels * width;
        Assert.Equal(height * (1 + stride), raw.Length);
        var pixels = new byte[height * stride];
        for (int row = 0; row < height; row++)
        {
            byte filter = raw[row * (1 + stride)];
            for (int i = 0; i < stride; i++)
            {
                int a = i >= channels ? pixels[row * stride + i - channels] : 0;
                int b = row > 0 ? pixels[(row - 1) * stride + i] : 0;
                int c = i >= channels && row > 0 ? pixels[(row - 1) * stride + i - channels] : 0;
                int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
                int predictor = filter switch
                {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => (a + b) / 2,
                    4 => pa <= pb && pa <= pc ? a : pb <= pc ? b : c,
                    _ => throw new InvalidDataException($"{path}: row {row} has filter {filter}"),
                };
                pixels[row * stride + i] = (byte)(raw[row * (1 + stride) + 1 + i] + predictor);
            }
        }
        var rgb = new byte[height * width * 3];
        for (int i = 0; i < width * height; i++)
        {
            Array.Copy(pixels, i * channels, rgb, 3 * i, 3);
        }
        return new Png(width, height, rgb);
    }
}
