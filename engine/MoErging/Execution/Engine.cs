using ILGPU.Runtime;
using MoErging.Execution.Cpu;
using MoErging.Execution.Gpu;
using MoErging.Kernels;

namespace MoErging.Execution;

/// <summary>
/// A chosen backend and its resources (the CPU worker threads, or a GPU with its compiled kernels and
/// uploaded experts). Thread-safe: create one engine per process and one <see cref="Session"/> per thread.
/// Dispose after every session is done.
/// </summary>
public sealed class Engine : IDisposable
{
    private bool _disposed;

    private Engine(Backend backend, string reason, WorkerPool? pool, GpuBackend? gpu)
    {
        Backend = backend;
        BackendReason = reason;
        Pool = pool;
        Gpu = gpu;
    }

    /// <summary>The backend in use (never <see cref="Backend.Auto"/>).</summary>
    public Backend Backend { get; }

    /// <summary>Why this backend: what was asked for and what was found.</summary>
    public string BackendReason { get; }

    /// <summary>CPU threads a CPU forward uses, the caller included (0 on a GPU backend).</summary>
    public int CpuThreads => Pool?.Threads ?? 0;

    /// <summary>The ILGPU accelerator of a GPU backend (null on the CPU), for hosts that allocate device buffers on it.</summary>
    public Accelerator? Accelerator => Gpu?.Device.Accelerator;

    internal WorkerPool? Pool { get; }

    internal GpuBackend? Gpu { get; }

    /// <summary>Creates an engine on the requested backend.</summary>
    /// <exception cref="BackendUnavailableException">The backend asked for is not present; the message says why.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An unknown backend or a negative thread count.</exception>
    public static Engine Create(EngineOptions? options = null)
    {
        options ??= new EngineOptions();
        ArgumentOutOfRangeException.ThrowIfNegative(options.CpuThreads, nameof(options.CpuThreads));
        bool half = options.WeightPrecision switch
        {
            WeightPrecision.Float32 => false,
            WeightPrecision.Float16 => true,
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.WeightPrecision, "unknown weight precision"),
        };
        switch (options.Backend)
        {
            case Backend.Cpu:
                return OpenCpu(options, "cpu: asked for");
            case Backend.Cuda:
            case Backend.OpenCL:
            case Backend.GpuSimulator:
                GpuApi api = Api(options.Backend);
                return OpenGpu(options.Backend, api, half, out string reason) ?? throw new BackendUnavailableException($"{options.Backend} is not available: {reason}");
            case Backend.Auto:
                Engine? cuda = OpenGpu(Backend.Cuda, GpuApi.Cuda, half, out string noCuda);
                if (cuda is not null)
                {
                    return cuda;
                }
                Engine? openCL = OpenGpu(Backend.OpenCL, GpuApi.OpenCL, half, out string noOpenCL);
                return openCL ?? OpenCpu(options, $"cpu: {noCuda}; {noOpenCL}");
            default:
                throw new ArgumentOutOfRangeException(nameof(options), options.Backend, "unknown backend");
        }
    }

    private static Engine OpenCpu(EngineOptions options, string reason) =>
        new(Backend.Cpu, reason, new WorkerPool(options.CpuThreads == 0 ? Environment.ProcessorCount : options.CpuThreads), null);

    private static Engine? OpenGpu(Backend backend, GpuApi api, bool half, out string reason)
    {
        GpuDevice? device = Devices.TryOpen(api, out reason);
        if (device is null)
        {
            return null;
        }
        reason = $"{backend.ToString().ToLowerInvariant()}: {reason}";
        return new Engine(backend, reason, null, new GpuBackend(device, half));
    }

    private static GpuApi Api(Backend backend) => backend switch
    {
        Backend.Cuda => GpuApi.Cuda,
        Backend.OpenCL => GpuApi.OpenCL,
        _ => GpuApi.CpuSimulator,
    };

    /// <summary>Creates a session: the per-thread workspace that routing and forwards run in.</summary>
    public Session CreateSession()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new Session(this);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            Pool?.Dispose();
            Gpu?.Dispose();
        }
    }
}
