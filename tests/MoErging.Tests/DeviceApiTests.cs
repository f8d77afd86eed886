using ILGPU;
using ILGPU.Runtime;
using MoErging.Execution;
using MoErging.Execution.Gpu;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;
using MoErging.Tests.Kernels;

namespace MoErging.Tests;

/// <summary>
/// The device-resident API: activations and decisions that stay on the GPU give what the span API gives,
/// and host-given assignments uploaded once can be reused. Against the float64 reference.
/// </summary>
public abstract class DeviceApiTests(EngineFixture engines)
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    [Fact]
    public void DeviceBuffersMatchTheReferenceInF32AndF16()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 5, dIn: 29, dOut: 41, ranks: [4, 1, 9]);
        AdaptedModule module = lib.Module(Module);
        var router = new ArrowRouter(module, new RoutingOptions(2));
        using Session session = engines.CreateSession(1);
        Accelerator accelerator = session.Engine.Accelerator!;
        const int tokens = 6;
        float[] x = data.Normal(tokens * 29), yBase = data.Normal(tokens * 41);
        using DeviceRoutingDecision decision = session.CreateDeviceDecision();
        var host = new RoutingDecision();

        using (var xd = accelerator.Allocate1D(x))
        using (var yd = accelerator.Allocate1D(yBase))
        {
            session.Forward(module, router, xd.View, decision, yd.View);
            session.Synchronize();
            decision.CopyTo(host);
            Check(data, lib, x, yBase, yd.GetAsArray1D(), host, router, half: false);
        }

        float[] xh = Round(x), yh = Round(yBase);
        using (var xd = accelerator.Allocate1D(xh.Select(HalfBits.FromSingle).ToArray()))
        using (var yd = accelerator.Allocate1D(yh.Select(HalfBits.FromSingle).ToArray()))
        {
            session.Forward(module, router, xd.View, decision, yd.View);
            session.Synchronize();
            decision.CopyTo(host);
            Check(data, lib, xh, yh, yd.GetAsArray1D().Select(HalfBits.ToSingle).ToArray(), host, router, half: true);
        }
    }

    /// <summary>
    /// An engine storing its factors and its routers' prototypes in F16 or BF16 routes and forwards through a
    /// session, on the span and the device APIs, in F32 and F16 activations, as the float64 reference does from the
    /// factors and prototypes as stored (rounded to nearest even by the tests' own rounding). The tolerances are those
    /// of F32 storage: the rounding happened before the reference, so what is left is float32 arithmetic and the
    /// activations' own rounding.
    /// </summary>
    [Theory]
    [InlineData(WeightPrecision.Float16)]
    [InlineData(WeightPrecision.BFloat16)]
    public void SixteenBitStorageMatchesTheReferenceOfTheStoredValues(WeightPrecision precision)
    {
        var data = new TestData();
        const int tokens = 7, dIn = 40, dOut = 27;
        TestLibrary lib = data.Library(experts: 6, dIn: dIn, dOut: dOut, ranks: [4, 1, 9, 16]);
        AdaptedModule module = lib.Module(Module);
        var router = new ArrowRouter(module, new RoutingOptions(2));
        RawFactors?[] stored = Stored.Factors(lib.Raw[Module], precision);
        float[] prototypes = Stored.Values(router.Prototypes, precision);
        using Engine engine = engines.CreateEngine(1, precision);
        using Session session = engine.CreateSession();
        Accelerator accelerator = engine.Accelerator!;
        string where = $"{data} ({precision} storage)";
        var host = new RoutingDecision();

        float[] x = data.Normal(tokens * dIn), yBase = data.Normal(tokens * dOut), y = (float[])yBase.Clone();
        session.Forward(module, router, x, host, y);
        Check(where, stored, prototypes, x, yBase, y, host, router, half: false);

        float[] xh = Round(x), yh = Round(yBase);
        var yHalf = yh.Select(v => (System.Half)v).ToArray();
        session.Forward(module, router, xh.Select(v => (System.Half)v).ToArray(), host, yHalf);
        Check(where, stored, prototypes, xh, yh, yHalf.Select(v => (float)v).ToArray(), host, router, half: true);

        using DeviceRoutingDecision decision = session.CreateDeviceDecision();
        using var xd = accelerator.Allocate1D(x);
        using var yd = accelerator.Allocate1D(yBase);
        session.Forward(module, router, xd.View, decision, yd.View);
        session.Synchronize();
        decision.CopyTo(host);
        Check(where, stored, prototypes, x, yBase, yd.GetAsArray1D(), host, router, half: false);
    }

    /// <summary>
    /// A batch whose gating launch exceeds what a launch runs (more than int.MaxValue threads: 2²¹ tokens × 1,024
    /// experts is 134 million groups of the scores) is refused before anything is queued, with the limit named,
    /// and y and the decision are left as they were; the module itself is supported.
    /// </summary>
    [Fact]
    public void ABatchBeyondTheLaunchLimitsIsRefusedUpFront()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 1024, dIn: 1, dOut: 1, ranks: [1]);
        AdaptedModule module = lib.Module(Module);
        var router = new LinearRouter(data.Normal(1024), 1, new RoutingOptions(1));
        using Session session = engines.CreateSession(1);
        Assert.True(session.Engine.Supports(router, module, Aggregation.Output, out string? reason), reason);
        const int tokens = 1 << 21;
        float[] x = new float[tokens], y = new float[tokens];
        y[17] = 3f;
        var decision = new RoutingDecision();
        decision.Assign([0], [1f], 1, 1024);
        var error = Assert.Throws<NotSupportedException>(() => session.Forward(module, router, x, decision, y));
        Assert.Contains($"a batch of {tokens} tokens does not fit", error.Message);
        Assert.Contains("its gating scores launch needs 134217728 groups of", error.Message);
        Assert.Contains("2147483647 threads; split it into smaller batches", error.Message);
        Assert.Equal(1, decision.TokenCount);
        Assert.Equal(3f, y[17]);
        Assert.All(y.Where((_, i) => i != 17), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void AssignedDecisionsUploadOnceAndApplyEachTime()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 4, dIn: 16, dOut: 24, ranks: [2, 8]);
        AdaptedModule module = lib.Module(Module);
        using Session session = engines.CreateSession(1);
        Accelerator accelerator = session.Engine.Accelerator!;
        const int tokens = 5;
        int[] ids = [0, -1, 3, 1, 2, 2, 1, 0, -1, -1];
        float[] weights = data.Normal(tokens * 2), x = data.Normal(tokens * 16), yBase = data.Normal(tokens * 24);
        using DeviceRoutingDecision decision = session.CreateDeviceDecision();
        decision.Assign(ids, weights, 2, module.ExpertCount);
        using var xd = accelerator.Allocate1D(x);
        using var yd = accelerator.Allocate1D(yBase);
        session.Forward(module, decision, xd.View, yd.View);
        session.Forward(module, decision, xd.View, yd.View); // applied twice: y = base + 2 · mixture
        session.Synchronize();
        double[] twice = weights.Select(w => 2.0 * w).ToArray();
        ReferenceOutput expected = Reference.Forward(lib.Raw[Module], x, yBase, tokens, ids, twice, 2);
        Reference.CheckFloat32(yd.GetAsArray1D(), expected, yBase, 4, data.ToString());
        Assert.Contains("x holds 2 rows but the decision routes 5 tokens",
            Assert.Throws<ArgumentException>(() => session.Forward(module, decision, xd.View.SubView(0, 32), yd.View.SubView(0, 48))).Message);
    }

    [Fact]
    public void WorkspacesGrowWhileEarlierWorkIsStillQueued()
    {
        // Three forwards queued without a synchronisation, each larger than the last: every growth frees
        // workspaces the queued work reads, which must wait for it. Each must still add its own mixture.
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 6, dIn: 24, dOut: 20, ranks: [3, 8, 5]);
        AdaptedModule module = lib.Module(Module);
        using Session session = engines.CreateSession(1);
        Accelerator accelerator = session.Engine.Accelerator!;
        int[] sizes = [2, 17, 60];
        var decisions = sizes.Select(_ => session.CreateDeviceDecision()).ToArray();
        var buffers = new List<(MemoryBuffer1D<float, Stride1D.Dense> X, MemoryBuffer1D<float, Stride1D.Dense> Y, float[] XHost, float[] YBase, int[] Ids, float[] Weights)>();
        for (int i = 0; i < sizes.Length; i++)
        {
            int tokens = sizes[i];
            int[] ids = Enumerable.Range(0, tokens * 2).Select(_ => data.Rng.Next(-1, 6)).ToArray();
            float[] weights = data.Normal(tokens * 2), x = data.Normal(tokens * 24), yBase = data.Normal(tokens * 20);
            decisions[i].Assign(ids, weights, 2, module.ExpertCount);
            buffers.Add((accelerator.Allocate1D(x), accelerator.Allocate1D(yBase), x, yBase, ids, weights));
        }
        for (int i = 0; i < sizes.Length; i++)
        {
            session.Forward(module, decisions[i], buffers[i].X.View, buffers[i].Y.View);
        }
        session.Synchronize();
        for (int i = 0; i < sizes.Length; i++)
        {
            var (xd, yd, x, yBase, ids, weights) = buffers[i];
            ReferenceOutput expected = Reference.Forward(lib.Raw[Module], x, yBase, sizes[i], ids, weights.Select(w => (double)w).ToArray(), 2);
            Reference.CheckFloat32(yd.GetAsArray1D(), expected, yBase, 2, $"{data} (batch {i}, T = {sizes[i]})");
            xd.Dispose();
            yd.Dispose();
            decisions[i].Dispose();
        }
    }

    [Fact]
    public void ADecisionFromAnotherSessionIsRefused()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, dIn: 8, dOut: 6, ranks: [2]);
        AdaptedModule module = lib.Module(Module);
        using Session mine = engines.CreateSession(1), theirs = engines.CreateSession(1);
        using DeviceRoutingDecision foreign = theirs.CreateDeviceDecision();
        foreign.Assign([0, 1], [0.5f, 0.5f], 1, 3);
        Accelerator accelerator = mine.Engine.Accelerator!;
        using var xd = accelerator.Allocate1D<float>(2 * 8);
        using var yd = accelerator.Allocate1D<float>(2 * 6);
        Assert.Contains("created by another session",
            Assert.Throws<ArgumentException>(() => mine.Forward(module, foreign, xd.View, yd.View)).Message);
        var router = new ArrowRouter(module, new RoutingOptions(1));
        Assert.Contains("created by another session",
            Assert.Throws<ArgumentException>(() => mine.Route(module, router, xd.View, foreign)).Message);
    }

    [Fact]
    public void ADecisionOutlivesItsSessionAndRefusesUseAfterIt()
    {
        Session session = engines.CreateSession(1);
        DeviceRoutingDecision decision = session.CreateDeviceDecision();
        decision.Assign([0, 1, 1, 0], [0.5f, 0.5f, 1f, 0f], 2, 2);
        session.Dispose();
        Assert.Throws<ObjectDisposedException>(() => decision.Assign([0], [1f], 1, 2));
        decision.Dispose(); // after its session: frees, does not throw
    }

    /// <summary>The gating keeps no per-expert state in shared memory, so a library of more than a thousand experts routes and forwards as a small one.</summary>
    [Fact]
    public void RoutersOfMoreThanAThousandExpertsRouteAndForward()
    {
        var data = new TestData();
        const int experts = 1030, tokens = 3;
        TestLibrary lib = data.Library(experts: experts, dIn: 8, dOut: 5, ranks: [1, 2]);
        AdaptedModule module = lib.Module(Module);
        var router = new LinearRouter(data.Normal(experts * 8), 8, new RoutingOptions(2));
        using Session session = engines.CreateSession(1);
        var decision = new RoutingDecision();
        float[] x = data.Normal(tokens * 8), yBase = data.Normal(tokens * 5), y = (float[])yBase.Clone();
        session.Forward(module, router, x, decision, y);
        Check(data, lib, x, yBase, y, decision, router, half: false);
        session.Route(module, router, x, decision);
        Check(data, lib, x, yBase, y, decision, router, half: false); // the same decision from the route-only path
    }

    [Fact]
    public void UploadsAreFreedOnReleaseAndWhenTheirHostIsCollected()
    {
        var data = new TestData();
        using Engine engine = engines.CreateEngine(1);
        using Session session = engine.CreateSession();
        TestLibrary kept = data.Library(experts: 3, dIn: 8, dOut: 6, ranks: [2]);
        AdaptedModule module = kept.Module(Module);
        float[] x = data.Normal(2 * 8), y = new float[2 * 6];
        var decision = new RoutingDecision();
        decision.Assign([0, 1, 2, 0], [1f, 0.5f, 0.25f, 1f], 2, 3);
        session.Forward(module, decision, x, y);
        var gpu = (GpuBackend)engine.Implementation;
        Assert.Equal(1, gpu.UploadCount);
        Assert.True(engine.Release(module));
        Assert.False(engine.Release(module)); // nothing left to free
        Assert.Equal(0, gpu.UploadCount);
        session.Forward(module, decision, x, y); // uploaded again on use
        Assert.Equal(1, gpu.UploadCount);

        // A module the host no longer holds goes when the next new upload comes.
        ForwardOnce(session, data, x, y, decision);
        Assert.Equal(2, gpu.UploadCount);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        session.Forward(module, decision, x, y); // already there: nothing is swept
        Assert.Equal(2, gpu.UploadCount);
        TestLibrary other = data.Library(experts: 3, dIn: 8, dOut: 6, ranks: [2]);
        session.Forward(other.Module(Module), decision, x, y); // new: the collected one is freed first
        Assert.Equal(2, gpu.UploadCount);
        GC.KeepAlive(other);
        GC.KeepAlive(kept);
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static void ForwardOnce(Session session, TestData data, float[] x, float[] y, RoutingDecision decision)
    {
        TestLibrary dropped = data.Library(experts: 3, dIn: 8, dOut: 6, ranks: [2]);
        session.Forward(dropped.Module(Module), decision, x, y);
    }

    private static void Check(TestData data, TestLibrary lib, float[] x, float[] yBase, float[] y, RoutingDecision decision, LinearRouter router, bool half) =>
        Check(data.ToString(), lib.Raw[Module], router.Prototypes, x, yBase, y, decision, router, half);

    /// <summary>The decision is a top-k of the reference scores (from <paramref name="prototypes"/>) and y is the reference forward of <paramref name="factors"/> under it.</summary>
    private static void Check(string where, RawFactors?[] factors, ReadOnlySpan<float> prototypes, float[] x, float[] yBase, float[] y, RoutingDecision decision,
        LinearRouter router, bool half)
    {
        int tokens = decision.TokenCount, k = decision.TopK;
        var weights = new double[tokens * k];
        for (int t = 0; t < tokens; t++)
        {
            double[] scores = Reference.Scores(x.AsSpan(t * router.InputDim, router.InputDim), prototypes, router.Normalization,
                router.ScoreFunction, router.Options.Temperature, router.Bias);
            double[] w = Reference.CheckTopKAndWeigh(scores, decision.ExpertIdsOf(t), 1e-4, $"{where}, token {t}");
            w.CopyTo(weights, t * k);
        }
        ReferenceOutput expected = Reference.Forward(factors, x, yBase, tokens, decision.ExpertIds.ToArray(), weights, k);
        if (half)
        {
            Reference.CheckHalf(y.Select(v => (System.Half)v).ToArray(), expected, yBase, $"{where} (F16)");
        }
        else
        {
            Reference.CheckFloat32(y, expected, yBase, k, $"{where} (F32)");
        }
    }

    private static float[] Round(float[] values) => values.Select(v => HalfBits.ToSingle(HalfBits.FromSingle(v))).ToArray();
}

