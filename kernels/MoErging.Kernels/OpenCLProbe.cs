using System.Runtime.InteropServices;
using System.Text;

namespace MoErging.Kernels;

/// <summary>
/// Asks the OpenCL ICD loader for its devices' names and kinds directly, without ILGPU: starting an ILGPU context
/// costs about 100 ms before any driver is asked (bench/RESULTS.md), which the engine's automatic backend choice
/// should not pay on a machine whose OpenCL drivers (PoCL, rusticl on llvmpipe) run on the CPU and would never be used.
/// </summary>
internal static unsafe class OpenCLProbe
{
    private const int Success = 0;
    private const int DeviceNotFound = -1;
    private const int PlatformNotFound = -1001; // CL_PLATFORM_NOT_FOUND_KHR: the ICD loader found no driver
    private const ulong AllDevices = 0xFFFFFFFF;
    private const uint DeviceType = 0x1000, DeviceName = 0x102B;

    /// <summary>
    /// Every OpenCL device the drivers report, as (name, kind); null when the loader is absent or a query failed
    /// (then only ILGPU's own listing can say why).
    /// </summary>
    public static List<(string Name, DeviceKind Kind)>? Devices()
    {
        // Never freed: ILGPU loads the same loader later, and unloading it after the drivers started is unsafe.
        IntPtr loader = DriverLibraries.LoadOpenCL();
        if (loader == IntPtr.Zero
            || !NativeLibrary.TryGetExport(loader, "clGetPlatformIDs", out IntPtr platformsExport)
            || !NativeLibrary.TryGetExport(loader, "clGetDeviceIDs", out IntPtr devicesExport)
            || !NativeLibrary.TryGetExport(loader, "clGetDeviceInfo", out IntPtr infoExport))
        {
            return null;
        }
        var getPlatforms = (delegate* unmanaged<uint, IntPtr*, uint*, int>)platformsExport;
        var getDevices = (delegate* unmanaged<IntPtr, ulong, uint, IntPtr*, uint*, int>)devicesExport;
        var getInfo = (delegate* unmanaged<IntPtr, uint, nuint, void*, nuint*, int>)infoExport;

        uint platformCount = 0;
        int status = getPlatforms(0, null, &platformCount);
        if (status == PlatformNotFound || (status == Success && platformCount == 0))
        {
            return [];
        }
        if (status != Success)
        {
            return null;
        }
        var platforms = new IntPtr[platformCount];
        fixed (IntPtr* p = platforms)
        {
            if (getPlatforms(platformCount, p, &platformCount) != Success)
            {
                return null;
            }
        }
        var found = new List<(string, DeviceKind)>();
        byte* name = stackalloc byte[256];
        foreach (IntPtr platform in platforms.AsSpan(0, (int)Math.Min(platformCount, (uint)platforms.Length)))
        {
            uint count = 0;
            status = getDevices(platform, AllDevices, 0, null, &count);
            if (status == DeviceNotFound)
            {
                continue;
            }
            if (status != Success)
            {
                return null;
            }
            if (count == 0)
            {
                continue;
            }
            var devices = new IntPtr[count];
            fixed (IntPtr* d = devices)
            {
                if (getDevices(platform, AllDevices, count, d, &count) != Success)
                {
                    return null;
                }
            }
            foreach (IntPtr device in devices.AsSpan(0, (int)Math.Min(count, (uint)devices.Length)))
            {
                ulong type = 0;
                nuint length = 0;
                if (getInfo(device, DeviceType, sizeof(ulong), &type, null) != Success
                    || getInfo(device, DeviceName, 256, name, &length) != Success)
                {
                    return null;
                }
                int text = (int)Math.Min(length, 256u);
                found.Add((Encoding.UTF8.GetString(name, text).TrimEnd('\0'), Kind(type)));
            }
        }
        return found;
    }

    /// <summary>The kind of a <c>cl_device_type</c> bit set, as ILGPU's listing reports it.</summary>
    public static DeviceKind Kind(ulong type) =>
        (type & 4) != 0 ? DeviceKind.Gpu // CL_DEVICE_TYPE_GPU
        : (type & 2) != 0 ? DeviceKind.Cpu // CL_DEVICE_TYPE_CPU
        : DeviceKind.Other;
}
