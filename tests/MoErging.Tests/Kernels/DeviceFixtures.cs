using ILGPU;
using ILGPU.Runtime;
using MoErging.Kernels;

namespace MoErging.Tests.Kernels;

/// <summary>One device per test class: opened once, or the reason it could not be.</summary>
public abstract class DeviceFixture : IDisposable
{
    private readonly GpuDevice? _device;
    private readonly string _reason;

    protected DeviceFixture(GpuApi api) => _device = Devices.TryOpen(api, out _reason);

    /// <summary>The device, or a skip that states why there is none.</summary>
    public GpuDevice Device => _device ?? throw SkipNoDevice();

    public void Dispose() => _device?.Dispose();

    private Exception SkipNoDevice()
    {
        Assert.Skip($"no device: {_reason}");
        return new InvalidOperationException("unreachable");
    }
}

/// <summary>ILGPU's CPU accelerator configured like an NVIDIA device (warp 32): CI runs these.</summary>
public sealed class SimulatorFixture() : DeviceFixture(GpuApi.CpuSimulator);

/// <summary>The first CUDA device; the tests skip, saying why, where there is none.</summary>
public sealed class CudaFixture() : DeviceFixture(GpuApi.Cuda);

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
}
