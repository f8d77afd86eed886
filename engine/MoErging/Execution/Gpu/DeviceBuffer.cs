using ILGPU;
using ILGPU.Runtime;

namespace MoErging.Execution.Gpu;

/// <summary>A device workspace buffer that grows to the largest length asked for and is then reused.</summary>
internal sealed class DeviceBuffer<T>(Accelerator accelerator) : IDisposable where T : unmanaged
{
    private MemoryBuffer1D<T, Stride1D.Dense>? _buffer;

    /// <summary>The first <paramref name="length"/> elements, reallocating only when the buffer is too small.</summary>
    public ArrayView<T> View(long length)
    {
        if (_buffer is null || _buffer.Length < length)
        {
            _buffer?.Dispose();
            _buffer = accelerator.Allocate1D<T>(Math.Max(1, length));
        }
        return _buffer.View.SubView(0, length);
    }

    public void Dispose() => _buffer?.Dispose();
}

/// <summary>
/// Host staging for copies to and from the device: a pinned array, page-locked once with the driver so
/// the copies run asynchronously, grown on demand and then reused.
/// </summary>
internal sealed class Staging<T>(Accelerator accelerator) : IDisposable where T : unmanaged
{
    private T[] _array = [];
    private PageLockScope<T>? _lock;

    /// <summary>The first <paramref name="length"/> elements.</summary>
    public Span<T> Span(int length)
    {
        if (_array.Length < length)
        {
            _lock?.Dispose();
            _array = GC.AllocateUninitializedArray<T>(Math.Max(1, length), pinned: true);
            try
            {
                _lock = accelerator.CreatePageLockFromPinned(_array);
            }
            catch (NotSupportedException)
            {
                _lock = null; // the accelerator cannot page-lock: copies still work, synchronously
            }
        }
        return _array.AsSpan(0, length);
    }

    /// <summary>Copies host values to a device view through the staging array (asynchronous on the stream).</summary>
    public void Upload(AcceleratorStream stream, ReadOnlySpan<T> values, ArrayView<T> destination)
    {
        if (values.IsEmpty)
        {
            return;
        }
        values.CopyTo(Span(values.Length));
        destination.SubView(0, values.Length).CopyFromCPU(stream, ref _array[0], values.Length);
    }

    /// <summary>Queues a device-to-staging copy; read <see cref="Span"/> after the stream has synchronized.</summary>
    public void Download(AcceleratorStream stream, ArrayView<T> source)
    {
        if (source.Length == 0)
        {
            return;
        }
        Span((int)source.Length);
        source.CopyToCPU(stream, ref _array[0], source.Length);
    }

    public void Dispose() => _lock?.Dispose();
}
