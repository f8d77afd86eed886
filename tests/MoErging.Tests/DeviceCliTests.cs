using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;
using MoErging.Tests.Kernels;
using static MoErging.Tests.CliTests;

namespace MoErging.Tests;

/// <summary>
/// <c>moerge devices</c> and <c>--device</c> on the two OpenCL drivers CI installs: both listed as running the
/// engine, and a forward on each gives the CPU backend's routing and y (on the library as the command loads it), with
/// F32 and F16 weights.
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
        new SafeTensorsWriter().Add("x", x, [tokens, dIn]).Add("base", yBase, [tokens, dOut]).WriteTo(dir.Sub("in.safetensors"));
        string[] common = ["forward", "--experts", .. dirs, "--module", "down_proj", "--input", dir.Sub("in.safetensors"), "--router", "arrow", "--top-k", "2"];

        string device = SharedDevices.Selector(driver)!;
        var (code, output, error) = Run([.. common, "--output", dir.Sub("cl.safetensors"), "--backend", "opencl", "--device", device, "--weight-precision", precision]);
        Assert.True(code == 0, error);
        Assert.Contains("on OpenCL", output);

        // The CPU backend in float32 on the library as the command loads it, at the weight precision (F16 factors
        // rounded once, and Arrow's prototypes computed from them): the routing and y the device must give, since
        // a GPU keeps the prototypes in float32 and widens F16 factors exactly.
        ExpertLibrary loaded = ExpertLibrary.Load(dirs, new ExpertLibraryOptions { WeightPrecision = precision == "f16" ? WeightPrecision.Float16 : WeightPrecision.Float32 });
        AdaptedModule module = loaded.Module("down_proj");
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu });
        using Session session = engine.CreateSession();
        float[] cpuY = (float[])yBase.Clone();
        var decision = new RoutingDecision();
        session.Forward(module, new ArrowRouter(module, new RoutingOptions(2)), x, decision, cpuY);
        int[] cpuIds = decision.ExpertIds.ToArray();
        float[] cpuWeights = decision.Weights.ToArray();

        using SafeTensorsFile cl = SafeTensorsFile.Open(dir.Sub("cl.safetensors"));
        int[] clIds = cl.ReadInt32s(cl.GetTensor("expert_ids"));
        float[] clWeights = cl.ReadSingles(cl.GetTensor("expert_weights")), clY = cl.ReadSingles(cl.GetTensor("y"));
        // The same experts, and weights within 1e-5 (the device sums the scores' dot products in another order).
        Assert.Equal(cpuIds, clIds);
        for (int i = 0; i < cpuWeights.Length; i++)
        {
            Assert.True(Math.Abs(cpuWeights[i] - clWeights[i]) <= 1e-5, $"{data}: slot {i}: weight {clWeights[i]} on {driver}, {cpuWeights[i]} on the CPU");
        }
        // y: the same factors (the device widens F16 exactly), so the results differ by summation order alone:
        // 1e-5 of the terms' magnitude.
        double[] magnitude = Magnitude(lib, x, cl, tokens, dIn, dOut);
        for (int i = 0; i < cpuY.Length; i++)
        {
            Assert.True(Math.Abs(cpuY[i] - clY[i]) <= 1e-5 * magnitude[i] + 1e-6,
                $"{data}: y[{i}] = {clY[i]} on {driver} ({precision}), {cpuY[i]} on the CPU; bound {1e-5 * magnitude[i] + 1e-6}");
        }
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
