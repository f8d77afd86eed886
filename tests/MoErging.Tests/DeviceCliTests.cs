using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;
using MoErging.Tests.Kernels;
using static MoErging.Tests.CliTests;

namespace MoErging.Tests;

/// <summary>
/// <c>moerge devices</c> and <c>--device</c> on the two OpenCL drivers CI installs: both listed as running the
/// engine, and a forward on each gives the CPU backend's routing and y with F32 weights, and with F16 weights the float64
/// reference's of the rounded prototypes and factors.
/// </summary>
[Trait("Backend", "OpenCL")]
public sealed class DeviceCliTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    [Fact]
    public void DevicesListsBothOpenCLDriversAsRunningTheEngine()
    {
        foreach (TestDevice driver in new[] { TestDevice.Rusticl, TestDevice.PoCL })
        {
            SharedDevices.Hold(driver).Dispose(); // skips (fails in CI) where the driver is missing
        }
        var (code, output, error) = Run("devices");
        Assert.True(code == 0, error);
        string[] lines = output.Split('\n');
        Assert.Contains(lines, l => l.Contains("rusticl") && l.Contains("llvmpipe") && l.Contains("  runs (work-group reductions;"));
        Assert.Contains(lines, l => l.Contains("Portable Computing Language") && l.Contains("  runs (work-group reductions;"));
        if (!lines.Any(l => l.Contains(" GPU ")))
        {
            // Both drivers run on the CPU: Auto must not prefer them to the CPU backend.
            Assert.Contains("--backend auto takes the CPU backend", output);
        }
    }

    [Theory]
    [InlineData(TestDevice.Rusticl, "f32")]
    [InlineData(TestDevice.Rusticl, "f16")]
    [InlineData(TestDevice.PoCL, "f32")]
    [InlineData(TestDevice.PoCL, "f16")]
    public void ForwardOnAnOpenCLDeviceGivesTheCpuRouting(TestDevice driver, string precision)
    {
        SharedDevices.Hold(driver).Dispose();
        var data = new TestData();
        using var dir = new TempDir();
        const int tokens = 9, dIn = 40, dOut = 33;
        TestLibrary lib = data.Library(experts: 6, dIn: dIn, dOut: dOut, ranks: [4, 8, 2]);
        string[] dirs = lib.WriteTo(dir.Path);
        float[] x = data.Normal(tokens * dIn), yBase = data.Normal(tokens * dOut);
        new SafeTensorsWriter().Add("x", x, [tokens, dIn]).Add("base", yBase, [tokens, dOut])
            .WriteTo(dir.Sub("in.safetensors"));
        string[] common = ["forward", "--experts", .. dirs, "--module", "down_proj", "--input", dir.Sub("in.safetensors"), "--router", "arrow", "--top-k", "2"];

        var (code, _, error) = Run([.. common, "--output", dir.Sub("cpu.safetensors"), "--backend", "cpu"]);
        Assert.True(code == 0, error);
        string device = SharedDevices.Selector(driver)!;
        (code, string output, error) = Run([.. common, "--output", dir.Sub("cl.safetensors"), "--backend", "opencl", "--device", device, "--weight-precision", precision]);
        Assert.True(code == 0, error);
        Assert.Contains("on OpenCL", output);

        using SafeTensorsFile cpu = SafeTensorsFile.Open(dir.Sub("cpu.safetensors")), cl = SafeTensorsFile.Open(dir.Sub("cl.safetensors"));
        int[] cpuIds = cpu.ReadInt32s(cpu.GetTensor("expert_ids")), clIds = cl.ReadInt32s(cl.GetTensor("expert_ids"));
        float[] cpuWeights = cpu.ReadSingles(cpu.GetTensor("expert_weights")), clWeights = cl.ReadSingles(cl.GetTensor("expert_weights"));
        float[] cpuY = cpu.ReadSingles(cpu.GetTensor("y")), clY = cl.ReadSingles(cl.GetTensor("y"));
        if (precision == "f16")
        {
            CheckTheRoundedValues($"{data} on {driver} (f16)", lib, dirs, x, yBase, clIds, clWeights, clY, tokens, dIn);
            return;
        }
        // F32: the same experts, and weights within 1e-5 (the device sums the scores' dot products in another order).
        Assert.Equal(cpuIds, clIds);
        for (int i = 0; i < cpuWeights.Length; i++)
        {
            Assert.True(Math.Abs(cpuWeights[i] - clWeights[i]) <= 1e-5, $"{data}: slot {i}: weight {clWeights[i]} on {driver}, {cpuWeights[i]} on the CPU");
        }
        // y: F32 factors differ from the CPU by summation order alone (1e-5 of the terms' magnitude).
        double[] magnitude = Magnitude(lib, x, cl, tokens, dIn, dOut);
        for (int i = 0; i < cpuY.Length; i++)
        {
            Assert.True(Math.Abs(cpuY[i] - clY[i]) <= 1e-5 * magnitude[i] + 1e-6,
                $"{data}: y[{i}] = {clY[i]} on {driver} ({precision}), {cpuY[i]} on the CPU; bound {1e-5 * magnitude[i] + 1e-6}");
        }
    }

    /// <summary>
    /// F16 storage rounds the factors once (the command loads the experts at F16) and the Arrow prototypes, which the library
    /// computes from the rounded factors, once more at upload (here by the tests' own rounding): the device's choice
    /// is a valid top-2 of the float64 scores of the rounded prototypes (slack 1e-4 for near ties) with weights within
    /// 1e-5 of their softmax, and y is the float64 mixture of the rounded factors for that choice (<see cref="Reference.CheckFloat32"/>).
    /// </summary>
    private static void CheckTheRoundedValues(string where, TestLibrary lib, string[] dirs, float[] x, float[] yBase, int[] ids, float[] weights,
        float[] y, int tokens, int dIn)
    {
        ExpertLibrary loaded = ExpertLibrary.Load(dirs, new ExpertLibraryOptions { WeightPrecision = WeightPrecision.Float16 });
        var router = new ArrowRouter(loaded.Module(Module), new RoutingOptions(2));
        float[] prototypes = Stored.Values(router.Prototypes, WeightPrecision.Float16);
        for (int t = 0; t < tokens; t++)
        {
            double[] scores = Reference.Scores(x.AsSpan(t * dIn, dIn), prototypes, router.Normalization, router.ScoreFunction,
                router.Options.Temperature, router.Bias);
            double[] expected = Reference.CheckTopKAndWeigh(scores, ids.AsSpan(t * 2, 2), 1e-4, $"{where}, token {t}");
            for (int s = 0; s < 2; s++)
            {
                Assert.True(Math.Abs(weights[t * 2 + s] - expected[s]) < 1e-5, $"{where}: token {t} slot {s}: weight {weights[t * 2 + s]}, expected {expected[s]}");
            }
        }
        RawFactors?[] stored = Stored.Factors(lib.Raw[Module], WeightPrecision.Float16);
        ReferenceOutput mixture = Reference.Forward(stored, x, yBase, tokens, ids, weights.Select(w => (double)w).ToArray(), 2);
        Reference.CheckFloat32(y, mixture, yBase, 2, where);
    }

    /// <summary>Per output, Σ_slots |w s| Σ_k |B_jk| |A_k x|: the size of the terms the mixture sums, in float64.</summary>
    private static double[] Magnitude(TestLibrary lib, float[] x, SafeTensorsFile output, int tokens, int dIn, int dOut)
    {
        int[] ids = output.ReadInt32s(output.GetTensor("expert_ids"));
        float[] weights = output.ReadSingles(output.GetTensor("expert_weights"));
        int k = ids.Length / tokens;
        var magnitude = new double[tokens * dOut];
        for (int t = 0; t < tokens; t++)
        {
            for (int s = 0; s < k; s++)
            {
                int e = ids[t * k + s];
                if (e < 0 || lib.Raw[Module][e] is not RawFactors f)
                {
                    continue;
                }
                var ax = new double[f.Rank];
                for (int r = 0; r < f.Rank; r++)
                {
                    for (int i = 0; i < dIn; i++)
                    {
                        ax[r] += Math.Abs((double)f.A[r * dIn + i] * x[t * dIn + i]);
                    }
                }
                for (int j = 0; j < dOut; j++)
                {
                    double sum = 0;
                    for (int r = 0; r < f.Rank; r++)
                    {
                        sum += Math.Abs((double)f.B[j * f.Rank + r]) * ax[r];
                    }
                    magnitude[t * dOut + j] += Math.Abs((double)weights[t * k + s] * f.Scaling) * sum;
                }
            }
        }
        return magnitude;
    }
}
