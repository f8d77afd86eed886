using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using MoErging.Formats;

namespace MoErging.Tests;

/// <summary>The safetensors writer: layout as the reference implementation writes it, round trips, atomic writes.</summary>
public sealed class SafeTensorsWriterTests
{
    /// <summary>The reference implementation's Dtype enum order (the subset this engine knows), which writers sort by.</summary>
    private static readonly string[] ReferenceDTypeOrder =
        ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"];

    private static (ulong HeaderLength, string Header) Parts(byte[] file)
    {
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(file);
        return (n, Encoding.UTF8.GetString(file, 8, checked((int)n)));
    }

    private static byte[] ToBytes(SafeTensorsWriter writer)
    {
        using var stream = new MemoryStream();
        writer.WriteTo(stream);
        return stream.ToArray();
    }

    [Fact]
    public void DTypeEnumFollowsTheReferenceOrderAndNames()
    {
        TensorDType[] all = [.. Enum.GetValues<TensorDType>().OrderBy(d => (int)d)];
        Assert.Equal(ReferenceDTypeOrder, all.Select(TensorDTypes.Name));
        foreach (TensorDType d in all)
        {
            Assert.True(TensorDTypes.TryParse(TensorDTypes.Name(d), out TensorDType parsed));
            Assert.Equal(d, parsed);
        }
        Assert.Equal([1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8], all.Select(TensorDTypes.SizeOf));
        Assert.False(TensorDTypes.TryParse("Bool", out _));
        Assert.False(TensorDTypes.TryParse("F8E4M3", out _));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(5)]
    [InlineData(11)]
    public void HeaderLengthIsAMultipleOf8AndPaddedWithSpaces(int tensors)
    {
        var data = new TestData();
        var writer = new SafeTensorsWriter();
        for (int i = 0; i < tensors; i++)
        {
            // Names and sizes of random lengths so the JSON length varies.
            string name = new string('n', 1 + data.Rng.Next(13)) + i;
            int count = 1 + data.Rng.Next(5);
            writer.Add(name, data.Normal(count), [count]);
        }
        byte[] file = ToBytes(writer);
        var (n, header) = Parts(file);
        Assert.True(n % 8 == 0, $"{data}: header length {n} is not a multiple of 8");
        Assert.StartsWith("{", header);
        string trimmed = header.TrimEnd(' ');
        Assert.EndsWith("}", trimmed);
        Assert.True(header.Length - trimmed.Length < 8, $"{data}: {header.Length - trimmed.Length} bytes of padding");
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(file);
        Assert.Equal(tensors, f.Tensors.Count);
        Assert.Equal(file.Length, 8 + (long)n + f.Tensors.Sum(t => t.ByteCount));
    }

    [Fact]
    public void TensorsAreOrderedByDTypeDescendingThenName()
    {
        var data = new TestData();
        var writer = new SafeTensorsWriter();
        var added = new List<(string Name, string DType)>();
        // Names whose UTF-16 order differs from their UTF-8 byte order: U+FF21 (EF BC A1) sorts before
        // U+1F600 (F0 9F 98 80) in bytes, after it in UTF-16 code units (D83D DE00). The reference sorts Rust
        // strings, that is by bytes.
        string[] names = ["b", "a", "B", "a.b", "a_b", "\uFF21", "\U0001F600", "z9", "z10"];
        TensorDType[] dtypes = [TensorDType.F32, TensorDType.F16, TensorDType.BF16, TensorDType.I32, TensorDType.U8, TensorDType.I64, TensorDType.Bool];
        foreach (string name in names.OrderBy(_ => data.Rng.Next()))
        {
            foreach (TensorDType d in dtypes.OrderBy(_ => data.Rng.Next()))
            {
                if (data.Rng.Next(3) == 0)
                {
                    continue;
                }
                string full = $"{name}.{TensorDTypes.Name(d)}";
                int size = TensorDTypes.SizeOf(d);
                var bytes = new byte[3 * size];
                data.Rng.NextBytes(bytes);
                writer.Add(full, d, [3], bytes);
                added.Add((full, TensorDTypes.Name(d)));
            }
        }
        // The name part breaks ties only among tensors of one dtype, and the dtype suffix is the same there.
        var expected = added
            .OrderByDescending(t => Array.IndexOf(ReferenceDTypeOrder, t.DType))
            .ThenBy(t => Encoding.UTF8.GetBytes(t.Name), Comparer<byte[]>.Create((x, y) => x.AsSpan().SequenceCompareTo(y)))
            .Select(t => t.Name)
            .ToArray();
        byte[] file = ToBytes(writer);
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(file);
        Assert.True(expected.SequenceEqual(f.Tensors.Select(t => t.Name)),
            $"{data}: expected {string.Join(" ", expected)}, got {string.Join(" ", f.Tensors.Select(t => t.Name))}");

        // The header lists them in the same order (the reference writes entries in offset order).
        using JsonDocument doc = JsonDocument.Parse(Parts(file).Header);
        Assert.Equal(expected, doc.RootElement.EnumerateObject().Select(p => p.Name).Where(n => n != "__metadata__"));
    }