/// <summary>Backend selection: a backend that is not present is a clear error, and Auto says what it chose.</summary>
public sealed class BackendSelectionTests
{
    /// <summary>
    /// What the machine has decides which half runs: a CUDA driver library, or an OpenCL driver that lists a device
    /// (with CI=true, always: CI installs two), must give an engine on that backend; without them, the error must
    /// say the backend is not available and name its API.
    /// </summary>
    [Theory]
    [InlineData(Backend.Cuda, "CUDA")]
    [InlineData(Backend.OpenCL, "OpenCL")]
    public void MissingBackendIsAClearErrorAndPresentOneOpens(Backend backend, string api)
    {
        var options = new EngineOptions { Backend = backend };
        string? present = backend == Backend.Cuda
            ? SharedDevices.Expected(TestDevice.Cuda)
            : SharedDevices.InCI ? "CI installs rusticl and PoCL (CI=true)"
            : Devices.List().FirstOrDefault(d => d.Api == GpuApi.OpenCL) is DeviceInfo listed ? $"the OpenCL listing has {listed.Name}"
            : null;
        if (present is null)
        {
            var e = Assert.Throws<BackendUnavailableException>(() => Engine.Create(options).Dispose());
            Assert.StartsWith($"{backend} is not available: ", e.Message);
            Assert.Contains(api, e.Message);
            return;
        }
        Engine engine;
        try
        {
            engine = Engine.Create(options);
        }
        catch (BackendUnavailableException e)
        {
            Assert.Fail($"{backend} should open here ({present}), but: {e.Message}");
            throw;
        }
        using (engine)
        {
            Assert.Equal(backend, engine.Backend);
            Assert.NotNull(engine.Accelerator);
        }
    }

