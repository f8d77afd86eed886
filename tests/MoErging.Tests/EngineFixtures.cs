using MoErging.Execution;

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
            engine = Open(threads);
            _engines[key] = engine;
        }
        return engine.CreateSession();
    }

    public abstract Backend Backend { get; }

    protected virtual Engine Open(int threads) => Engine.Create(new EngineOptions { Backend = Backend, CpuThreads = threads });

    public void Dispose()
    {
        foreach (Engine engine in _engines.Values)
        {
            engine.Dispose();
        }
    }
}

public sealed class CpuEngines : EngineFixture
{
    public override Backend Backend => Backend.Cpu;
}

/// <summary>The GPU pipeline on ILGPU's CPU accelerator: CI runs these.</summary>
public sealed class SimulatorEngine : EngineFixture
{
    public override Backend Backend => Backend.GpuSimulator;
}

/// <summary>The GPU pipeline on CUDA; tests skip, saying why, where there is none.</summary>
public sealed class CudaEngine : EngineFixture
{
    public override Backend Backend => Backend.Cuda;

    protected override Engine Open(int threads)
    {
        try
        {
            return base.Open(threads);
        }
        catch (BackendUnavailableException e)
        {
            Assert.Skip(e.Message);
            throw;
        }
    }
}
