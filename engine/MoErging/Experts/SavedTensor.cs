using MoErging.Formats;

namespace MoErging.Experts;

/// <summary>
/// A tensor an adapter saved whole beside its LoRA factors (PEFT's <c>modules_to_save</c>: a classification head such
/// as <c>classifier.weight</c> or <c>score.weight</c>). LoRA forwards do not apply it; it is kept so a host can.
/// Its values are read from the adapter's file on each <see cref="ReadBytes"/> or <see cref="ReadSingles"/>, after
/// checking the file is unchanged since loading, so a library takes no memory for heads nobody reads.
/// </summary>
public sealed class SavedTensor
{
    private readonly long[] _shape;
    private readonly Func<SafeTensorsFile> _reopen;
    private readonly TensorInfo _entry;

    internal SavedTensor(string module, TensorInfo entry, Func<SafeTensorsFile> reopen)
    {
        Module = module;
        _entry = entry;
        _shape = entry.Shape.ToArray();
        _reopen = reopen;
    }

    /// <summary>The tensor's key in the adapter's weights file.</summary>
    public string Name => _entry.Name;

    /// <summary>The saved module it belongs to (the key without its parameter name and PEFT's wrapper segments).</summary>
    public string Module { get; }

    /// <summary>Element type as stored.</summary>
    public TensorDType DType => _entry.DType;

    /// <summary>Dimensions, outermost first.</summary>
    public IReadOnlyList<long> Shape => _shape;

    /// <summary>The raw little-endian bytes, read from the file now.</summary>
    public byte[] ReadBytes()
    {
        if (_entry.ByteCount > Array.MaxLength)
        {
            throw new NotSupportedException($"saved tensor '{Name}' ({_entry.ByteCount} bytes) is larger than one array can hold");
        }
        using SafeTensorsFile file = _reopen();
        var bytes = new byte[_entry.ByteCount];
        file.ReadBytes(file.GetTensor(Name), bytes);
        return bytes;
    }

    /// <summary>An F32, F16 or BF16 tensor's values as float32 (exact), read from the file now.</summary>
    public float[] ReadSingles()
    {
        using SafeTensorsFile file = _reopen();
        return file.ReadSingles(file.GetTensor(Name));
    }
}
