using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Diagnostics.CodeAnalysis;
using System.Text.Unicode;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using MoErging.Numerics;

namespace MoErging.Formats;

/// <summary>
/// A validated safetensors file. Opening checks every rule of the format (header size and syntax,
/// dtypes, shapes, byte counts, offsets that tile the data buffer exactly, the file length); tensor
/// data is read on demand, straight into the caller's destination, so nothing is loaded twice and
/// nothing outside the data buffer is ever read.
/// </summary>
/// <remarks>Not thread-safe for concurrent reads and dispose; concurrent reads are fine.</remarks>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>Largest header accepted, as in the reference implementation.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly Source _source;
    private readonly Dictionary<string, TensorInfo> _byName;
    private readonly long _dataStart;

    private SafeTensorsFile(string label, Source source)
    {
        Label = label;
        _source = source;
        try
        {
            (Tensors, Metadata, _dataStart) = ReadHeader(label, source);
        }
        catch
        {
            source.Dispose();
            throw;
        }
        _byName = new Dictionary<string, TensorInfo>(Tensors.Count, StringComparer.Ordinal);
        foreach (TensorInfo t in Tensors)
        {
            _byName.Add(t.Name, t);
        }
    }

    /// <summary>The file path (or label for in-memory data) used in messages.</summary>
    public string Label { get; }

    /// <summary>Tensors in the order of their data offsets.</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>The optional <c>__metadata__</c> map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>
    /// The file's length and last write time when it was opened (null for in-memory data): what a lazy reader
    /// compares to notice that the file changed after its header was validated.
    /// </summary>
    internal (long Length, DateTime LastWriteUtc)? Stamp => (_source as FileSource)?.Stamp;

    /// <summary>Opens and validates a file. Throws <see cref="InvalidDataException"/> naming the file and the rule broken.</summary>
    /// <exception cref="FileNotFoundException">No such file, or the path is a directory.</exception>
    /// <exception cref="InvalidDataException">Also for a FIFO, socket, device or link loop: only regular files are read.</exception>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        RequireLittleEndian();
        return new SafeTensorsFile(path, new FileSource(InputFiles.Open(path, "a safetensors file")));
    }

    /// <summary>Validates an in-memory image of a file; <paramref name="label"/> names it in messages.</summary>
    public static SafeTensorsFile FromBytes(ReadOnlyMemory<byte> bytes, string label = "<memory>")
    {
        RequireLittleEndian();
        return new SafeTensorsFile(label, new MemorySource(bytes));
    }

    /// <summary>True and the entry when the file holds a tensor of that name.</summary>
    public bool TryGetTensor(string name, [MaybeNullWhen(false)] out TensorInfo tensor) => _byName.TryGetValue(name, out tensor);

    /// <summary>The entry of a tensor; <see cref="KeyNotFoundException"/> naming the file when absent.</summary>
    public TensorInfo GetTensor(string name) =>
        _byName.TryGetValue(name, out TensorInfo? t) ? t : throw new KeyNotFoundException($"{Label}: no tensor named '{name}'");

    /// <summary>Copies a tensor's raw little-endian bytes into <paramref name="destination"/> (exactly its byte count).</summary>
    public void ReadBytes(TensorInfo tensor, Span<byte> destination)
    {
        CheckOwned(tensor);
        if (destination.Length != tensor.ByteCount)
        {
            throw new ArgumentException($"{Label}: tensor '{tensor.Name}' has {tensor.ByteCount} bytes, destination has {destination.Length}", nameof(destination));
        }
        _source.Read(_dataStart + tensor.Begin, destination, Label);
    }

    /// <summary>Decodes an F32, F16 or BF16 tensor into float32 (exact), into a destination of its element count.</summary>
    public void ReadSingles(TensorInfo tensor, Span<float> destination)
    {
        CheckOwned(tensor);
        if (destination.Length != tensor.ElementCount)
        {
            throw new ArgumentException($"{Label}: tensor '{tensor.Name}' has {tensor.ElementCount} elements, destination has {destination.Length}", nameof(destination));
        }
        switch (tensor.DType)
        {
            case TensorDType.F32:
                ReadBytes(tensor, MemoryMarshal.AsBytes(destination));
                break;
            case TensorDType.F16:
            case TensorDType.BF16:
                byte[] rented = ArrayPool<byte>.Shared.Rent(checked((int)tensor.ByteCount));
                try
                {
                    Span<byte> raw = rented.AsSpan(0, (int)tensor.ByteCount);
                    ReadBytes(tensor, raw);
                    if (tensor.DType == TensorDType.F16)
                    {
                        FloatConversions.HalfToSingle(MemoryMarshal.Cast<byte, Half>(raw), destination);
                    }
                    else
                    {
                        FloatConversions.BFloat16ToSingle(MemoryMarshal.Cast<byte, ushort>(raw), destination);
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(rented);
                }
                break;
            default:
                throw new InvalidDataException($"{Label}: tensor '{tensor.Name}' has dtype {TensorDTypes.Name(tensor.DType)}; expected F32, F16 or BF16");
        }
    }

    /// <summary>Decodes an F32, F16 or BF16 tensor into a new float32 array.</summary>
    public float[] ReadSingles(TensorInfo tensor)
    {
        var values = new float[CheckedLength(tensor)];
        ReadSingles(tensor, values);
        return values;
    }

    /// <summary>Reads an I32 tensor into a new array.</summary>
    public int[] ReadInt32s(TensorInfo tensor)
    {
        if (tensor.DType != TensorDType.I32)
        {
            throw new InvalidDataException($"{Label}: tensor '{tensor.Name}' has dtype {TensorDTypes.Name(tensor.DType)}; expected I32");
        }
        var values = new int[CheckedLength(tensor)];
        ReadBytes(tensor, MemoryMarshal.AsBytes(values.AsSpan()));
        return values;
    }

    /// <inheritdoc />
    public void Dispose() => _source.Dispose();

    private int CheckedLength(TensorInfo tensor) =>
        tensor.ElementCount <= Array.MaxLength && tensor.ByteCount <= int.MaxValue
            ? (int)tensor.ElementCount
            : throw new NotSupportedException($"{Label}: tensor '{tensor.Name}' ({tensor.ByteCount} bytes) is larger than one read can hold (2 GiB)");

    private void CheckOwned(TensorInfo tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (!_byName.TryGetValue(tensor.Name, out TensorInfo? own) || !ReferenceEquals(own, tensor))
        {
            throw new ArgumentException($"{Label}: tensor '{tensor.Name}' does not belong to this file", nameof(tensor));
        }
        if (tensor.ByteCount > int.MaxValue)
        {
            throw new NotSupportedException($"{Label}: tensor '{tensor.Name}' ({tensor.ByteCount} bytes) is larger than one read can hold (2 GiB)");
        }
    }

    private static void RequireLittleEndian()
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new NotSupportedException("safetensors data is little-endian; this engine does not run on big-endian machines");
        }
    }

    private static (IReadOnlyList<TensorInfo>, IReadOnlyDictionary<string, string>, long) ReadHeader(string label, Source source)
    {
        long length = source.Length;
        if (length < 8)
        {
            throw Bad(label, $"file is {length} bytes, too short to hold the 8-byte header length");
        }
        Span<byte> prefix = stackalloc byte[8];
        source.Read(0, prefix, label);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (headerLength > MaxHeaderBytes)
        {
            throw Bad(label, $"header length {headerLength} exceeds the limit of {MaxHeaderBytes} bytes");
        }
        if ((long)headerLength > length - 8)
        {
            throw Bad(label, $"header length {headerLength} runs past the end of the file ({length} bytes)");
        }
        var header = new byte[headerLength];
        source.Read(8, header, label);
        long dataStart = 8 + (long)headerLength;
        var (tensors, metadata) = ParseHeader(label, header, length - dataStart);
        return (tensors, metadata, dataStart);
    }

    /// <summary>Parses and validates header JSON against a data buffer of <paramref name="bufferLength"/> bytes.</summary>
    private static (IReadOnlyList<TensorInfo>, IReadOnlyDictionary<string, string>) ParseHeader(string label, byte[] header, long bufferLength)
    {
        if (header.Length == 0 || header[0] != (byte)'{')
        {
            throw Bad(label, "header does not start with '{'");
        }
        if (!Utf8.IsValid(header))
        {
            throw Bad(label, "header is not valid UTF-8");
        }
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw Bad(label, $"header is not valid JSON ({e.Message})");
        }
        using (document)
        {
            try
            {
                return ReadEntries(label, document.RootElement, bufferLength);
            }
            catch (InvalidOperationException e)
            {
                // System.Text.Json reports text it cannot turn into a string (a lone surrogate escape) this way.
                throw Bad(label, $"header is not valid JSON text ({e.Message})");
            }
        }
    }

    /// <summary>The entries of a header whose first byte is '{' (so its root is an object), validated.</summary>
    private static (IReadOnlyList<TensorInfo>, IReadOnlyDictionary<string, string>) ReadEntries(string label, JsonElement root, long bufferLength)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var tensors = new List<TensorInfo>();
        IReadOnlyDictionary<string, string> metadata = new Dictionary<string, string>();
        foreach (JsonProperty entry in root.EnumerateObject())
        {
            if (!seen.Add(entry.Name))
            {
                throw Bad(label, $"key '{entry.Name}' appears twice in the header");
            }
            if (entry.Name == "__metadata__")
            {
                metadata = ParseMetadata(label, entry.Value);
            }
            else
            {
                tensors.Add(ParseEntry(label, entry.Name, entry.Value));
            }
        }
        CheckOffsetsTileBuffer(label, tensors, bufferLength);
        return (tensors, metadata);
    }

    private static Dictionary<string, string> ParseMetadata(string label, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw Bad(label, "__metadata__ is not an object");
        }
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (JsonProperty item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
            {
                throw Bad(label, $"__metadata__ value of '{item.Name}' is not a string");
            }
            if (!metadata.TryAdd(item.Name, item.Value.GetString()!))
            {
                throw Bad(label, $"__metadata__ key '{item.Name}' appears twice");
            }
        }
        return metadata;
    }

    private static TensorInfo ParseEntry(string label, string name, JsonElement value)
    {
        string where = $"tensor '{name}'";
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw Bad(label, $"{where}: entry is not an object");
        }
        string? dtypeName = null;
        long[]? shape = null;
        long[]? offsets = null;
        foreach (JsonProperty field in value.EnumerateObject())
        {
            switch (field.Name)
            {
                case "dtype" when dtypeName is null:
                    dtypeName = field.Value.ValueKind == JsonValueKind.String
                        ? field.Value.GetString()!
                        : throw Bad(label, $"{where}: dtype is not a string");
                    break;
                case "shape" when shape is null:
                    shape = ReadIntegers(label, where, "shape", field.Value, null);
                    break;
                case "data_offsets" when offsets is null:
                    offsets = ReadIntegers(label, where, "data_offsets", field.Value, 2);
                    break;
                case "dtype" or "shape" or "data_offsets":
                    throw Bad(label, $"{where}: field '{field.Name}' appears twice");
                default:
                    throw Bad(label, $"{where}: unexpected field '{field.Name}'");
            }
        }
        if (dtypeName is null || shape is null || offsets is null)
        {
            string missing = dtypeName is null ? "dtype" : shape is null ? "shape" : "data_offsets";
            throw Bad(label, $"{where}: missing '{missing}'");
        }
        if (!TensorDTypes.TryParse(dtypeName, out TensorDType dtype))
        {
            throw Bad(label, $"{where}: unknown dtype '{dtypeName}'");
        }
        long elements = 1;
        foreach (long d in shape)
        {
            if (d != 0 && elements > long.MaxValue / d)
            {
                throw Bad(label, $"{where}: shape {TensorInfo.FormatShape(shape)} has more elements than can be addressed");
            }
            elements *= d;
        }
        long begin = offsets[0], end = offsets[1];
        if (begin > end)
        {
            throw Bad(label, $"{where}: data_offsets [{begin}, {end}] end before they begin");
        }
        int size = TensorDTypes.SizeOf(dtype);
        if (elements > long.MaxValue / size || end - begin != elements * size)
        {
            throw Bad(label, $"{where}: holds {end - begin} bytes but shape {TensorInfo.FormatShape(shape)} of {dtypeName} needs {(elements > long.MaxValue / size ? "more than can be addressed" : (elements * size).ToString())}");
        }
        return new TensorInfo(name, dtype, shape, elements, begin, end);
    }

    private static long[] ReadIntegers(string label, string where, string field, JsonElement value, int? count)
    {
        if (value.ValueKind != JsonValueKind.Array || (count is int n && value.GetArrayLength() != n))
        {
            throw Bad(label, $"{where}: {field} is not an array of {(count is int c ? $"{c} " : "")}non-negative integers");
        }
        var result = new long[value.GetArrayLength()];
        int i = 0;
        foreach (JsonElement item in value.EnumerateArray())
        {
            // "-0" parses as 0 but is no non-negative integer to the reference parser either.
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out long v) || v < 0 || item.GetRawText()[0] == '-')
            {
                throw Bad(label, $"{where}: {field}[{i}] = {item.GetRawText()} is not a non-negative integer");
            }
            result[i++] = v;
        }
        return result;
    }

    private static void CheckOffsetsTileBuffer(string label, List<TensorInfo> tensors, long bufferLength)
    {
        tensors.Sort(static (a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        long expected = 0;
        string? previous = null;
        foreach (TensorInfo t in tensors)
        {
            if (t.Begin != expected)
            {
                string relation = t.Begin < expected ? "overlaps" : "leaves a gap after";
                string what = previous is null ? "the start of the data buffer" : $"tensor '{previous}' (which ends at {expected})";
                throw Bad(label, $"tensor '{t.Name}' starts at byte {t.Begin} and {relation} {what}");
            }
            expected = t.End;
            previous = t.Name;
        }
        if (expected != bufferLength)
        {
            throw Bad(label, expected > bufferLength
                ? $"tensors need a data buffer of {expected} bytes but the file holds only {bufferLength} after the header"
                : $"the file has {bufferLength - expected} bytes after the last tensor's data (tensors end at {expected} of {bufferLength})");
        }
    }

    private static InvalidDataException Bad(string label, string what) => new($"{label}: {what}");

    /// <summary>Where the bytes come from: an open file or memory.</summary>
    private abstract class Source : IDisposable
    {
        public abstract long Length { get; }

        public abstract void Read(long offset, Span<byte> destination, string label);

        public virtual void Dispose()
        {
        }
    }

    private sealed class FileSource(SafeFileHandle handle) : Source
    {
        private readonly long _length = RandomAccess.GetLength(handle);
        private readonly DateTime _lastWriteUtc = File.GetLastWriteTimeUtc(handle);

        public (long Length, DateTime LastWriteUtc) Stamp => (_length, _lastWriteUtc);

        public override long Length => _length;

        public override void Read(long offset, Span<byte> destination, string label)
        {
            while (!destination.IsEmpty)
            {
                int n = RandomAccess.Read(handle, destination, offset);
                if (n <= 0)
                {
                    throw new InvalidDataException($"{label}: file ended at byte {offset} while reading (was it truncated after opening?)");
                }
                destination = destination[n..];
                offset += n;
            }
        }

        public override void Dispose() => handle.Dispose();
    }

    private sealed class MemorySource(ReadOnlyMemory<byte> bytes) : Source
    {
        public override long Length => bytes.Length;

        public override void Read(long offset, Span<byte> destination, string label) =>
            bytes.Span.Slice(checked((int)offset), destination.Length).CopyTo(destination);
    }
}
