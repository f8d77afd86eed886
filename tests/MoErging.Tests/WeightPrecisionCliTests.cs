using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;
using static MoErging.Tests.CliTests;

namespace MoErging.Tests;

/// <summary>
/// --weight-precision on the commands that run an engine: forward loads the experts at the engine's precision and
/// writes what that engine computes, bit for bit; demo writes its adapters in the precision's dtype and counts the
/// bytes a 16-bit forward reads; route and evaluate take it; bad values and BF16 on a GPU backend are errors.
/// </summary>
public sealed class WeightPrecisionCliTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    [Theory]
    [InlineData("bf16", WeightPrecision.BFloat16)]
    [InlineData("f16", WeightPrecision.Float16)]
    [InlineData("f32", WeightPrecision.Float32)]
    public void ForwardRunsTheEngineAtTheChosenPrecision(string option, WeightPrecision precision)
    {
        var data = new TestData();
        using var dir = new TempDir();
        const int tokens = 7, dIn = 33, dOut = 21;
        TestLibrary lib = data.Library(experts: 4, dIn: dIn, dOut: dOut, ranks: [3, 6]);
        string[] dirs = lib.WriteTo(dir.Path);
        float[] x = data.Normal(tokens * dIn), yBase = data.Normal(tokens * dOut);
        new SafeTensorsWriter().Add("x", x, [tokens, dIn]).Add("base", yBase, [tokens, dOut]).WriteTo(dir.Sub("in.safetensors"));
        var (code, output, error) = Run(["forward", "--experts", .. dirs, "--module", "down_proj", "--input", dir.Sub("in.safetensors"),
            "--output", dir.Sub("out.safetensors"), "--router", "arrow", "--top-k", "2", "--backend", "cpu", "--weight-precision", option]);
        Assert.True(code == 0, $"{data}: {error}");
        Assert.Contains("on Cpu", output);

        // The same in process: the library loaded at the precision, an engine of it.
        ExpertLibrary library = ExpertLibrary.Load(dirs, new ExpertLibraryOptions { WeightPrecision = precision });
        AdaptedModule module = library.Module(Module);
        Assert.Equal(precision, module.Factors(0)!.Precision);
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, WeightPrecision = precision });
        using Session session = engine.CreateSession();
        float[] y = (float[])yBase.Clone();
        var decision = new RoutingDecision();
        session.Forward(module, new ArrowRouter(module, new RoutingOptions(2)), x, decision, y);
        using SafeTensorsFile written = SafeTensorsFile.Open(dir.Sub("out.safetensors"));
        Assert.True(MemoryMarshal.AsBytes(y.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(written.ReadSingles(written.GetTensor("y")).AsSpan())),
            $"{data}: y written at {option} differs from the {precision} engine's");
        Assert.Equal(decision.ExpertIds.ToArray(), written.ReadInt32s(written.GetTensor("expert_ids")));
    }

    [Fact]
    public void DemoAtBFloat16WritesBFloat16AdaptersAndCountsTwoBytesAWeight()
    {
        var data = new TestData();
        using var dir = new TempDir();
        const int experts = 5, tokens = 12, dim = 48, rank = 4;
        var (code, output, error) = Run("demo", "--experts", $"{experts}", "--tokens", $"{tokens}", "--dim", $"{dim}", "--rank", $"{rank}",
            "--iterations", "2", "--threads", "2", "--backend", "cpu", "--weight-precision", "bf16", "--out", dir.Path);
        Assert.True(code == 0, $"{data}: {error}");
        Assert.Contains("seed 1, BFloat16 weights", output);
        string[] adapters = [.. Directory.GetDirectories(dir.Path).Order()];
        using (SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(adapters[0], PeftAdapter.WeightsFileName)))
        {
            Assert.All(file.Tensors, t => Assert.Equal(TensorDType.BF16, t.DType));
        }
        // Minimum bytes of the routed forward: x once, y read and written (float32), the prototypes and every expert
        // read at 2 bytes an element.
        var c = CultureInfo.InvariantCulture;
        Match routed = Regex.Match(output, @"route \+ forward at q_proj +[\d.]+ µs \(min [\d.]+\) +([\d.]+) MB → .* (\d+) experts read", RegexOptions.Multiline);
        Assert.True(routed.Success, $"no timing line for the routed forward in:\n{output}");
        int read = int.Parse(routed.Groups[2].Value, c);
        double expected = (3.0 * tokens * dim * 4 + experts * dim * 2 + read * rank * 2.0 * dim * 2) / 1e6;
        Assert.Equal(expected.ToString("F2", c), routed.Groups[1].Value);
    }

    [Fact]
    public void RouteAndEvaluateTakeTheOptionAndBadValuesAreErrors()
    {
        var data = new TestData();
        using var dir = new TempDir();
        TestLibrary lib = data.Library(experts: 3, dIn: 16, dOut: 8, ranks: [2]);
        string[] dirs = lib.WriteTo(dir.Path);
        new SafeTensorsWriter().Add("x", data.Normal(5 * 16), [5, 16]).WriteTo(dir.Sub("in.safetensors"));
        string[] route = ["route", "--experts", .. dirs, "--module", "down_proj", "--input", dir.Sub("in.safetensors"), "--router", "arrow", "--backend", "cpu"];
        var (code, _, error) = Run([.. route, "--weight-precision", "bf16"]);
        Assert.True(code == 0, $"{data}: {error}");
        (code, _, error) = Run("evaluate", "--synthetic", "--backend", "cpu", "--weight-precision", "f16", "--rows", "20");
        Assert.True(code == 0, $"{data}: {error}");

        (code, _, error) = Run([.. route, "--weight-precision", "f8"]);
        Assert.Equal(2, code);
        Assert.Contains("--weight-precision must be f32, bf16 or f16, got 'f8'", error);
        (code, _, error) = Run([.. route[..^2], "--backend", "gpu-simulator", "--weight-precision", "bf16"]);
        Assert.True(code == 0, $"{data}: {error}");
    }
}
