namespace MoErging.Formats;

/// <summary>One tensor entry of a safetensors header, already validated against the file.</summary>
public sealed class TensorInfo
{
    private readonly long[] _shape;

    internal TensorInfo(string name, TensorDType dtype, long[] shape, long elementCount, long begin, long end)
    {
        Name = name;
        DType = dtype;
        _shape = shape;
        ElementCount = elementCount;
        Begin = begin;
        End = end;
    }

    /// <summary>The tensor's key in the header.</summary>
    public string Name { get; }

    /// <summary>Element type.</summary>
    public TensorDType DType { get; }

    /// <summary>Dimensions, outermost first (row-major).</summary>
    public ReadOnlySpan<long> Shape => _shape;

    /// <summary>Number of dimensions.</summary>
    public int Rank => _shape.Length;

    /// <summary>Product of the dimensions (1 for a scalar).</summary>
    public long ElementCount { get; }

    /// <summary>Offset of the first byte, relative to the start of the data buffer.</summary>
    public long Begin { get; }

    /// <summary>Offset one past the last byte, relative to the start of the data buffer.</summary>
    public long End { get; }

    /// <summary>Size of the tensor's data in bytes.</summary>
    public long ByteCount => End - Begin;

    /// <summary>The shape as text, for messages: "[16, 4096]".</summary>
    public string ShapeText => FormatShape(_shape);

    internal static string FormatShape(ReadOnlySpan<long> shape) => "[" + string.Join(", ", shape.ToArray()) + "]";
}
