using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace MoErging.Execution.Gpu;

/// <summary>
/// Host staging for copies to and from the device on one stream: a pinned array, page-locked once with the
/// driver, grown on demand (after the stream has drained) and then reused. Copies are queued without waiting;
/// a caller reads a download after synchronizing the stream, and changes nothing it uploaded before then.
/// </summary>
internal sealed class Staging<T>(Accelerator accelerator, AcceleratorStream stream) : IDisposable where T : unmanaged
{
    private T[] _array = [];
    private PageLockScope<T>? _lock;

    /// <summary>The first <paramref name="length"/> elements.</summary>
    public Span<T> Span(int length)
    {
        if (_array.Length < length)
        {
            stream.Synchronize(); // no queued copy still reads or writes the old array
            _lock?.Dispose();
            _array = GC.AllocateUninitializedArray<T>(Math.Max(1, length), pinned: true);
            try
            {
                _lock = accelerator.CreatePageLockFromPinned(_array);
            }
            catch (NotSupportedException)
            {
                _lock = null; // the accelerator cannot page-lock: copies still work, slower
            }
        }
        return _array.AsSpan(0, length);
    }

    /// <summary>Queues a copy of host values to a device view through the staging array.</summary>
    public void Upload(ReadOnlySpan<T> values, ArrayView<T> destination)
    {
        if (values.IsEmpty)
        {
            return;
        }
        values.CopyTo(Span(values.Length));
        HostCopy.ToDevice(stream, _array, values.Length, destination);
    }

    /// <summary>Queues a device-to-staging copy; read <see cref="Span"/> after the stream has synchronized.</summary>
    public void Download(ArrayView<T> source)
    {
        if (source.Length == 0)
        {
            return;
        }
        Span((int)source.Length);
        HostCopy.ToHost(stream, source, _array);
    }

    public void Dispose() => _lock?.Dispose();
}

/// <summary>
/// Queued copies between a pinned host array and a device view that allocate nothing: ILGPU's own host copies
/// wrap the host memory in a new buffer object every time. On OpenCL and CUDA they call the driver directly;
/// on the CPU simulator they go through ILGPU (which allocates on every launch anyway).
/// </summary>
internal static unsafe class HostCopy
{
    public static void ToDevice<T>(AcceleratorStream stream, T[] pinned, int length, ArrayView<T> destination) where T : unmanaged
    {
        IntPtr host = Address(pinned);
        IntPtr bytes = (IntPtr)((long)length * sizeof(T));
        switch (stream)
        {
            case CLStream:
                CLException.ThrowIfFailed(CLAPI.CurrentAPI.WriteBuffer(stream, Memory(destination), false, Offset(destination), bytes, host));
                break;
            case CudaStream:
                using (stream.Accelerator.BindScoped())
                {
                    CudaException.ThrowIfFailed(CudaAPI.CurrentAPI.MemcpyAsync(Memory(destination) + Offset(destination), host, bytes, stream));
                }
                break;
            default:
                destination.SubView(0, length).CopyFromCPU(stream, ref pinned[0], length);
                break;
        }
    }

    public static void ToHost<T>(AcceleratorStream stream, ArrayView<T> source, T[] pinned) where T : unmanaged
    {
        IntPtr host = Address(pinned);
        IntPtr bytes = (IntPtr)(source.Length * sizeof(T));
        switch (stream)
        {
            case CLStream:
                CLException.ThrowIfFailed(CLAPI.CurrentAPI.ReadBuffer(stream, Memory(source), false, Offset(source), bytes, host));
                break;
            case CudaStream:
                using (stream.Accelerator.BindScoped())
                {
                    CudaException.ThrowIfFailed(CudaAPI.CurrentAPI.MemcpyAsync(host, Memory(source) + Offset(source), bytes, stream));
                }
                break;
            default:
                source.CopyToCPU(stream, ref pinned[0], source.Length);
                break;
        }
    }

    // ILGPU exposes a view's buffer and index through interfaces only; generic constraints reach them without boxing.

    /// <summary>The driver's handle of the view's buffer (a cl_mem, or a CUDA device address).</summary>
    private static IntPtr Memory<TView>(TView view) where TView : struct, IArrayView => view.Buffer.NativePtr;

    /// <summary>The view's start in its buffer, in bytes.</summary>
    private static IntPtr Offset<TView>(TView view) where TView : struct, IContiguousArrayView => (IntPtr)view.IndexInBytes;

    /// <summary>A pinned array's first element: it never moves.</summary>
    private static IntPtr Address<T>(T[] pinned) where T : unmanaged =>
        (IntPtr)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));
}
