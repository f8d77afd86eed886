using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using MoErging.Numerics;

namespace MoErging.Formats;

/// <summary>
/// Builds a safetensors file: tensors ordered by dtype (widest alignment first) then name, as the
/// reference implementation orders them; the header padded with spaces to a multiple of 8 bytes;
/// <c>__metadata__</c> defaulting to <c>{"format": "pt"}</c>. Files are written atomically.
/// </summary>
public sealed class SafeTensorsWriter
{
    private readonly List<Entry> _entries = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    /// <summary>String metadata written as <c>__metadata__</c>.</summary>
    public Dictionary<string, string> Metadata { get; } = new(StringComparer.Ordinal) { ["format"] = "pt" };

    /// <summary>Adds a tensor from raw little-endian bytes (copied).</summary>
    public SafeTensorsWriter Add(string name, TensorDType dtype, ReadOnlySpan<long> shape, ReadOnlySpan<byte> data)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name == "__metadata__")
        {
            throw new ArgumentException("'__metadata__' is reserved and cannot name a tensor", nameof(name));
        }
        long elements = 1;
        foreach (long d in shape)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(d, nameof(shape));
            elements = checked(elements * d);
        }
        if (checked(elements * TensorDTypes.SizeOf(dtype)) != data.Length)
        {
            throw new ArgumentException($"tensor '{name}': shape {TensorInfo.FormatShape(shape)} of {TensorDTypes.Name(dtype)} needs {elements * TensorDTypes.SizeOf(dtype)} bytes, got {data.Length}", nameof(data));
        }
        if (!_names.Add(name))
        {
            throw new ArgumentException($"tensor '{name}' was already added", nameof(name));
        }
        _entries.Add(new Entry(name, dtype, shape.ToArray(), data.ToArray()));
        return this;
    }

    /// <summary>Adds float32 values stored as F32.</summary>
    public SafeTensorsWriter Add(string name, ReadOnlySpan<float> values, ReadOnlySpan<long> shape) => Add(name, values, shape, TensorDType.F32);

    /// <summary>Adds float32 values stored as F32, F16 or BF16 (narrowing rounds to nearest even).</summary>
    public SafeTensorsWriter Add(string name, ReadOnlySpan<float> values, ReadOnlySpan<long> shape, TensorDType storage)
    {
        switch (storage)
        {
            case TensorDType.F32:
                return Add(name, storage, shape, MemoryMarshal.AsBytes(values));
            case TensorDType.F16:
                var half = new Half[values.Length];
                FloatConversions.SingleToHalf(values, half);
                return Add(name, storage, shape, MemoryMarshal.AsBytes(half.AsSpan()));
            case TensorDType.BF16:
                var bf = new ushort[values.Length];
                FloatConversions.SingleToBFloat16(values, bf);
                return Add(name, storage, shape, MemoryMarshal.AsBytes(bf.AsSpan()));
            default:
                throw new ArgumentException($"float tensors are stored as F32, F16 or BF16, not {TensorDTypes.Name(storage)}", nameof(storage));
        }
    }

    /// <summary>Adds int32 values stored as I32.</summary>
    public SafeTensorsWriter Add(string name, ReadOnlySpan<int> values, ReadOnlySpan<long> shape) =>
        Add(name, TensorDType.I32, shape, MemoryMarshal.AsBytes(values));

    /// <summary>Writes the file atomically: a temporary file beside it, then a rename.</summary>
    public void WriteTo(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = Path.GetFullPath(path);
        // Checked first: creating the temporary file would fail naming it, not the path the caller gave.
        if (!Directory.Exists(Path.GetDirectoryName(full)))
        {
            throw new DirectoryNotFoundException($"{path}: the directory {Path.GetDirectoryName(full)} does not exist");
        }
        string temporary = full + $".{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                WriteTo(stream);
            }
            File.Move(temporary, full, overwrite: true);
        }
        catch
        {
            File.Delete(temporary);
            throw;
        }
    }

    /// <summary>Writes the file to a stream.</summary>
    public void WriteTo(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        List<Entry> ordered = [.. _entries];
        ordered.Sort(static (a, b) =>
        {
            int byType = b.DType.CompareTo(a.DType);
            return byType != 0 ? byType : Encoding.UTF8.GetBytes(a.Name).AsSpan().SequenceCompareTo(Encoding.UTF8.GetBytes(b.Name));
        });
        byte[] header = BuildHeader(ordered);
        Span<byte> prefix = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        stream.Write(prefix);
        stream.Write(header);
        foreach (Entry e in ordered)
        {
            stream.Write(e.Data);
        }
    }

    private byte[] BuildHeader(List<Entry> ordered)
    {
        using var json = new MemoryStream();
        using (var w = new Utf8JsonWriter(json, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (Metadata.Count > 0)
            {
                w.WriteStartObject("__metadata__");
                foreach (var (key, value) in Metadata.OrderBy(p => p.Key, StringComparer.Ordinal))
                {
                    w.WriteString(key, value);
                }
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (Entry e in ordered)
            {
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", TensorDTypes.Name(e.DType));
                w.WriteStartArray("shape");
                foreach (long d in e.Shape)
                {
                    w.WriteNumberValue(d);
                }
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + e.Data.Length);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += e.Data.Length;
            }
            w.WriteEndObject();
        }
        int padded = (int)((json.Length + 7) / 8 * 8);
        byte[] header = new byte[padded];
        json.GetBuffer().AsSpan(0, (int)json.Length).CopyTo(header);
        header.AsSpan((int)json.Length).Fill((byte)' ');
        return header;
    }

    private sealed record Entry(string Name, TensorDType DType, long[] Shape, byte[] Data);
}
