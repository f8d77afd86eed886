using ILGPU;
using ILGPU.Runtime;

namespace MoErging.Execution.Gpu;

/// <summary>
/// A device workspace buffer that grows to the largest length asked for and is then reused. Only work on
/// <paramref name="stream"/> uses it, so before a smaller buffer is freed on growth that stream is drained:
/// device calls return at once, and freeing memory that queued work still reads is undefined on OpenCL.
/// </summary>
internal sealed class DeviceBuffer<T>(Accelerator accelerator, AcceleratorStream stream) : IDisposable where T : unmanaged
{
    private MemoryBuffer1D<T, Stride1D.Dense>? _buffer;

    /// <summary>The first <paramref name="length"/> elements, reallocating only when the buffer is too small.</summary>
    public ArrayView<T> View(long length)
    {
        if (_buffer is null || _buffer.Length < length)
        {
            if (_buffer is not null)
            {
                stream.Synchronize();
                _buffer.Dispose();
            }
            _buffer = accelerator.Allocate1D<T>(Math.Max(1, length));
        }
        return _buffer.View.SubView(0, length);
    }

    public void Dispose()
    {
        if (_buffer is not null)
        {
            // A disposed stream was drained before it went (a decision may outlive its session).
            if (!stream.IsDisposed)
            {
                stream.Synchronize();
            }
            _buffer.Dispose();
            _buffer = null;
        }
    }
}
