using MoErging.Execution;
using MoErging.Kernels;
using MoErging.Tests.Kernels;

namespace MoErging.Tests;

/// <summary>Engines shared by a test class (a GPU engine compiles its kernels once), handing out sessions.</summary>
public abstract class EngineFixture : IDisposable
{
    private readonly Dictionary<int, Engine> _engines = [];

    /// <summary>A session on an engine with the given CPU thread count (ignored by GPU backends).</summary>
    public Session CreateSession(int threads)
    {
        int key = Backend == Backend.Cpu ? threads : 0;
        if (!_engines.TryGetValue(key, out Engine? engine))
        {
            engine = Open(threads, Precision);
            _engines[key] = engine;
        }
        return engine.CreateSession();
    }

    /// <summary>A new engine of its own (the GPU device is shared), for tests that count what an engine holds or store weights in another precision.</summary>
    public Engine CreateEngine(int threads, WeightPrecision? precision = null) => Open(threads, precision ?? Precision);

    public abstract Backend Backend { get; }

    /// <summary>How the fixture's engines store the experts' factors.</summary>
    public virtual WeightPrecision Precision => WeightPrecision.Float32;

    /// <summary>How they store linear routers' prototypes: as the factors, on every backend.</summary>
    public WeightPrecision PrototypePrecision => Precision;

    /// <summary>Factors as the engines hold them (the reference's input): rounded by the test's own rounding (<see cref="Stored"/>).</summary>
    public RawFactors?[] Stored(IReadOnlyList<RawFactors?> experts) => MoErging.Tests.Stored.Factors(experts, Precision);

    /// <summary>Prototypes as the engines hold them.</summary>
    public float[] StoredPrototypes(ReadOnlySpan<float> prototypes) => MoErging.Tests.Stored.Values(prototypes, PrototypePrecision);

    protected virtual Engine Open(int threads, WeightPrecision precision) =>
        Engine.Create(new EngineOptions { Backend = Backend, CpuThreads = threads, WeightPrecision = precision });

    public void Dispose()
    {
        foreach (Engine engine in _engines.Values)
        {
            engine.Dispose();
        }
    }
}

/// <summary>CPU engines storing float32 (and the base of the 16-bit CPU fixtures).</summary>
public class CpuEngines : EngineFixture
{
    public override Backend Backend => Backend.Cpu;
}

/// <summary>CPU engines storing factors and prototypes as bfloat16; the libraries the tests build hold float32, so the engines convert them.</summary>
public sealed class CpuBFloat16Engines : CpuEngines
{
    public override WeightPrecision Precision => WeightPrecision.BFloat16;
}

/// <summary>CPU engines storing factors and prototypes as IEEE binary16.</summary>
public sealed class CpuFloat16Engines : CpuEngines
{
    public override WeightPrecision Precision => WeightPrecision.Float16;
}

/// <summary>
/// The GPU pipeline on one of the test devices, sharing the device that <see cref="SharedDevices"/> holds open;
/// where it does not open, tests fail if the machine should have it (<see cref="SharedDevices.Expected"/>), else skip, saying why.
/// </summary>
public abstract class GpuEngineFixture(TestDevice device) : EngineFixture
{
    public override Backend Backend => device switch
    {
        TestDevice.Simulator or TestDevice.SimulatorFourWarps => Backend.GpuSimulator,
        TestDevice.Cuda => Backend.Cuda,
        _ => Backend.OpenCL,
    };

    protected override Engine Open(int threads, WeightPrecision precision)
    {
        using GpuDevice shared = SharedDevices.Hold(device); // opens it for the run if this is the first use
        return Engine.Create(new EngineOptions
        {
            Backend = Backend,
            Device = SharedDevices.Selector(device),
            SimulatorWarpsPerGroup = device == TestDevice.SimulatorFourWarps ? 4 : 1,
            WeightPrecision = precision,
        });
    }
}

/// <summary>The GPU pipeline on ILGPU's CPU accelerator (one warp per group): CI runs these.</summary>
public sealed class SimulatorEngine() : GpuEngineFixture(TestDevice.Simulator);

/// <summary>The simulator with four warps per group.</summary>
public sealed class FourWarpSimulatorEngine() : GpuEngineFixture(TestDevice.SimulatorFourWarps);

/// <summary>The GPU pipeline on rusticl (llvmpipe).</summary>
public sealed class RusticlEngine() : GpuEngineFixture(TestDevice.Rusticl);

/// <summary>The GPU pipeline on PoCL.</summary>
public sealed class PoclEngine() : GpuEngineFixture(TestDevice.PoCL);

/// <summary>The GPU pipeline on CUDA; tests fail where the CUDA driver loads and CUDA does not open, and skip, saying why, where there is no driver.</summary>
public sealed class CudaEngine() : GpuEngineFixture(TestDevice.Cuda);
