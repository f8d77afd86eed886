using System.Reflection;
using System.Runtime.InteropServices;
using ILGPU;

namespace MoErging.Kernels;

/// <summary>
/// Finds the GPU driver libraries ILGPU imports. ILGPU imports "cuda" and "OpenCL", which .NET looks for as
/// libcuda.so and libOpenCL.so; most installs ship only the versioned runtime names (libcuda.so.1 with
/// the driver, libOpenCL.so.1 from the ICD loader package), the unversioned ones being development links.
/// One resolver serves both: an assembly can have only one. On WSL, ILGPU installs its own resolver, so
/// this one stays out of its way there.
/// </summary>
internal static class DriverLibraries
{
    private static readonly string[] CudaNames =
    [
        "libcuda.so", "libcuda.so.1",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1",
        "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
    ];

    private static readonly string[] OpenCLNames =
    [
        "libOpenCL.so", "libOpenCL.so.1",
        "/usr/lib/x86_64-linux-gnu/libOpenCL.so.1", "/usr/lib64/libOpenCL.so.1", "/usr/lib/aarch64-linux-gnu/libOpenCL.so.1",
    ];

    private static readonly object Gate = new();
    private static bool _installed;

    /// <summary>Where the CUDA driver was looked for, for messages.</summary>
    public const string CudaLookedFor = "libcuda.so and libcuda.so.1";

    /// <summary>Where the OpenCL ICD loader was looked for, for messages.</summary>
    public const string OpenCLLookedFor = "libOpenCL.so and libOpenCL.so.1";

    /// <summary>True when the CUDA driver library loads (always true on Windows, where ILGPU finds nvcuda itself).</summary>
    public static bool HasCuda() => RuntimeInformation.IsOSPlatform(OSPlatform.Windows) || CanLoad(CudaNames);

    /// <summary>True when an OpenCL ICD loader loads (always true on Windows, where ILGPU finds OpenCL.dll itself).</summary>
    public static bool HasOpenCL() => RuntimeInformation.IsOSPlatform(OSPlatform.Windows) || CanLoad(OpenCLNames);

    /// <summary>Loads the OpenCL ICD loader and returns its handle (the caller owns it), or zero when there is none.</summary>
    public static IntPtr LoadOpenCL() =>
        RuntimeInformation.IsOSPlatform(OSPlatform.Windows)
            ? NativeLibrary.TryLoad("OpenCL", out IntPtr handle) ? handle : IntPtr.Zero
            : LoadAny(OpenCLNames);

    /// <summary>Installs the resolver on ILGPU's assembly; call before ILGPU touches a driver.</summary>
    public static void Install()
    {
        lock (Gate)
        {
            if (_installed)
            {
                return;
            }
            _installed = true;
            if (RuntimeInformation.IsOSPlatform(OSPlatform.Windows) || IsWsl())
            {
                return;
            }
            try
            {
                NativeLibrary.SetDllImportResolver(typeof(Context).Assembly, Resolve);
            }
            catch (InvalidOperationException)
            {
                // Someone set a resolver already; theirs stands.
            }
        }
    }

    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        string[]? names = libraryName switch
        {
            "cuda" => CudaNames,
            "OpenCL" => OpenCLNames,
            _ => null,
        };
        return names is null ? IntPtr.Zero : LoadAny(names);
    }

    private static IntPtr LoadAny(string[] names)
    {
        foreach (string name in names)
        {
            if (NativeLibrary.TryLoad(name, out IntPtr handle))
            {
                return handle;
            }
        }
        return IntPtr.Zero;
    }

    private static bool CanLoad(string[] names)
    {
        IntPtr handle = LoadAny(names);
        if (handle == IntPtr.Zero)
        {
            return false;
        }
        NativeLibrary.Free(handle);
        return true;
    }

    private static bool IsWsl() =>
        Directory.Exists("/usr/lib/wsl/lib") && File.Exists("/proc/version") &&
        File.ReadAllText("/proc/version").Contains("microsoft", StringComparison.OrdinalIgnoreCase);
}