    [Fact]
    public void MetadataDefaultsToFormatPt()
    {
        var writer = new SafeTensorsWriter();
        writer.Add("w", [1f, 2f], [2]);
        byte[] file = ToBytes(writer);
        using (JsonDocument doc = JsonDocument.Parse(Parts(file).Header))
        {
            JsonElement meta = doc.RootElement.GetProperty("__metadata__");
            Assert.Equal(JsonValueKind.Object, meta.ValueKind);
            var pairs = meta.EnumerateObject().Select(p => (p.Name, p.Value.GetString())).ToArray();
            Assert.Equal([("format", "pt")], pairs);
        }
        using (SafeTensorsFile f = SafeTensorsFile.FromBytes(file))
        {
            Assert.Equal("pt", Assert.Single(f.Metadata).Value);
        }

        var custom = new SafeTensorsWriter();
        custom.Metadata["note"] = "quote \" and \u00e9";
        custom.Add("w", [1f], [1]);
        using SafeTensorsFile g = SafeTensorsFile.FromBytes(ToBytes(custom));
        Assert.Equal(2, g.Metadata.Count);
        Assert.Equal("quote \" and \u00e9", g.Metadata["note"]);
        Assert.Equal("pt", g.Metadata["format"]);
    }

    [Fact]
    public void RoundTripThroughAFileIsExact()
    {
        var data = new TestData();
        using var dir = new TempDir();
        string path = dir.Sub("model.safetensors");
        float[] f32 = data.Normal(3 * 5);
        float[] f16Source = data.Normal(7, 10);
        float[] bf16Source = data.Normal(4 * 2, 1e-3);
        int[] i32 = [.. Enumerable.Range(0, 6).Select(_ => data.Rng.Next(int.MinValue, int.MaxValue))];
        var raw = new byte[10];
        data.Rng.NextBytes(raw);
        var writer = new SafeTensorsWriter();
        writer.Add("layer.f32", f32, [3, 5]);
        writer.Add("layer.f16", f16Source, [7], TensorDType.F16);
        writer.Add("layer.bf16", bf16Source, [4, 1, 2], TensorDType.BF16);
        writer.Add("ids", i32, [2, 3]);
        writer.Add("raw", TensorDType.U8, [10], raw);
        writer.Add("empty", TensorDType.F32, [0, 4], []);
        writer.WriteTo(path);

        using SafeTensorsFile f = SafeTensorsFile.Open(path);
        Assert.Equal(6, f.Tensors.Count);
        Assert.Equal([3L, 5L], f.GetTensor("layer.f32").Shape.ToArray());
        Assert.Equal([4L, 1L, 2L], f.GetTensor("layer.bf16").Shape.ToArray());
        Assert.Equal(TensorDType.F16, f.GetTensor("layer.f16").DType);
        Assert.Equal(TensorDType.BF16, f.GetTensor("layer.bf16").DType);

        float[] got32 = f.ReadSingles(f.GetTensor("layer.f32"));
        Assert.True(f32.Select(BitConverter.SingleToUInt32Bits).SequenceEqual(got32.Select(BitConverter.SingleToUInt32Bits)), $"{data}: F32 differs");

        // 16-bit storage: the bytes on disk are the correctly rounded patterns; reading gives their exact values.
        var rawF16 = new byte[14];
        f.ReadBytes(f.GetTensor("layer.f16"), rawF16);
        float[] got16 = f.ReadSingles(f.GetTensor("layer.f16"));
        for (int i = 0; i < f16Source.Length; i++)
        {
            ushort bits = BinaryPrimitives.ReadUInt16LittleEndian(rawF16.AsSpan(2 * i));
            Assert.True(bits == Narrow.ToHalfBits(f16Source[i]), $"{data}: F16[{i}] {f16Source[i]:R} stored as 0x{bits:X4}");
            Assert.True(got16[i] == (float)Narrow.HalfValue(bits), $"{data}: F16[{i}] read as {got16[i]:R}");
        }
        var rawBf = new byte[16];
        f.ReadBytes(f.GetTensor("layer.bf16"), rawBf);
        float[] gotBf = f.ReadSingles(f.GetTensor("layer.bf16"));
        for (int i = 0; i < bf16Source.Length; i++)
        {
            ushort bits = BinaryPrimitives.ReadUInt16LittleEndian(rawBf.AsSpan(2 * i));
            Assert.True(bits == Narrow.ToBFloat16Bits(bf16Source[i]), $"{data}: BF16[{i}] {bf16Source[i]:R} stored as 0x{bits:X4}");
            Assert.True(gotBf[i] == (float)Narrow.BFloat16Value(bits), $"{data}: BF16[{i}] read as {gotBf[i]:R}");
        }

        Assert.Equal(i32, f.ReadInt32s(f.GetTensor("ids")));
        var gotRaw = new byte[10];
        f.ReadBytes(f.GetTensor("raw"), gotRaw);
        Assert.Equal(raw, gotRaw);
        Assert.Equal(0, f.GetTensor("empty").ByteCount);

        // Rewriting the same content gives the same bytes (deterministic layout).
        string again = dir.Sub("again.safetensors");
        writer.WriteTo(again);
        Assert.Equal(File.ReadAllBytes(path), File.ReadAllBytes(again));
    }

