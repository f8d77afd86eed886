using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using ILGPU.Runtime;
using MoErging.Execution.Cpu;
using MoErging.Execution.Gpu;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution;

/// <summary>
/// A chosen backend and its resources (the CPU worker threads, or a GPU with its compiled kernels and
/// uploaded experts). Thread-safe: create one engine per process and one <see cref="Session"/> per thread.
/// Dispose after every session is done.
/// </summary>
public sealed class Engine : IDisposable
{
    private bool _disposed;

    private Engine(Backend backend, string reason, IBackend implementation, WeightPrecision precision)
    {
        Backend = backend;
        BackendReason = reason;
        Implementation = implementation;
        WeightPrecision = precision;
    }

    /// <summary>The backend in use (never <see cref="Backend.Auto"/>).</summary>
    public Backend Backend { get; }

    /// <summary>How this engine stores expert factors (and, on the CPU, router prototypes) for its forwards (<see cref="EngineOptions.WeightPrecision"/>).</summary>
    public WeightPrecision WeightPrecision { get; }

    /// <summary>Why this backend: what was asked for and what was found.</summary>
    public string BackendReason { get; }

    /// <summary>CPU threads a CPU forward uses, the caller included (0 on a GPU backend).</summary>
    public int CpuThreads => Implementation.CpuThreads;

    /// <summary>The device a GPU backend runs on, as <c>moerge devices</c> lists it (null on the CPU).</summary>
    public DeviceInfo? Device => Implementation.Device;

    /// <summary>
    /// True where the kernels run on a CPU behind a GPU API (an OpenCL driver such as PoCL or rusticl on llvmpipe,
    /// or the GPU simulator): their timings are CPU timings, not GPU figures.
    /// </summary>
    public bool RunsGpuKernelsOnTheCpu => Device?.Kind == DeviceKind.Cpu;

    /// <summary>The ILGPU accelerator of a GPU backend (null on the CPU), for hosts that allocate device buffers on it.</summary>
    public Accelerator? Accelerator => Implementation.Accelerator;

    /// <summary>The backend's implementation (<see cref="CpuBackend"/> or <see cref="GpuBackend"/>), which sessions delegate to.</summary>
    internal IBackend Implementation { get; }

    /// <summary>
    /// Whether this engine runs <paramref name="router"/> (null: a decision given to a forward) at
    /// <paramref name="module"/> with <paramref name="aggregation"/>; when it does not, <paramref name="reason"/> names
    /// the limit, and a session's calls for that case throw <see cref="NotSupportedException"/> with it before any work.
    /// The CPU runs every case; a GPU refuses a module whose kernels' launch exceeds the device's grid. A batch too
    /// large for a GPU launch is refused by the call itself, in the same way.
    /// </summary>
    public bool Supports(Router? router, AdaptedModule module, Aggregation aggregation, [NotNullWhen(false)] out string? reason)
    {
        ArgumentNullException.ThrowIfNull(module);
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Implementation.Supports(router, module, aggregation, out reason);
    }