    /// <summary>The GPU's launch limits: the device's grid, and a thread index that fits an int.</summary>
    [Fact]
    public void LaunchLimitsNameWhatALaunchNeedsAndWhatTheDeviceRuns()
    {
        Assert.Null(GpuBackend.LaunchLimit("shrink", 65_535, 128, 65_535));
        Assert.Null(GpuBackend.LaunchLimit("shrink", int.MaxValue / 128, 128, int.MaxValue));
        Assert.Equal("its shrink launch needs 65536 groups of 128 threads, and a launch runs at most 65535 groups and 2147483647 threads",
            GpuBackend.LaunchLimit("shrink", 65_536, 128, 65_535));
        Assert.Equal("its expand launch needs 16777216 groups of 128 threads, and a launch runs at most 2147483647 groups and 2147483647 threads",
            GpuBackend.LaunchLimit("expand", 1 << 24, 128, int.MaxValue));
    }

    /// <summary>The CPU runs every case, and says so; it has no device buffers to offer.</summary>
    [Fact]
    public void TheCpuSupportsEveryCaseAndHasNoDeviceDecisions()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 3, dIn: 8, dOut: 6, ranks: [2]);
        AdaptedModule module = lib.Module("base_model.model.layers.0.mlp.down_proj");
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 1 });
        foreach (Aggregation aggregation in Enum.GetValues<Aggregation>())
        {
            Assert.True(engine.Supports(null, module, aggregation, out string? none), none);
            Assert.True(engine.Supports(new UniformRouter(3), module, aggregation, out none), none);
        }
        using Session session = engine.CreateSession();
        Assert.Equal("device buffers need a GPU backend; this engine runs on Cpu", Assert.Throws<NotSupportedException>(() => session.CreateDeviceDecision()).Message);
    }

    [Fact]
    public void AutoReportsItsChoiceAndReason()
    {
        using Engine engine = Engine.Create();
        Assert.NotEqual(Backend.Auto, engine.Backend);
        Assert.StartsWith(engine.Backend.ToString().ToLowerInvariant() + ":", engine.BackendReason);
        if (engine.Backend == Backend.Cpu)
        {
            Assert.Contains("CUDA", engine.BackendReason); // why not CUDA
            Assert.Contains("OpenCL", engine.BackendReason); // why not OpenCL
        }
    }

    [Fact]
    public void AutoAsksTheDriversDirectlyAndAgreesWithIlgpusListing()
    {
        // The direct query decides whether Auto starts ILGPU at all: it must see every device ILGPU's listing sees.
        List<(string Name, DeviceKind Kind)> listed = Devices.List().Where(d => d.Api == GpuApi.OpenCL).Select(d => (d.Name, d.Kind)).ToList();
        List<(string Name, DeviceKind Kind)>? probed = OpenCLProbe.Devices();
        if (DriverLibraries.HasOpenCL())
        {
            Assert.NotNull(probed);
            Assert.Equal(listed, probed);
        }
        else
        {
            Assert.Null(probed);
        }

        bool mayHaveGpu = Devices.MayHaveGpu(out string reason);
        Assert.Equal(DriverLibraries.HasCuda() || listed.Any(d => d.Kind == DeviceKind.Gpu), mayHaveGpu);
        if (!mayHaveGpu)
        {
            string noOpenCL = listed.Count > 0 ? Devices.NoUsableOpenCLGpu(listed.Select(d => Devices.NotAGpu(d.Name, d.Kind))) : Devices.Missing(GpuApi.OpenCL)!;
            Assert.Equal($"{Devices.Missing(GpuApi.Cuda)}; {noOpenCL}", reason); // what the full listing would have said
            using Engine engine = Engine.Create();
            Assert.Equal($"cpu: {reason}", engine.BackendReason);
        }
    }

    [Fact]
    public void DeviceCallsOnTheCpuBackendSayTheyNeedAGpu()
    {
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu });
        using Session session = engine.CreateSession();
        Assert.Contains("device buffers need a GPU backend", Assert.Throws<NotSupportedException>(() => session.CreateDeviceDecision()).Message);
    }
}

