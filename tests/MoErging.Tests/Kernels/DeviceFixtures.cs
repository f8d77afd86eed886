using ILGPU;
using ILGPU.Runtime;
using MoErging.Kernels;

[assembly: AssemblyFixture(typeof(MoErging.Tests.Kernels.SharedDevices))]

namespace MoErging.Tests.Kernels;

/// <summary>
/// The test devices: the CPU simulator in two shapes, the two OpenCL drivers CI installs (Mesa's rusticl on
/// llvmpipe, and PoCL), and CUDA. A device compiles its kernels once per process: <see cref="SharedDevices"/>
/// holds each one open for the whole run, and test classes and engines take holds on it.
/// </summary>
public enum TestDevice
{
    Simulator,
    SimulatorFourWarps,
    Rusticl,
    PoCL,
    Cuda,
}

/// <summary>
/// Opens the test devices once each and keeps them open until the run ends (ILGPU's generated kernel names
/// depend on what the process compiled before, so PoCL's on-disk cache misses across runs; compiling them
/// again per test class would cost seconds each). What the machine has decides whether a device must open:
/// CUDA where its driver library loads, an OpenCL driver where the OpenCL listing has its device, both OpenCL
/// drivers with CI=true (CI installs them), the simulator always. A device that must open and does not fails
/// the tests that need it; one the machine lacks skips them, saying why.
/// </summary>
public sealed class SharedDevices : IDisposable
{
    private static readonly string[] Reasons = new string[Enum.GetValues<TestDevice>().Length];

    private static readonly Lazy<GpuDevice?>[] Devices =
        Enum.GetValues<TestDevice>().Select(d => new Lazy<GpuDevice?>(() => Open(d, out Reasons[(int)d]))).ToArray();

    public SharedDevices() => KernelAssertions.Install();

    /// <summary>The OpenCL device (as <see cref="MoErging.Kernels.Devices.Find"/> takes it) each driver's tests use.</summary>
    public static string? Selector(TestDevice device) => device switch
    {
        TestDevice.Rusticl => "rusticl",
        TestDevice.PoCL => "pocl",
        _ => null,
    };

    /// <summary>A hold on the shared device; where there is none, a failure if this machine should have it (see <see cref="Expected"/>), else a skip, stating why.</summary>
    public static GpuDevice Hold(TestDevice device)
    {
        GpuDevice? open = Devices[(int)device].Value;
        if (open is null)
        {
            Unavailable(device, Reasons[(int)device]);
        }
        GpuDevice? hold = device switch
        {
            TestDevice.Simulator => MoErging.Kernels.Devices.OpenSimulator(1),
            TestDevice.SimulatorFourWarps => MoErging.Kernels.Devices.OpenSimulator(4),
            _ => MoErging.Kernels.Devices.TryOpen(open!.Info, out _),
        };
        return hold ?? throw new InvalidOperationException($"{device} opened once and then not again");
    }

    /// <summary>Fails where this machine should have the device, else skips; either way saying why it did not open.</summary>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public static void Unavailable(TestDevice device, string reason)
    {
        if (Expected(device) is string why)
        {
            Assert.Fail($"{device} should open here ({why}), but it did not: {reason}");
        }
        Assert.Skip($"no device: {reason}");
        throw new InvalidOperationException("unreachable");
    }

    /// <summary>True where CI runs the tests (CI=true): it installs both OpenCL drivers.</summary>
    public static bool InCI => Environment.GetEnvironmentVariable("CI") == "true";

    /// <summary>
    /// Why this machine should open the device, or null where it lacks it: the CUDA driver library, or the one OpenCL
    /// device in the listing that the driver's <see cref="Selector"/> names.
    /// </summary>
    public static string? Expected(TestDevice device) => device switch
    {
        TestDevice.Simulator or TestDevice.SimulatorFourWarps => "the simulator needs no driver",
        TestDevice.Cuda => DriverLibraries.HasCuda() ? $"a CUDA driver library, one of {DriverLibraries.CudaLookedFor}, loads" : null,
        _ when InCI => "CI installs it (CI=true)",
        _ => MoErging.Kernels.Devices.Find(Selector(device)!, GpuApi.OpenCL, out _) is DeviceInfo listed
            ? $"the OpenCL listing has {listed.Name}"
            : null,
    };

    public void Dispose()
    {
        foreach (Lazy<GpuDevice?> device in Devices)
        {
            if (device.IsValueCreated)
            {
                device.Value?.Dispose();
            }
        }
    }

    private static GpuDevice? Open(TestDevice device, out string reason)
    {
        switch (device)
        {
            case TestDevice.Simulator:
                reason = "";
                return MoErging.Kernels.Devices.OpenSimulator(1);
            case TestDevice.SimulatorFourWarps:
                reason = "";
                return MoErging.Kernels.Devices.OpenSimulator(4);
            case TestDevice.Cuda:
                return MoErging.Kernels.Devices.TryOpen(GpuApi.Cuda, out reason);
            default:
                GpuDevice? open = MoErging.Kernels.Devices.TryOpen(GpuApi.OpenCL, Selector(device), out reason);
                if (open is null && Environment.GetEnvironmentVariable("RUSTICL_ENABLE") is null && device == TestDevice.Rusticl)
                {
                    reason += " (rusticl lists its llvmpipe device only with RUSTICL_ENABLE=llvmpipe; the Cake Test target sets it)";
                }
                return open;
        }
    }
}