    /// <summary>Creates an engine on the requested backend (and device, when <see cref="EngineOptions.Device"/> names one).</summary>
    /// <exception cref="BackendUnavailableException">The backend or device asked for is not present or does not run the kernels; the message says why.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// An unknown backend or precision, a thread count outside 0 to <see cref="EngineOptions.MaxCpuThreads"/>, or simulator warps outside 1 to 32.
    /// </exception>
    /// <exception cref="ArgumentException">A device named for a backend that takes none.</exception>
    public static Engine Create(EngineOptions? options = null)
    {
        options ??= new EngineOptions();
        if (options.CpuThreads < 0 || options.CpuThreads > EngineOptions.MaxCpuThreads)
        {
            throw new ArgumentOutOfRangeException(nameof(options.CpuThreads),
                $"CpuThreads is {options.CpuThreads}; it must be 0 (every processor) to {EngineOptions.MaxCpuThreads} (4 × {Environment.ProcessorCount} processors)");
        }
        ArgumentOutOfRangeException.ThrowIfLessThan(options.SimulatorWarpsPerGroup, 1, nameof(options.SimulatorWarpsPerGroup));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.SimulatorWarpsPerGroup, 32, nameof(options.SimulatorWarpsPerGroup));
        if (!Enum.IsDefined(options.WeightPrecision))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.WeightPrecision, "unknown weight precision");
        }
        WeightPrecision precision = options.WeightPrecision;
        if (options.Device is not null && options.Backend is Backend.Cpu or Backend.GpuSimulator)
        {
            throw new ArgumentException($"a device ('{options.Device}') is chosen for GPU backends only; the {options.Backend} backend takes none", nameof(options));
        }
        string reason;
        switch (options.Backend)
        {
            case Backend.Cpu:
                return OpenCpu(options, "cpu: asked for");
            case Backend.GpuSimulator:
                if (!RuntimeFeature.IsDynamicCodeSupported)
                {
                    throw CpuOnly(options.Backend.ToString());
                }
                GpuDevice simulator = Devices.OpenSimulator(options.SimulatorWarpsPerGroup);
                return OpenGpu(simulator, precision, $"asked for; {simulator.Info.Name}");
            case Backend.Cuda:
            case Backend.OpenCL:
                if (!RuntimeFeature.IsDynamicCodeSupported)
                {
                    throw CpuOnly(options.Backend.ToString());
                }
                GpuApi api = options.Backend == Backend.Cuda ? GpuApi.Cuda : GpuApi.OpenCL;
                GpuDevice? asked = Devices.TryOpen(api, options.Device, out reason, out Exception? failure);
                return asked is null
                    ? throw new BackendUnavailableException($"{options.Backend} is not available: {reason}", failure)
                    : OpenGpu(asked, precision, $"asked for; {reason}");
            case Backend.Auto:
                if (!RuntimeFeature.IsDynamicCodeSupported)
                {
                    return options.Device is null ? OpenCpu(options, $"cpu: {CpuOnlyReason}") : throw CpuOnly($"device '{options.Device}'");
                }
                if (options.Device is not null)
                {
                    DeviceInfo named = Devices.Find(options.Device, null, out reason)
                        ?? throw new BackendUnavailableException($"device '{options.Device}' is not available: {reason}");
                    GpuDevice? chosen = Devices.TryOpen(named, out reason, out Exception? refused);
                    return chosen is null ? throw new BackendUnavailableException(reason, refused) : OpenGpu(chosen, precision, $"device '{options.Device}' asked for; {reason}");
                }
                return OpenBest(options, precision);
            default:
                throw new ArgumentOutOfRangeException(nameof(options), options.Backend, "unknown backend");
        }
    }

    /// <summary>
    /// Why code compiled ahead of time (NativeAOT, where <see cref="RuntimeFeature.IsDynamicCodeSupported"/> is false)
    /// has no GPU backend: ILGPU compiles the kernels at run time. Each GPU path tests that property itself, so the
    /// AOT compiler sees the constant and leaves ILGPU's code generation out.
    /// </summary>
    internal const string CpuOnlyReason = "this build of the engine is compiled ahead of time (NativeAOT) and is CPU-only, since the GPU backends "
        + "compile their kernels at run time; for GPUs use the hosted libmoerging.so (artifacts/native, 'dotnet cake --target=Native'), "
        + "which runs on the .NET runtime";

    private static BackendUnavailableException CpuOnly(string what) => new($"{what} is not available: {CpuOnlyReason}");

    /// <summary>CUDA, then an OpenCL GPU, then the CPU backend, which beats any OpenCL driver that runs on the CPU.</summary>
    private static Engine OpenBest(EngineOptions options, WeightPrecision precision)
    {
        if (!Devices.MayHaveGpu(out string noGpu))
        {
            return OpenCpu(options, $"cpu: {noGpu}");
        }
        GpuDevice? cuda = Devices.TryOpen(GpuApi.Cuda, out string noCuda);
        if (cuda is not null)
        {
            return OpenGpu(cuda, precision, noCuda);
        }
        var skipped = new List<string>();
        foreach (DeviceInfo device in Devices.List().Where(d => d.Api == GpuApi.OpenCL))
        {
            if (device.Kind != DeviceKind.Gpu)
            {
                skipped.Add(Devices.NotAGpu(device.Name, device.Kind));
                continue;
            }
            GpuDevice? openCL = Devices.TryOpen(device, out string reason);
            if (openCL is not null)
            {
                return OpenGpu(openCL, precision, $"{noCuda}; {reason}");
            }
            skipped.Add(reason);
        }
        string noOpenCL = skipped.Count > 0 ? Devices.NoUsableOpenCLGpu(skipped) : Devices.Missing(GpuApi.OpenCL) ?? "no OpenCL GPU";
        return OpenCpu(options, $"cpu: {noCuda}; {noOpenCL}");
    }

    private static Engine OpenCpu(EngineOptions options, string reason) =>
        new(Backend.Cpu, reason, new CpuBackend(options.CpuThreads == 0 ? Environment.ProcessorCount : options.CpuThreads, options.WeightPrecision),
            options.WeightPrecision);

    private static Engine OpenGpu(GpuDevice device, WeightPrecision precision, string reason)
    {
        Backend backend = device.Api switch
        {
            GpuApi.Cuda => Backend.Cuda,
            GpuApi.OpenCL => Backend.OpenCL,
            _ => Backend.GpuSimulator,
        };
        return new Engine(backend, $"{backend.ToString().ToLowerInvariant()}: {reason}", new GpuBackend(device, precision), precision);
    }

    /// <summary>
    /// Frees the engine's copy of <paramref name="module"/>'s experts now: a GPU engine uploads them on first use, and a
    /// CPU engine packs each expert's A and Bᵀ into its kernels' panels the first time a forward runs it (at its
    /// <see cref="WeightPrecision"/>, converting where the library holds another). Later forwards make
    /// the copies again as they run the experts. Waits for the
    /// work every session has queued; must not run while another thread forwards at the module. Also frees the copies
    /// of modules and routers the host no longer holds, which otherwise go when something new is copied. False when
    /// the engine held no copy of it.
    /// </summary>
    public bool Release(AdaptedModule module)
    {
        ArgumentNullException.ThrowIfNull(module);
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Implementation.Release(module);
    }

    /// <summary>
    /// Frees the engine's copy of a linear router's prototypes now (a GPU's upload; a CPU engine's packed copy),
    /// as <see cref="Release(AdaptedModule)"/> does for a module.
    /// </summary>
    public bool Release(LinearRouter router)
    {
        ArgumentNullException.ThrowIfNull(router);
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Implementation.Release(router);
    }

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
            Implementation.Dispose();
        }
    }
}