    [Fact]
    public void DuplicateNameOrWrongByteCountIsAnArgumentError()
    {
        var writer = new SafeTensorsWriter();
        writer.Add("w", [1f, 2f], [2]);
        var e = Assert.Throws<ArgumentException>(() => writer.Add("w", [3f, 4f], [2]));
        Assert.Contains("'w'", e.Message);
        Assert.Throws<ArgumentException>(() => writer.Add("w", TensorDType.I32, [1], new byte[4]));
        e = Assert.Throws<ArgumentException>(() => writer.Add("x", TensorDType.F32, [2, 2], new byte[12]));
        Assert.Contains("needs 16 bytes, got 12", e.Message);
        Assert.Throws<ArgumentException>(() => writer.Add("x", TensorDType.F16, [3], new byte[8]));
        Assert.Throws<ArgumentException>(() => writer.Add("x", [1f, 2f, 3f], [2], TensorDType.BF16));
        Assert.Throws<ArgumentException>(() => writer.Add("x", [1, 2, 3], [4]));
        Assert.Throws<ArgumentException>(() => writer.Add("x", [1f], [1], TensorDType.I32));
        Assert.Throws<ArgumentException>(() => writer.Add("__metadata__", [1f], [1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => writer.Add("x", TensorDType.U8, [-1], []));

        // The failed adds left nothing behind: the file holds only the first tensor.
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(ToBytes(writer));
        Assert.Equal("w", Assert.Single(f.Tensors).Name);
        Assert.Equal([1f, 2f], f.ReadSingles(f.Tensors[0]));
    }

    [Fact]
    public void WriteToIsAtomicAndLeavesNoTemporaryFiles()
    {
        var data = new TestData();
        using var dir = new TempDir();
        string path = dir.Sub("w.safetensors");
        File.WriteAllText(path, "old contents");
        var writer = new SafeTensorsWriter();
        writer.Add("w", data.Normal(64), [8, 8]);
        writer.WriteTo(path);
        writer.WriteTo(path); // overwriting an existing file
        Assert.Equal(["w.safetensors"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
        using (SafeTensorsFile f = SafeTensorsFile.Open(path))
        {
            Assert.Equal(64, f.GetTensor("w").ElementCount);
        }

        // A failed write (the target is a directory) leaves the old state and no temporary file.
        string blocked = dir.Sub("blocked.safetensors");
        Directory.CreateDirectory(blocked);
        Assert.ThrowsAny<IOException>(() => writer.WriteTo(blocked));
        Assert.Equal(["w.safetensors"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
        Assert.True(Directory.Exists(blocked));

        // A missing directory is named as the caller gave it, not by the temporary file's name.
        string orphan = dir.Sub("absent/w.safetensors");
        var e = Assert.Throws<DirectoryNotFoundException>(() => writer.WriteTo(orphan));
        Assert.Equal($"{orphan}: the directory {dir.Sub("absent")} does not exist", e.Message);
    }
}