/// <summary>
/// What the simulator's kernels asserted. On ILGPU's CPU accelerator a view's <c>AsAligned</c> checks the real
/// address (x86 itself would not notice a misaligned vector load, a GPU faults) and an index checks its bounds,
/// both through <see cref="System.Diagnostics.Trace.Assert(bool, string)"/>; a failure there would end the
/// process from a worker thread, so this listener records it instead, and the kernel tests assert that
/// nothing was recorded during their launches.
/// </summary>
public sealed class KernelAssertions : System.Diagnostics.TraceListener
{
    private static readonly System.Collections.Concurrent.ConcurrentQueue<string> Failures = new();
    private static int _installed;

    public static void Install()
    {
        if (Interlocked.Exchange(ref _installed, 1) == 0)
        {
            System.Diagnostics.Trace.Listeners.Clear();
            System.Diagnostics.Trace.Listeners.Add(new KernelAssertions());
        }
    }

    /// <summary>The failures recorded since the last call, emptied.</summary>
    public static string[] Take()
    {
        var taken = new List<string>();
        while (Failures.TryDequeue(out string? failure))
        {
            taken.Add(failure);
        }
        return [.. taken];
    }

    /// <summary>Fails, listing them, if any kernel assertion failed since the last check.</summary>
    public static void AssertNone(string where)
    {
        string[] failures = Take();
        Assert.True(failures.Length == 0, $"{where}: kernel assertions failed: {string.Join("; ", failures.Distinct())}");
    }

    public override void Fail(string? message, string? detailMessage) => Failures.Enqueue(message ?? "(no message)");

    public override void Write(string? message)
    {
    }

    public override void WriteLine(string? message)
    {
    }
}

/// <summary>One hold on a shared device per test class.</summary>
public abstract class DeviceFixture(TestDevice device) : IDisposable
{
    private GpuDevice? _device;

    /// <summary>The device, or a skip that states why there is none.</summary>
    public GpuDevice Device => _device ??= SharedDevices.Hold(device);

    public void Dispose() => _device?.Dispose();
}

/// <summary>ILGPU's CPU accelerator configured like an NVIDIA device (warp 32, one warp per group): CI runs these.</summary>
public sealed class SimulatorFixture() : DeviceFixture(TestDevice.Simulator);

/// <summary>The simulator with four warps per group: the multi-warp code a GPU runs.</summary>
public sealed class FourWarpSimulatorFixture() : DeviceFixture(TestDevice.SimulatorFourWarps);

/// <summary>Mesa's rusticl on llvmpipe: a real OpenCL compiler and runtime, strict on argument sizes, no fp64.</summary>
public sealed class RusticlFixture() : DeviceFixture(TestDevice.Rusticl);

/// <summary>PoCL's CPU device: a second real OpenCL compiler and runtime.</summary>
public sealed class PoclFixture() : DeviceFixture(TestDevice.PoCL);

/// <summary>The first CUDA device; the tests fail where the CUDA driver loads and it does not open, and skip, saying why, where there is no driver.</summary>
public sealed class CudaFixture() : DeviceFixture(TestDevice.Cuda);

/// <summary>Buffers and launches for the kernel tests.</summary>
public static class DeviceIo
{
    public static MemoryBuffer1D<T, Stride1D.Dense> Upload<T>(Accelerator accelerator, T[] values) where T : unmanaged =>
        accelerator.Allocate1D(values.Length == 0 ? new T[1] : values);

    /// <summary>A buffer filled with a poison value, so an element the kernel should write and did not shows up.</summary>
    public static MemoryBuffer1D<T, Stride1D.Dense> Poisoned<T>(Accelerator accelerator, long length, T poison) where T : unmanaged
    {
        var values = new T[Math.Max(1, length)];
        Array.Fill(values, poison);
        return accelerator.Allocate1D(values);
    }

    public static ushort[] ToHalfBits(float[] values) => values.Select(HalfBits.FromSingle).ToArray();

    public static float[] FromHalfBits(ushort[] values) => values.Select(HalfBits.ToSingle).ToArray();

    /// <summary>bfloat16 patterns of finite values, rounded to nearest even by the tests' own rounding (<see cref="Narrow"/>), not the engine's.</summary>
    public static BFloat16Bits[] ToBFloat16Bits(float[] values) => values.Select(v => new BFloat16Bits(Narrow.ToBFloat16Bits(v))).ToArray();

    public static float[] FromBFloat16Bits(BFloat16Bits[] values) => values.Select(b => (float)Narrow.BFloat16Value(b.Bits)).ToArray();
}
