using System.Globalization;
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace MoErging.Kernels;

/// <summary>Lists the devices this machine's drivers report, opens them, or says precisely why one cannot be opened.</summary>
public static class Devices
{
    internal static readonly object Gate = new();
    private static readonly Dictionary<string, OpenDevice> Opened = [];
    private static DeviceList? _list;

    static Devices() => DriverLibraries.Install();

    /// <summary>
    /// Every CUDA and OpenCL device the drivers report, CUDA first; listed once per process. A listed device
    /// may still be unusable: <see cref="Check"/> says whether the engine runs on it.
    /// </summary>
    public static IReadOnlyList<DeviceInfo> List() => Listing().Devices;

    /// <summary>Why an API has no device in <see cref="List"/> (no driver, or a driver that reports none), or null when it has some.</summary>
    public static string? Missing(GpuApi api) => api switch
    {
        GpuApi.Cuda => Listing().NoCuda,
        GpuApi.OpenCL => Listing().NoOpenCL,
        _ => null,
    };

    /// <summary>
    /// Opens the device and compiles every kernel on it: true when the engine runs there, with how the kernels run
    /// (<see cref="KernelSet.Layout"/>) in <paramref name="report"/>; false with exactly why not.
    /// </summary>
    public static bool Check(DeviceInfo device, out string report)
    {
        using GpuDevice? open = TryOpen(device, out report);
        if (open is not null)
        {
            report = open.Kernels.Layout;
        }
        return open is not null;
    }

    /// <summary>
    /// Whether this machine may have a GPU the engine can use, answered without starting ILGPU: true when a CUDA
    /// driver is installed or an OpenCL driver reports a GPU device (or cannot be asked), false with the reason.
    /// The automatic backend choice asks this first, so a machine with no GPU opens its CPU engine at once.
    /// </summary>
    public static bool MayHaveGpu(out string reason)
    {
        reason = "";
        if (DriverLibraries.HasCuda())
        {
            return true;
        }
        List<(string Name, DeviceKind Kind)>? openCL = DriverLibraries.HasOpenCL() ? OpenCLProbe.Devices() : [];
        if (openCL is null || openCL.Any(d => d.Kind == DeviceKind.Gpu))
        {
            return true;
        }
        string noOpenCL = !DriverLibraries.HasOpenCL() ? NoOpenCLLoader
            : openCL.Count == 0 ? NoOpenCLDevice
            : NoUsableOpenCLGpu(openCL.Select(d => NotAGpu(d.Name, d.Kind)));
        reason = $"{NoCudaDriver}; {noOpenCL}";
        return false;
    }

    /// <summary>Why a listed device that is not a GPU is passed over by the automatic choice.</summary>
    public static string NotAGpu(string name, DeviceKind kind) => kind == DeviceKind.Cpu ? $"{name} runs on the CPU" : $"{name} is not a GPU";

    /// <summary>That OpenCL has devices but none the automatic choice takes, with why each was passed over.</summary>
    public static string NoUsableOpenCLGpu(IEnumerable<string> skipped) => $"no usable OpenCL GPU ({string.Join("; ", skipped)})";

    private const string NoCudaDriver = $"no CUDA driver found (looked for {DriverLibraries.CudaLookedFor})";
    private const string NoOpenCLLoader = $"no OpenCL ICD loader found (looked for {DriverLibraries.OpenCLLookedFor})";
    private const string NoOpenCLDevice = "the OpenCL ICD loader reports no platform with a device (is a driver installed? rusticl needs RUSTICL_ENABLE)";

    /// <summary>Opens the first usable device of an API (for OpenCL, GPUs before other devices), or returns null with the reason.</summary>
    public static GpuDevice? TryOpen(GpuApi api, out string reason) => TryOpen(api, null, out reason);

    /// <summary>
    /// Opens a device of an API: <paramref name="device"/> is an index from <see cref="List"/> or a case-insensitive
    /// part of a device's name, platform or vendor that names one device; null takes the first usable one (for OpenCL,
    /// GPUs before other devices). Returns null with the reason when there is none, or it does not open.
    /// </summary>
    public static GpuDevice? TryOpen(GpuApi api, string? device, out string reason) => TryOpen(api, device, out reason, out _);

