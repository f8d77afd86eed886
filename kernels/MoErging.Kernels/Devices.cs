using System.Reflection;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Backends.OpenCL;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace MoErging.Kernels;

/// <summary>The GPU APIs the kernels run on through ILGPU.</summary>
public enum GpuApi
{
    /// <summary>NVIDIA CUDA.</summary>
    Cuda,

    /// <summary>OpenCL 2.0 with generic address space support (ILGPU's requirement).</summary>
    OpenCL,

    /// <summary>ILGPU's CPU accelerator, configured like an NVIDIA device (warp 32, one warp per group): slow, for tests.</summary>
    CpuSimulator,
}

/// <summary>An accelerator with its context and kernels; dispose to release the device.</summary>
public sealed class GpuDevice : IDisposable
{
    private readonly Context _context;

    internal GpuDevice(Context context, Accelerator accelerator, GpuApi api)
    {
        _context = context;
        Accelerator = accelerator;
        Api = api;
        Kernels = new KernelSet(accelerator);
    }

    /// <summary>The ILGPU accelerator.</summary>
    public Accelerator Accelerator { get; }

    /// <summary>Which API it runs on.</summary>
    public GpuApi Api { get; }

    /// <summary>The compiled kernels, loaded once.</summary>
    public KernelSet Kernels { get; }

    /// <summary>The device's name as the driver reports it.</summary>
    public string Name => Accelerator.Name;

    /// <inheritdoc />
    public void Dispose()
    {
        Accelerator.Dispose();
        _context.Dispose();
    }
}

/// <summary>The kernel families of one accelerator, compiled when the device opens and then reused.</summary>
public sealed class KernelSet
{
    internal KernelSet(Accelerator accelerator)
    {
        Gating = new GatingKernel(accelerator);
        Dispatch = new DispatchKernel(accelerator);
        Shrink = new ShrinkKernel(accelerator);
        Expand = new ExpandKernel(accelerator);
    }

    /// <summary>Scores, top-k and weights.</summary>
    public GatingKernel Gating { get; }

    /// <summary>Grouping by expert.</summary>
    public DispatchKernel Dispatch { get; }

    /// <summary>V = X A_eᵀ per segment.</summary>
    public ShrinkKernel Shrink { get; }

    /// <summary>y += Σ w s B v.</summary>
    public ExpandKernel Expand { get; }
}

/// <summary>Opens accelerators, or says precisely why one cannot be opened.</summary>
public static class Devices
{
    private static readonly string[] CudaDriverNames =
    [
        "libcuda.so", "libcuda.so.1",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1",
        "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
    ];

    private static readonly object ResolverGate = new();
    private static bool _resolverSet;

    /// <summary>Opens the first device of an API, or returns null with the reason.</summary>
    public static GpuDevice? TryOpen(GpuApi api, out string reason)
    {
        try
        {
            return api switch
            {
                GpuApi.Cuda => OpenCuda(out reason),
                GpuApi.OpenCL => OpenOpenCL(out reason),
                _ => OpenCpuSimulator(out reason),
            };
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Driver and compiler failures surface here: report them instead of letting them escape.
            reason = $"{api} could not be started: {e.Message}";
            return null;
        }
    }

    private static GpuDevice? OpenCuda(out string reason)
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Windows) && !TryLoadCudaDriver())
        {
            reason = "no CUDA driver found (looked for libcuda.so and libcuda.so.1)";
            return null;
        }
        InstallCudaResolver();
        Context context = Context.Create(b => b.Cuda().EnableAlgorithms().Optimize(Level));
        if (context.GetCudaDevices().Count == 0)
        {
            context.Dispose();
            reason = "a CUDA driver is installed but reports no device this ILGPU version supports";
            return null;
        }
        CudaAccelerator accelerator = context.CreateCudaAccelerator(0);
        reason = $"CUDA device 0: {accelerator.Name}";
        return new GpuDevice(context, accelerator, GpuApi.Cuda);
    }

    private static GpuDevice? OpenOpenCL(out string reason)
    {
        // List every OpenCL device first, so a device without the required support can be named.
        using (Context all = Context.Create(b => b.OpenCL(_ => true)))
        {
            if (all.GetCLDevices().Count == 0)
            {
                reason = "no OpenCL platform or device found";
                return null;
            }
            CLDevice first = all.GetCLDevice(0);
            bool supported = false;
            foreach (CLDevice device in all.GetCLDevices())
            {
                supported |= device.CLStdVersion >= CLBackend.MinimumVersion && device.Capabilities.GenericAddressSpace;
            }
            if (!supported)
            {
                reason = $"OpenCL device '{first.Name}' (OpenCL C {first.CLStdVersion}) lacks what ILGPU's OpenCL backend needs: OpenCL 2.0 with generic address space support";
                return null;
            }
        }
        Context context = Context.Create(b => b.OpenCL().EnableAlgorithms().Optimize(Level));
        CLAccelerator accelerator = context.CreateCLAccelerator(0);
        reason = $"OpenCL device 0: {accelerator.Name}";
        return new GpuDevice(context, accelerator, GpuApi.OpenCL);
    }

    private static GpuDevice OpenCpuSimulator(out string reason)
    {
        // One warp per group: the accelerator runs every simulated thread of a group on its own OS thread,
        // so small groups keep it fast enough for tests; the kernels adapt their group shapes to it.
        var simulated = new CPUDevice(numThreadsPerWarp: 32, numWarpsPerMultiprocessor: 1, numMultiprocessors: 1);
        Context context = Context.Create(b => b.CPU(simulated).EnableAlgorithms().Optimize(Level));
        CPUAccelerator accelerator = context.CreateCPUAccelerator(0, CPUAcceleratorMode.Parallel);
        reason = "ILGPU's CPU accelerator (warp 32, one warp per group)";
        return new GpuDevice(context, accelerator, GpuApi.CpuSimulator);
    }

#if DEBUG
    private static OptimizationLevel Level => OptimizationLevel.Debug;
#else
    private static OptimizationLevel Level => OptimizationLevel.O2;
#endif

    private static bool TryLoadCudaDriver()
    {
        foreach (string name in CudaDriverNames)
        {
            if (NativeLibrary.TryLoad(name, out IntPtr handle))
            {
                NativeLibrary.Free(handle);
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// ILGPU imports the driver as "cuda", which .NET looks for as libcuda.so; many driver installs ship
    /// only libcuda.so.1. This resolver tries the versioned names too. On WSL, ILGPU installs its own
    /// resolver (an assembly can have only one), so this one stays out of its way there.
    /// </summary>
    private static void InstallCudaResolver()
    {
        lock (ResolverGate)
        {
            if (_resolverSet || IsWsl())
            {
                return;
            }
            try
            {
                NativeLibrary.SetDllImportResolver(typeof(Context).Assembly, ResolveCuda);
            }
            catch (InvalidOperationException)
            {
                // Someone set a resolver already; theirs stands.
            }
            _resolverSet = true;
        }
    }

    private static IntPtr ResolveCuda(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != "cuda")
        {
            return IntPtr.Zero;
        }
        foreach (string name in CudaDriverNames)
        {
            if (NativeLibrary.TryLoad(name, out IntPtr handle))
            {
                return handle;
            }
        }
        return IntPtr.Zero;
    }

    private static bool IsWsl() =>
        Directory.Exists("/usr/lib/wsl/lib") && File.Exists("/proc/version") &&
        File.ReadAllText("/proc/version").Contains("microsoft", StringComparison.OrdinalIgnoreCase);
}