public sealed class DeviceApiTestsOnGpuSimulator(SimulatorEngine engines) : DeviceApiTests(engines), IClassFixture<SimulatorEngine>;

public sealed class DeviceApiTestsOnFourWarpSimulator(FourWarpSimulatorEngine engines) : DeviceApiTests(engines), IClassFixture<FourWarpSimulatorEngine>;

[Trait("Backend", "OpenCL")]
public sealed class DeviceApiTestsOnRusticl(RusticlEngine engines) : DeviceApiTests(engines), IClassFixture<RusticlEngine>;

[Trait("Backend", "OpenCL")]
public sealed class DeviceApiTestsOnPocl(PoclEngine engines) : DeviceApiTests(engines), IClassFixture<PoclEngine>;

[Trait("Backend", "Cuda")]
public sealed class DeviceApiTestsOnCuda(CudaEngine engines) : DeviceApiTests(engines), IClassFixture<CudaEngine>;

/// <summary>
/// Sessions on one device share its compiled kernels; on OpenCL a kernel object holds its arguments between
/// setting them and the enqueue, so concurrent launches must not interleave there. Two sessions on two threads
/// run the same kernels on different inputs many times, and each result must equal, bit for bit, what the
/// same call gives alone (the kernels are deterministic).
/// </summary>
public abstract class ConcurrentSessionTests(EngineFixture engines)
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    [Fact]
    public void ConcurrentSessionsGetTheirOwnResults()
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: 6, dIn: 24, dOut: 40, ranks: [4, 8, 2]);
        AdaptedModule module = lib.Module(Module);
        var router = new ArrowRouter(module, new RoutingOptions(2));
        const int tokens = 5, rounds = 40;
        float[][] x = [data.Normal(tokens * 24), data.Normal(tokens * 24)];
        float[][] yBase = [data.Normal(tokens * 40), data.Normal(tokens * 40)];
        var expected = new float[2][];
        using (Session alone = engines.CreateSession(1))
        {
            for (int s = 0; s < 2; s++)
            {
                expected[s] = (float[])yBase[s].Clone();
                alone.Forward(module, router, x[s], new RoutingDecision(), expected[s]);
            }
        }
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        Parallel.For(0, 2, new ParallelOptions { MaxDegreeOfParallelism = 2 }, s =>
        {
            using Session session = engines.CreateSession(1);
            var decision = new RoutingDecision();
            for (int round = 0; round < rounds; round++)
            {
                float[] y = (float[])yBase[s].Clone();
                session.Forward(module, router, x[s], decision, y);
                if (!y.AsSpan().SequenceEqual(expected[s]))
                {
                    failures.Enqueue($"session {s}, round {round}");
                }
            }
        });
        Assert.True(failures.IsEmpty, $"{data}: results differ from the same call alone in {failures.Count} calls, first {string.Join("; ", failures.Take(3))}");
    }
}

[Trait("Backend", "OpenCL")]
public sealed class ConcurrentSessionTestsOnRusticl(RusticlEngine engines) : ConcurrentSessionTests(engines), IClassFixture<RusticlEngine>;

[Trait("Backend", "OpenCL")]
public sealed class ConcurrentSessionTestsOnPocl(PoclEngine engines) : ConcurrentSessionTests(engines), IClassFixture<PoclEngine>;

[Trait("Backend", "Cuda")]
public sealed class ConcurrentSessionTestsOnCuda(CudaEngine engines) : ConcurrentSessionTests(engines), IClassFixture<CudaEngine>;