    /// <inheritdoc cref="TryOpen(GpuApi, string?, out string)"/>
    /// <param name="api">The API.</param>
    /// <param name="device">An index, a part of a name, or null.</param>
    /// <param name="reason">Which device opened, or why none did.</param>
    /// <param name="failure">The driver's or compiler's exception behind the first refusal, if one was thrown.</param>
    public static GpuDevice? TryOpen(GpuApi api, string? device, out string reason, out Exception? failure)
    {
        failure = null;
        if (api == GpuApi.CpuSimulator)
        {
            reason = "ILGPU's CPU accelerator (warp 32, one warp per group)";
            return OpenSimulator(1);
        }
        if (device is not null)
        {
            DeviceInfo? chosen = Find(device, api, out reason);
            return chosen is null ? null : TryOpen(chosen, out reason, out failure);
        }
        List<DeviceInfo> candidates = List().Where(d => d.Api == api).OrderBy(d => d.Kind == DeviceKind.Gpu ? 0 : 1).ToList();
        if (candidates.Count == 0)
        {
            reason = Missing(api) ?? $"no {api} device found";
            return null;
        }
        var refusals = new List<string>();
        foreach (DeviceInfo candidate in candidates)
        {
            GpuDevice? open = TryOpen(candidate, out reason, out Exception? refused);
            if (open is not null)
            {
                failure = null;
                return open;
            }
            refusals.Add(reason);
            failure ??= refused;
        }
        reason = string.Join("; ", refusals);
        return null;
    }

    /// <summary>Opens a listed device, compiling every kernel on it, or returns null with the reason (the driver's own error included).</summary>
    public static GpuDevice? TryOpen(DeviceInfo device, out string reason) => TryOpen(device, out reason, out _);

    /// <inheritdoc cref="TryOpen(DeviceInfo, out string)"/>
    /// <param name="device">A device from <see cref="List"/>.</param>
    /// <param name="reason">That it opened, or why not.</param>
    /// <param name="failure">The driver's or compiler's exception when it did not open.</param>
    public static GpuDevice? TryOpen(DeviceInfo device, out string reason, out Exception? failure)
    {
        ArgumentNullException.ThrowIfNull(device);
        failure = null;
        string key = $"{device.Api}:{device.Ordinal}:{device.Platform}:{device.Name}";
        try
        {
            GpuDevice open = Hold(key, () => device.Api switch
            {
                GpuApi.Cuda => OpenCuda(key, device),
                GpuApi.OpenCL => OpenOpenCL(key, device),
                _ => throw new ArgumentOutOfRangeException(nameof(device), device.Api, "not a listed API"),
            });
            reason = $"{device.Api} device {device.Index}: {device.Name}";
            return open;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Driver and compiler failures surface here: report them instead of letting them escape.
            reason = $"{device.Api} device {device.Index} ({device.Name}) could not be used: {Describe(e)}";
            failure = e;
            return null;
        }
    }

