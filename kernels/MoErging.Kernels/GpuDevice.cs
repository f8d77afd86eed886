using ILGPU;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>The GPU APIs the kernels run on through ILGPU.</summary>
public enum GpuApi
{
    /// <summary>NVIDIA CUDA.</summary>
    Cuda,

    /// <summary>OpenCL: any device whose driver compiles the portable kernels (OpenCL 2.0 or 3.0 drivers; see the README).</summary>
    OpenCL,

    /// <summary>ILGPU's CPU accelerator, configured like an NVIDIA device (warp 32): slow, for tests.</summary>
    CpuSimulator,
}

/// <summary>What kind of processor a device is, as its driver reports it.</summary>
public enum DeviceKind
{
    /// <summary>A GPU.</summary>
    Gpu,

    /// <summary>A CPU behind a GPU API (for example an OpenCL driver that runs on the CPU).</summary>
    Cpu,

    /// <summary>Anything else (an accelerator card, or a type the driver does not name).</summary>
    Other,
}

/// <summary>A device this machine's drivers report, as <see cref="Devices.List"/> numbers it.</summary>
public sealed record DeviceInfo
{
    /// <summary>The device's number: CUDA devices first, then OpenCL devices in platform order.</summary>
    public required int Index { get; init; }

    /// <summary>The API it is reached through.</summary>
    public required GpuApi Api { get; init; }

    /// <summary>"CUDA", or the OpenCL platform's name.</summary>
    public required string Platform { get; init; }

    /// <summary>The platform's vendor ("NVIDIA", or the OpenCL platform's vendor, such as "The pocl project").</summary>
    public required string Vendor { get; init; }

    /// <summary>The device's name as the driver reports it.</summary>
    public required string Name { get; init; }

    /// <summary>GPU, CPU or other.</summary>
    public required DeviceKind Kind { get; init; }

    /// <summary>Device memory in bytes.</summary>
    public required long MemoryBytes { get; init; }

    /// <summary>Its position among its API's devices, as ILGPU enumerates them.</summary>
    internal int Ordinal { get; init; }

    /// <inheritdoc />
    public override string ToString() => $"{Index}: {Api} {Platform}: {Name}";
}

/// <summary>
/// An open device with its compiled kernels. Opening a device that is already open in this process shares its
/// accelerator and kernels (compiling them takes from milliseconds to seconds); each <see cref="GpuDevice"/> is
/// one hold on it, and the device is released when the last one is disposed.
/// </summary>
public sealed class GpuDevice : IDisposable
{
    private readonly OpenDevice _open;
    private int _disposed;

    internal GpuDevice(OpenDevice open) => _open = open;

    /// <summary>The ILGPU accelerator.</summary>
    public Accelerator Accelerator => _open.Accelerator;

    /// <summary>Which API it runs on.</summary>
    public GpuApi Api => _open.Info.Api;

    /// <summary>The device as listed (the simulator has index -1).</summary>
    public DeviceInfo Info => _open.Info;

    /// <summary>The compiled kernels, loaded once per device.</summary>
    public KernelSet Kernels => _open.Kernels;

    /// <summary>The device's name as the driver reports it.</summary>
    public string Name => _open.Accelerator.Name;

    /// <inheritdoc />
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _open.Release();
        }
    }
}

/// <summary>One opened accelerator with its context and kernels, shared by every <see cref="GpuDevice"/> hold on it.</summary>
internal sealed class OpenDevice
{
    private readonly Context _context;
    private readonly Action<OpenDevice> _closed;
    private int _holds = 1;

    /// <summary>Compiles every kernel on the accelerator; on failure, releases what was opened and rethrows.</summary>
    public OpenDevice(string key, DeviceInfo info, Context context, Accelerator accelerator, Action<OpenDevice> closed)
    {
        Key = key;
        Info = info;
        _context = context;
        Accelerator = accelerator;
        _closed = closed;
        try
        {
            Kernels = new KernelSet(accelerator);
        }
        catch
        {
            accelerator.Dispose();
            context.Dispose();
            throw;
        }
    }

    public string Key { get; }

    public DeviceInfo Info { get; }

    public Accelerator Accelerator { get; }

    public KernelSet Kernels { get; }

    /// <summary>Adds a hold; false once the device has closed (the caller opens it anew).</summary>
    public bool TryHold()
    {
        if (_holds == 0)
        {
            return false;
        }
        _holds++;
        return true;
    }

    public void Release()
    {
        lock (Devices.Gate)
        {
            if (--_holds > 0)
            {
                return;
            }
            _closed(this);
        }
        Accelerator.Dispose();
        _context.Dispose();
    }
}
