using MoErging.Execution.Cpu;

namespace MoErging.Execution;

/// <summary>
/// A chosen backend and its resources (the CPU worker threads). Thread-safe: create one engine per
/// process and one <see cref="Session"/> per thread. Dispose after every session is done.
/// </summary>
public sealed class Engine : IDisposable
{
    private readonly WorkerPool _pool;

    private Engine(Backend backend, string reason, int threads)
    {
        Backend = backend;
        BackendReason = reason;
        _pool = new WorkerPool(threads);
    }

    /// <summary>The backend in use (never <see cref="Backend.Auto"/>).</summary>
    public Backend Backend { get; }

    /// <summary>Why this backend: what was asked for and what was found.</summary>
    public string BackendReason { get; }

    /// <summary>CPU threads a CPU forward uses, the caller included.</summary>
    public int CpuThreads => _pool.Threads;

    internal WorkerPool Pool => _pool;

    /// <summary>Creates an engine on the requested backend.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An unknown backend or a negative thread count.</exception>
    public static Engine Create(EngineOptions? options = null)
    {
        options ??= new EngineOptions();
        ArgumentOutOfRangeException.ThrowIfNegative(options.CpuThreads, nameof(options.CpuThreads));
        int threads = options.CpuThreads == 0 ? Environment.ProcessorCount : options.CpuThreads;
        return options.Backend switch
        {
            Backend.Cpu => new Engine(Backend.Cpu, "cpu: asked for", threads),
            Backend.Auto => new Engine(Backend.Cpu, "cpu: the only backend in this build", threads),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.Backend, "unknown backend"),
        };
    }

    /// <summary>Creates a session: the per-thread workspace that routing and forwards run in.</summary>
    public Session CreateSession()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new Session(this);
    }

    private bool _disposed;

    /// <inheritdoc />
    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            _pool.Dispose();
        }
    }
}