    /// <summary>
    /// The GPU kernels on ILGPU's CPU accelerator, configured like an NVIDIA device: warp 32 and
    /// <paramref name="warpsPerGroup"/> warps per group (each simulated thread is an OS thread, so one warp
    /// is fastest; more run the multi-warp code a GPU runs).
    /// </summary>
    public static GpuDevice OpenSimulator(int warpsPerGroup = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(warpsPerGroup, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(warpsPerGroup, 32);
        string key = $"simulator:{warpsPerGroup}";
        return Hold(key, () =>
        {
            var simulated = new CPUDevice(numThreadsPerWarp: 32, numWarpsPerMultiprocessor: warpsPerGroup, numMultiprocessors: 1);
            Context context = Context.Create(b => b.CPU(simulated).EnableAlgorithms().Optimize(Level));
            var info = new DeviceInfo
            {
                Index = -1,
                Api = GpuApi.CpuSimulator,
                Platform = "ILGPU",
                Vendor = "ILGPU",
                Name = $"CPU accelerator (warp 32, {warpsPerGroup} warp{(warpsPerGroup == 1 ? "" : "s")} per group)",
                Kind = DeviceKind.Cpu,
                MemoryBytes = simulated.MemorySize,
            };
            return Open(key, info, context, c => c.CreateCPUAccelerator(0, CPUAcceleratorMode.Parallel));
        });
    }

    /// <summary>
    /// The listed device <paramref name="selector"/> names (an index, or a case-insensitive part of one device's
    /// name, platform or vendor), of <paramref name="api"/> when given; null with the reason when none or several match.
    /// </summary>
    public static DeviceInfo? Find(string selector, GpuApi? api, out string reason)
    {
        ArgumentNullException.ThrowIfNull(selector);
        IReadOnlyList<DeviceInfo> all = List();
        string known = all.Count == 0
            ? $"no device is listed ({Missing(GpuApi.Cuda)}; {Missing(GpuApi.OpenCL)})"
            : "devices: " + string.Join(", ", all.Select(d => $"{d.Index} {d.Name}"));
        DeviceInfo? found;
        if (int.TryParse(selector, NumberStyles.None, CultureInfo.InvariantCulture, out int index))
        {
            found = index < all.Count ? all[index] : null;
            if (found is null)
            {
                reason = $"there is no device {index} ({known})";
                return null;
            }
        }
        else
        {
            List<DeviceInfo> matches = all.Where(d => d.Name.Contains(selector, StringComparison.OrdinalIgnoreCase)
                || d.Platform.Contains(selector, StringComparison.OrdinalIgnoreCase)
                || d.Vendor.Contains(selector, StringComparison.OrdinalIgnoreCase)).ToList();
            if (api is GpuApi wanted && matches.Any(d => d.Api == wanted))
            {
                matches = matches.Where(d => d.Api == wanted).ToList();
            }
            if (matches.Count != 1)
            {
                reason = matches.Count == 0
                    ? $"no device's name contains '{selector}' ({known})"
                    : $"'{selector}' names {matches.Count} devices ({string.Join(", ", matches.Select(d => $"{d.Index} {d.Name}"))}); give its index";
                return null;
            }
            found = matches[0];
        }
        if (api is GpuApi needed && found.Api != needed)
        {
            reason = $"device {found.Index} ({found.Name}) is a {found.Api} device, not {needed}";
            return null;
        }
        reason = "";
        return found;
    }

#if DEBUG
    internal static OptimizationLevel Level => OptimizationLevel.Debug;
#else
    internal static OptimizationLevel Level => OptimizationLevel.O2;
#endif

    private static GpuDevice Hold(string key, Func<OpenDevice> open)
    {
        lock (Gate)
        {
            if (Opened.TryGetValue(key, out OpenDevice? existing) && existing.TryHold())
            {
                return new GpuDevice(existing);
            }
            // Opening compiles the kernels under the lock: a second caller for the same device waits
            // and shares them instead of compiling them twice.
            OpenDevice opened = open();
            Opened[key] = opened;
            return new GpuDevice(opened);
        }
    }

    private static OpenDevice Open(string key, DeviceInfo info, Context context, Func<Context, Accelerator> create)
    {
        Accelerator accelerator;
        try
        {
            accelerator = create(context);
        }
        catch
        {
            context.Dispose(); // a failed open leaks no driver context
            throw;
        }
        return new OpenDevice(key, info, context, accelerator, closed =>
        {
            if (Opened.TryGetValue(closed.Key, out OpenDevice? current) && current == closed)
            {
                Opened.Remove(closed.Key);
            }
        });
    }

    private static OpenDevice OpenCuda(string key, DeviceInfo info)
    {
        Context context = Context.Create(b => b.Cuda().EnableAlgorithms().Optimize(Level));
        return Open(key, info, context, c => c.CreateCudaAccelerator(info.Ordinal));
    }

    private static OpenDevice OpenOpenCL(string key, DeviceInfo info)
    {
        // A context that holds only this device: the same platform and name, the same occurrence of them.
        int occurrence = Occurrence(info), seen = 0;
        Context context = Context.Create(b => b.OpenCL(d =>
            d.PlatformName == info.Platform && d.Name == info.Name && seen++ == occurrence).EnableAlgorithms().Optimize(Level));
        return Open(key, info, context, c =>
        {
            CLDevice device = c.GetCLDevices().Count == 1
                ? c.GetCLDevice(0)
                : throw new InvalidOperationException($"the OpenCL driver no longer reports '{info.Name}' on platform '{info.Platform}'");
            GenericAddressSpace.Allow(device);
            return device.CreateCLAccelerator(c);
        });
    }

    /// <summary>How many listed devices before this one share its platform and name.</summary>
    private static int Occurrence(DeviceInfo info) =>
        List().Count(d => d.Api == GpuApi.OpenCL && d.Index < info.Index && d.Platform == info.Platform && d.Name == info.Name);

    private static string Describe(Exception e)
    {
        string text = e.Message;
        if (e is CLException cl && !text.Contains(cl.Error.ToString(), StringComparison.Ordinal))
        {
            text = $"the OpenCL driver answered {cl.Error} ({(int)cl.Error})";
        }
        else if (e is CudaException cuda && !text.Contains(cuda.Error, StringComparison.Ordinal))
        {
            text = $"the CUDA driver answered {cuda.Error}: {text}";
        }
        if (e is not KernelCompilationException && e.InnerException is Exception inner)
        {
            text += $" ({inner.Message})";
        }
        return text;
    }

    private static DeviceList Listing()
    {
        lock (Gate)
        {
            return _list ??= DeviceList.Enumerate();
        }
    }

    private sealed record DeviceList(IReadOnlyList<DeviceInfo> Devices, string? NoCuda, string? NoOpenCL)
    {
        public static DeviceList Enumerate()
        {
            var devices = new List<DeviceInfo>();
            string? noCuda = null, noOpenCL = null;
            if (!DriverLibraries.HasCuda())
            {
                noCuda = NoCudaDriver;
            }
            else
            {
                try
                {
                    using Context context = Context.Create(b => b.Cuda());
                    var cuda = context.GetCudaDevices();
                    for (int i = 0; i < cuda.Count; i++)
                    {
                        devices.Add(new DeviceInfo
                        {
                            Index = devices.Count, Api = GpuApi.Cuda, Platform = "CUDA", Vendor = "NVIDIA", Name = cuda[i].Name,
                            Kind = DeviceKind.Gpu, MemoryBytes = cuda[i].MemorySize, Ordinal = i,
                        });
                    }
                    noCuda = cuda.Count == 0 ? "a CUDA driver is installed but reports no device this ILGPU version supports" : null;
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    noCuda = $"the CUDA driver could not list its devices: {e.Message}";
                }
            }
            if (!DriverLibraries.HasOpenCL())
            {
                noOpenCL = NoOpenCLLoader;
            }
            else
            {
                try
                {
                    using Context context = Context.Create(b => b.OpenCL(_ => true));
                    var cl = context.GetCLDevices();
                    for (int i = 0; i < cl.Count; i++)
                    {
                        devices.Add(new DeviceInfo
                        {
                            Index = devices.Count, Api = GpuApi.OpenCL, Platform = cl[i].PlatformName, Vendor = cl[i].VendorName, Name = cl[i].Name,
                            Kind = OpenCLProbe.Kind((ulong)cl[i].DeviceType), MemoryBytes = cl[i].MemorySize, Ordinal = i,
                        });
                    }
                    noOpenCL = cl.Count == 0 ? NoOpenCLDevice : null;
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    noOpenCL = $"the OpenCL driver could not list its devices: {e.Message}";
                }
            }
            return new DeviceList(devices, noCuda, noOpenCL);
        }
    }
}

/// <summary>
/// ILGPU 1.5.3 refuses every OpenCL device that does not report generic address space support (the
/// <c>CLAccelerator</c> constructor throws), which rules out PoCL, Mesa's rusticl and NVIDIA's OpenCL, though only
/// kernels that use generic pointers need it. Ours use none: no atomics, no dynamic shared memory, every view in a
/// named address space. So the engine sets ILGPU's flag, which has an internal setter, here and only here, and then
/// accepts the device only if every kernel compiles on it (a kernel that did need generic pointers would fail to
/// build there, with the driver's log in the reason). A test fails if a new ILGPU version changes this.
/// </summary>
internal static class GenericAddressSpace
{
    private static readonly MethodInfo? Setter = typeof(CLCapabilityContext)
        .GetProperty(nameof(CLCapabilityContext.GenericAddressSpace))?.GetSetMethod(nonPublic: true);

    /// <summary>Marks the device as supporting generic address space, so ILGPU opens it.</summary>
    public static void Allow(CLDevice device)
    {
        if (device.Capabilities.GenericAddressSpace)
        {
            return;
        }
        if (Setter is null)
        {
            throw new NotSupportedException(
                $"this ILGPU version ({typeof(Context).Assembly.GetName().Version}) has no settable CLCapabilityContext.GenericAddressSpace; " +
                "the engine cannot open OpenCL devices without generic address space support");
        }
        Setter.Invoke(device.Capabilities, [true]);
    }
}
