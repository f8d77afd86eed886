using System.Buffers.Binary;
using System.Text;
using MoErging.Formats;
using static MoErging.Tests.StBytes;

namespace MoErging.Tests;

/// <summary>
/// The validating safetensors reader: every malformed-file rule (one distinctive phrase per rule, so each
/// case proves that its own rule fired), and reading valid files.
/// </summary>
public sealed class SafeTensorsTests
{
    private static readonly byte[] Eight = new byte[8];

    // Each case: the file image, and a phrase of the message only that rule produces.
    private static readonly Dictionary<string, (Func<byte[]> Build, string Phrase)> MalformedCases = new()
    {
        ["empty file"] = (() => [], "file is 0 bytes, too short"),
        ["shorter than 8 bytes"] = (() => [2, 0, 0, 0, 0, 0, 0], "file is 7 bytes, too short to hold the 8-byte header length"),
        ["header length past end of file"] = (() => File("{}", declaredLength: 3), "header length 3 runs past the end of the file (10 bytes)"),
        ["header length at the limit but past end"] = (() => File("{}", declaredLength: 100_000_000), "header length 100000000 runs past the end"),
        ["header length over 100,000,000"] = (() => File("{}", declaredLength: 100_000_001), "header length 100000001 exceeds the limit of 100000000 bytes"),
        ["header length 2^63 (negative as int64)"] = (() => File("{}", declaredLength: 1UL << 63), "header length 9223372036854775808 exceeds the limit"),
        ["header length u64 max"] = (() => File("{}", declaredLength: ulong.MaxValue), "header length 18446744073709551615 exceeds the limit"),
        ["header length zero"] = (() => File(""), "header does not start with '{'"),
        ["header starts with a space"] = (() => File(" {}"), "header does not start with '{'"),
        // A header that starts with '{' and parses is always an object, so "not an object" can only show up as this rule.
        ["header not an object (array)"] = (() => File("[]"), "header does not start with '{'"),
        ["header with BOM"] = (() => File("\uFEFF{}"), "header does not start with '{'"),
        ["invalid UTF-8 (0xFF)"] = (() => File([(byte)'{', (byte)'"', 0xFF, (byte)'"', (byte)':', (byte)'{', (byte)'}', (byte)'}']), "header is not valid UTF-8"),
        ["invalid UTF-8 (overlong '/')"] = (() => File([(byte)'{', (byte)'"', 0xC0, 0xAF, (byte)'"', (byte)':', (byte)'1', (byte)'}']), "header is not valid UTF-8"),
        ["invalid UTF-8 (encoded surrogate)"] = (() => File([(byte)'{', (byte)'"', 0xED, 0xA0, 0x80, (byte)'"', (byte)':', (byte)'1', (byte)'}']), "header is not valid UTF-8"),
        ["invalid UTF-8 (truncated sequence at end)"] = (() => File([(byte)'{', (byte)'}', 0xE2, 0x82]), "header is not valid UTF-8"),
        ["bad JSON (unterminated)"] = (() => File("{\"a\":"), "header is not valid JSON"),
        ["bad JSON (trailing garbage)"] = (() => File("{} x"), "header is not valid JSON"),
        ["bad JSON (trailing comma)"] = (() => File("{\"__metadata__\":{\"a\":\"b\"},}"), "header is not valid JSON"),
        ["bad JSON (comment)"] = (() => File("{/* c */}"), "header is not valid JSON"),
        ["bad JSON (NUL padding)"] = (() => File("{}\0\0\0\0\0\0"), "header is not valid JSON"),
        ["bad JSON (single quotes)"] = (() => File("{'a':1}"), "header is not valid JSON"),
        ["duplicate tensor keys"] = (() => File(Header(Entry("a", "F32", "[2]", 0, 8), Entry("a", "F32", "[2]", 8, 16)), new byte[16]),
            "key 'a' appears twice in the header"),
        ["duplicate __metadata__"] = (() => File("{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"b\":\"2\"}}"), "key '__metadata__' appears twice in the header"),
        ["duplicate key inside __metadata__"] = (() => File("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}"), "__metadata__ key 'a' appears twice"),
        ["metadata value not a string (number)"] = (() => File("{\"__metadata__\":{\"format\":1}}"), "__metadata__ value of 'format' is not a string"),
        ["metadata value not a string (null)"] = (() => File("{\"__metadata__\":{\"format\":null}}"), "__metadata__ value of 'format' is not a string"),
        ["metadata not an object"] = (() => File("{\"__metadata__\":[\"pt\"]}"), "__metadata__ is not an object"),
        ["entry not an object"] = (() => File("{\"a\":[0,8]}", Eight), "tensor 'a': entry is not an object"),
        ["entry missing dtype"] = (() => File("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", Eight), "tensor 'a': missing 'dtype'"),
        ["entry missing shape"] = (() => File("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", Eight), "tensor 'a': missing 'shape'"),
        ["entry missing data_offsets"] = (() => File("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", Eight), "tensor 'a': missing 'data_offsets'"),
        ["dtype not a string"] = (() => File("{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", Eight), "tensor 'a': dtype is not a string"),
        ["unknown dtype F7"] = (() => File(Header(Entry("a", "F7", "[2]", 0, 8)), Eight), "tensor 'a': unknown dtype 'F7'"),
        ["dtype in lower case"] = (() => File(Header(Entry("a", "f32", "[2]", 0, 8)), Eight), "tensor 'a': unknown dtype 'f32'"),
        ["negative shape entry"] = (() => File(Header(Entry("a", "F32", "[-2]", 0, 8)), Eight), "tensor 'a': shape[0] = -2 is not a non-negative integer"),
        ["non-integer shape entry"] = (() => File(Header(Entry("a", "F32", "[1, 2.5]", 0, 8)), Eight), "tensor 'a': shape[1] = 2.5 is not a non-negative integer"),
        ["shape entry 2.0"] = (() => File(Header(Entry("a", "F32", "[2.0]", 0, 8)), Eight), "tensor 'a': shape[0] = 2.0 is not a non-negative integer"),
        ["shape entry a string"] = (() => File(Header(Entry("a", "F32", "[\"2\"]", 0, 8)), Eight), "tensor 'a': shape[0] = \"2\" is not a non-negative integer"),
        ["shape not an array"] = (() => File(Header(Entry("a", "F32", "2", 0, 8)), Eight), "tensor 'a': shape is not an array of non-negative integers"),
        ["data_offsets with three entries"] = (() => File("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", Eight),
            "tensor 'a': data_offsets is not an array of 2 non-negative integers"),
        ["negative data offset"] = (() => File(Header(Entry("a", "F32", "[2]", -8, 0)), Eight), "tensor 'a': data_offsets[0] = -8 is not a non-negative integer"),
        ["data offset past int64"] = (() => File("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9223372036854775808]}}", Eight),
            "tensor 'a': data_offsets[1] = 9223372036854775808 is not a non-negative integer"),
        ["data_offsets end before begin"] = (() => File(Header(Entry("a", "F32", "[0]", 8, 4)), Eight), "tensor 'a': data_offsets [8, 4] end before they begin"),
        ["byte count too large for shape"] = (() => File(Header(Entry("a", "F32", "[2]", 0, 12)), new byte[12]), "tensor 'a': holds 12 bytes but shape [2] of F32 needs 8"),
        ["byte count too small for shape"] = (() => File(Header(Entry("a", "BF16", "[2, 3]", 0, 8)), Eight), "tensor 'a': holds 8 bytes but shape [2, 3] of BF16 needs 12"),
        ["byte count for scalar"] = (() => File(Header(Entry("a", "F64", "[]", 0, 4)), new byte[4]), "tensor 'a': holds 4 bytes but shape [] of F64 needs 8"),
        ["overlapping offsets"] = (() => File(Header(Entry("a", "F32", "[2]", 0, 8), Entry("b", "F32", "[2]", 4, 12)), new byte[12]),
            "tensor 'b' starts at byte 4 and overlaps tensor 'a' (which ends at 8)"),
        ["two tensors at the same offsets"] = (() => File(Header(Entry("a", "F32", "[2]", 0, 8), Entry("b", "F32", "[2]", 0, 8)), Eight),
            "starts at byte 0 and overlaps tensor"),
        ["gap between tensors"] = (() => File(Header(Entry("a", "F32", "[2]", 0, 8), Entry("b", "F32", "[2]", 12, 20)), new byte[20]),
            "tensor 'b' starts at byte 12 and leaves a gap after tensor 'a' (which ends at 8)"),
        ["first tensor not at 0"] = (() => File(Header(Entry("a", "F32", "[2]", 4, 12)), new byte[12]),
            "tensor 'a' starts at byte 4 and leaves a gap after the start of the data buffer"),
        ["bytes left after the last tensor"] = (() => File(Header(Entry("a", "F32", "[2]", 0, 8)), new byte[11]),
            "the file has 3 bytes after the last tensor's data (tensors end at 8 of 11)"),
        ["bytes with no tensors at all"] = (() => File("{}", new byte[4]), "the file has 4 bytes after the last tensor's data"),
        ["tensors need more bytes than the file has"] = (() => File(Header(Entry("a", "F32", "[2]", 0, 8), Entry("b", "F32", "[1]", 8, 12)), Eight),
            "tensors need a data buffer of 12 bytes but the file holds only 8 after the header"),
        ["huge tensor, tiny file"] = (() => File(Header(Entry("a", "U8", "[1099511627776]", 0, 1099511627776)), Eight),
            "tensors need a data buffer of 1099511627776 bytes"),
        ["element count overflows int64"] = (() => File(Header(Entry("a", "F32", "[4294967296, 4294967296]", 0, 0))),
            "tensor 'a': shape [4294967296, 4294967296] has more elements than can be addressed"),
        ["byte count overflows int64"] = (() => File(Header(Entry("a", "F32", "[2305843009213693952]", 0, 8)), Eight),
            "needs more than can be addressed"),
        ["unexpected extra field"] = (() => File("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"offset\":0}}", Eight),
            "tensor 'a': unexpected field 'offset'"),
        ["field given twice"] = (() => File("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"dtype\":\"F16\",\"data_offsets\":[0,8]}}", Eight),
            "tensor 'a': field 'dtype' appears twice"),
    };

    public static TheoryData<string> Malformed() => [.. MalformedCases.Keys];

    [Theory]
    [MemberData(nameof(Malformed))]
    public void MalformedFileIsRejectedNamingFileAndRule(string rule)
    {
        var (build, phrase) = MalformedCases[rule];
        string label = $"case-{Guid.NewGuid():N}.safetensors";
        var e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.FromBytes(build(), label).Dispose());
        Assert.StartsWith(label + ": ", e.Message);
        Assert.Contains(phrase, e.Message);
    }

    // Each phrase must belong to exactly one rule (or to cases that test the same rule), or a case could
    // pass on the strength of another rule's message.
    [Fact]
    public void EveryMalformedCaseFailsForItsOwnReason()
    {
        foreach (var (rule, (build, phrase)) in MalformedCases)
        {
            string message = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.FromBytes(build(), "x").Dispose()).Message;
            foreach (var (other, (_, otherPhrase)) in MalformedCases)
            {
                if (otherPhrase != phrase && message.Contains(otherPhrase, StringComparison.Ordinal) && !phrase.Contains(otherPhrase, StringComparison.Ordinal))
                {
                    Assert.Fail($"case '{rule}' produced '{message}', which also matches the phrase of case '{other}'");
                }
            }
        }
    }

    // A JSON escape of a lone UTF-16 surrogate ("\ud800") is valid UTF-8 and valid JSON syntax but not a string;
    // the reference implementation (serde_json) rejects it. System.Text.Json throws InvalidOperationException
    // only when such a name or value is read, which must still surface as InvalidDataException.
    [Theory]
    [InlineData("{\"\\ud800\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}")]
    [InlineData("{\"__metadata__\":{\"format\":\"\\udc00\"}}")]
    [InlineData("{\"__metadata__\":{\"\\udc00\":\"pt\"}}")]
    [InlineData("{\"a\":{\"dtype\":\"F\\ud83d\",\"shape\":[2],\"data_offsets\":[0,8]}}")]
    [InlineData("{\"a\":{\"\\udfff\":1,\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}")]
    public void LoneSurrogateEscapeIsRejectedAsInvalidData(string header)
    {
        byte[] bytes = File(header, header.Contains("data_offsets") ? Eight : null);
        var e = Record.Exception(() => SafeTensorsFile.FromBytes(bytes, "surrogate.safetensors").Dispose());
        Assert.NotNull(e);
        Assert.True(e is InvalidDataException, $"expected InvalidDataException, got {e.GetType().Name}: {e.Message}");
        Assert.Contains("surrogate.safetensors", e.Message);
    }

    [Fact]
    public void OpenNamesThePathInMessages()
    {
        using var dir = new TempDir();
        string path = dir.Sub("bad-offsets.safetensors");
        System.IO.File.WriteAllBytes(path, File(Header(Entry("w", "F32", "[2]", 0, 8)), new byte[9]));
        var e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Contains(path, e.Message);
        Assert.Contains("1 bytes after the last tensor's data", e.Message);

        string shortPath = dir.Sub("short.safetensors");
        System.IO.File.WriteAllBytes(shortPath, [1, 2, 3]);
        e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(shortPath).Dispose());
        Assert.Contains(shortPath, e.Message);
        Assert.Contains("too short", e.Message);

        string unknown = dir.Sub("unknown.safetensors");
        System.IO.File.WriteAllBytes(unknown, File(Header(Entry("w", "Q4", "[2]", 0, 1)), new byte[1]));
        e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(unknown).Dispose());
        Assert.Contains(unknown, e.Message);
        Assert.Contains("unknown dtype 'Q4'", e.Message);

        // A rejected file is closed again: it can be replaced at once.
        System.IO.File.WriteAllBytes(unknown, File("{}"));
        using SafeTensorsFile ok = SafeTensorsFile.Open(unknown);
        Assert.Empty(ok.Tensors);
    }

    [Fact]
    public void OpenOfMissingFileOrDirectoryThrowsFileNotFound()
    {
        using var dir = new TempDir();
        Assert.Throws<FileNotFoundException>(() => SafeTensorsFile.Open(dir.Sub("absent.safetensors")));
        // A directory is named as one (the operating system's answer, "access denied", misleads).
        Assert.Equal($"{dir.Path}: is a directory, not a safetensors file", Assert.Throws<FileNotFoundException>(() => SafeTensorsFile.Open(dir.Path)).Message);
    }

    [Fact]
    public void EmptyHeaderAndMetadataOnlyFilesOpen()
    {
        using var dir = new TempDir();
        string empty = dir.Sub("empty.safetensors");
        System.IO.File.WriteAllBytes(empty, File("{}"));
        using (SafeTensorsFile f = SafeTensorsFile.Open(empty))
        {
            Assert.Empty(f.Tensors);
            Assert.Empty(f.Metadata);
            Assert.Equal(empty, f.Label);
        }

        string meta = dir.Sub("meta.safetensors");
        System.IO.File.WriteAllBytes(meta, File("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\u00e9 \u2603\"}}   "));
        using (SafeTensorsFile f = SafeTensorsFile.Open(meta))
        {
            Assert.Empty(f.Tensors);
            Assert.Equal(2, f.Metadata.Count);
            Assert.Equal("pt", f.Metadata["format"]);
            Assert.Equal("caf\u00e9 \u2603", f.Metadata["note"]);
        }

        using SafeTensorsFile m = SafeTensorsFile.FromBytes(File("{\"__metadata__\":{}}"));
        Assert.Empty(m.Tensors);
        Assert.Empty(m.Metadata);
        Assert.Equal("<memory>", m.Label);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(13)]
    [InlineData(4096)]
    public void HeaderPaddedWithTrailingSpacesOpens(int spaces)
    {
        string header = Header(Entry("w", "F32", "[1]", 0, 4)) + new string(' ', spaces);
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(header, F32(3.5f)));
        Assert.Equal(3.5f, Assert.Single(f.ReadSingles(f.GetTensor("w"))));
    }

    [Fact]
    public void TensorsAreListedInOffsetOrderWithTheirInfo()
    {
        var data = new TestData();
        float[] c = data.Normal(6);
        float[] a = data.Normal(2);
        int[] b = [int.MinValue, -1, 0, int.MaxValue];
        // Header order c, b, z, a; offset order a [0,8), z [8,8) (empty), b [8,24), c [24,48).
        string header = Header(
            Entry("c", "F32", "[2, 3]", 24, 48),
            Entry("b", "I32", "[4]", 8, 24),
            Entry("z", "F16", "[0, 5]", 8, 8),
            Entry("a", "F32", "[2]", 0, 8));
        byte[] bytes = File(header, [.. F32(a), .. I32(b), .. F32(c)]);
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(bytes);

        Assert.Equal(["a", "z", "b", "c"], f.Tensors.Select(t => t.Name));
        TensorInfo tc = f.GetTensor("c");
        Assert.Equal(TensorDType.F32, tc.DType);
        Assert.Equal([2L, 3L], tc.Shape.ToArray());
        Assert.Equal(2, tc.Rank);
        Assert.Equal(6, tc.ElementCount);
        Assert.Equal(24, tc.Begin);
        Assert.Equal(48, tc.End);
        Assert.Equal(24, tc.ByteCount);
        Assert.Equal("[2, 3]", tc.ShapeText);
        TensorInfo tz = f.GetTensor("z");
        Assert.Equal(0, tz.ElementCount);
        Assert.Empty(f.ReadSingles(tz));

        Assert.Equal(a, f.ReadSingles(f.GetTensor("a")));
        Assert.Equal(b, f.ReadInt32s(f.GetTensor("b")));
        Assert.Equal(c, f.ReadSingles(f.GetTensor("c")));
        Assert.True(f.TryGetTensor("b", out TensorInfo? tb));
        Assert.Same(f.GetTensor("b"), tb);
        Assert.False(f.TryGetTensor("B", out _));
    }

    [Fact]
    public void ScalarTensorHasOneElement()
    {
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(Header(Entry("s", "F32", "[]", 0, 4)), F32(-2.25f)));
        TensorInfo s = f.GetTensor("s");
        Assert.Equal(0, s.Rank);
        Assert.Equal(1, s.ElementCount);
        Assert.Equal(-2.25f, Assert.Single(f.ReadSingles(s)));
    }

    [Fact]
    public void MetadataIsReadBack()
    {
        string header = "{\"__metadata__\":{\"format\":\"pt\",\"quote\":\"say \\\"hi\\\"\\n\",\"empty\":\"\"}," + Entry("w", "F32", "[1]", 0, 4) + "}";
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(header, F32(1)));
        Assert.Equal(3, f.Metadata.Count);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal("say \"hi\"\n", f.Metadata["quote"]);
        Assert.Equal("", f.Metadata["empty"]);
        Assert.Equal("w", Assert.Single(f.Tensors).Name);
    }

    [Fact]
    public void ReadSinglesDecodesF32F16AndBF16Exactly()
    {
        var data = new TestData();
        const int n = 37;
        float[] f32 = data.Normal(n, 3);
        var half = new ushort[n];
        var bf16 = new ushort[n];
        for (int i = 0; i < n; i++)
        {
            // Any non-NaN pattern: subnormals, infinities and signed zeros included.
            do
            {
                half[i] = (ushort)data.Rng.Next(65536);
            }
            while (double.IsNaN(Narrow.HalfValue(half[i])));
            do
            {
                bf16[i] = (ushort)data.Rng.Next(65536);
            }
            while (double.IsNaN(Narrow.BFloat16Value(bf16[i])));
        }
        half[0] = 0x8000; // -0
        bf16[0] = 0x0001; // smallest subnormal
        string header = Header(
            Entry("f32", "F32", $"[{n}]", 0, 4 * n),
            Entry("f16", "F16", $"[1, {n}]", 4 * n, 6 * n),
            Entry("bf16", "BF16", $"[{n}, 1]", 6 * n, 8 * n));
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(header, [.. F32(f32), .. U16(half), .. U16(bf16)]));

        float[] got32 = f.ReadSingles(f.GetTensor("f32"));
        float[] got16 = f.ReadSingles(f.GetTensor("f16"));
        float[] gotBf = new float[n];
        f.ReadSingles(f.GetTensor("bf16"), gotBf);
        for (int i = 0; i < n; i++)
        {
            Assert.True(BitConverter.SingleToUInt32Bits(f32[i]) == BitConverter.SingleToUInt32Bits(got32[i]), $"{data}: F32[{i}]");
            double expected16 = Narrow.HalfValue(half[i]);
            Assert.True(got16[i].Equals((float)expected16) && double.IsNegative(got16[i]) == double.IsNegative(expected16),
                $"{data}: F16[{i}] 0x{half[i]:X4} should be {expected16:R}, got {got16[i]:R}");
            double expectedBf = Narrow.BFloat16Value(bf16[i]);
            Assert.True(gotBf[i].Equals((float)expectedBf) && double.IsNegative(gotBf[i]) == double.IsNegative(expectedBf),
                $"{data}: BF16[{i}] 0x{bf16[i]:X4} should be {expectedBf:R}, got {gotBf[i]:R}");
        }
    }

    [Fact]
    public void ReadInt32sAndReadBytes()
    {
        var data = new TestData();
        int[] values = [.. Enumerable.Range(0, 9).Select(_ => data.Rng.Next(int.MinValue, int.MaxValue))];
        byte[] raw = [.. Enumerable.Range(0, 5).Select(_ => (byte)data.Rng.Next(256))];
        string header = Header(Entry("ids", "I32", "[3, 3]", 0, 36), Entry("raw", "U8", "[5]", 36, 41));
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(header, [.. I32(values), .. raw]));
        Assert.Equal(values, f.ReadInt32s(f.GetTensor("ids")));
        var got = new byte[5];
        f.ReadBytes(f.GetTensor("raw"), got);
        Assert.Equal(raw, got);
        var gotIds = new byte[36];
        f.ReadBytes(f.GetTensor("ids"), gotIds);
        Assert.Equal(I32(values), gotIds);
    }

    [Theory]
    [InlineData("I32", 4)]
    [InlineData("U8", 1)]
    [InlineData("F64", 8)]
    [InlineData("I16", 2)]
    [InlineData("F8_E4M3", 1)]
    public void ReadingANonFloatTensorAsSinglesThrows(string dtype, int size)
    {
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(Header(Entry("ids", dtype, "[2]", 0, 2 * size)), new byte[2 * size]), "ints.safetensors");
        TensorInfo t = f.GetTensor("ids");
        var e = Assert.Throws<InvalidDataException>(() => f.ReadSingles(t));
        Assert.Contains("ints.safetensors", e.Message);
        Assert.Contains("'ids'", e.Message);
        Assert.Contains($"dtype {dtype}; expected F32, F16 or BF16", e.Message);
        Assert.Throws<InvalidDataException>(() => f.ReadSingles(t, new float[2]));
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("U32")]
    [InlineData("BF16")]
    public void ReadingANonI32TensorAsInt32sThrows(string dtype)
    {
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(Header(Entry("w", dtype, "[2]", 0, dtype == "BF16" ? 4 : 8)), new byte[dtype == "BF16" ? 4 : 8]), "w.safetensors");
        var e = Assert.Throws<InvalidDataException>(() => f.ReadInt32s(f.GetTensor("w")));
        Assert.Contains("w.safetensors", e.Message);
        Assert.Contains($"dtype {dtype}; expected I32", e.Message);
    }

    [Fact]
    public void GetTensorOfMissingNameThrowsNamingIt()
    {
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(Header(Entry("present", "F32", "[1]", 0, 4)), F32(1)), "file.safetensors");
        var e = Assert.Throws<KeyNotFoundException>(() => f.GetTensor("absent.weight"));
        Assert.Contains("'absent.weight'", e.Message);
        Assert.Contains("file.safetensors", e.Message);
        Assert.False(f.TryGetTensor("absent.weight", out _));
    }

    [Fact]
    public void WrongDestinationSizeOrForeignTensorIsAnArgumentError()
    {
        string header = Header(Entry("w", "F32", "[3]", 0, 12));
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(File(header, F32(1, 2, 3)), "one");
        using SafeTensorsFile g = SafeTensorsFile.FromBytes(File(header, F32(4, 5, 6)), "two");
        TensorInfo w = f.GetTensor("w");
        Assert.Throws<ArgumentException>(() => f.ReadSingles(w, new float[2]));
        Assert.Throws<ArgumentException>(() => f.ReadSingles(w, new float[4]));
        Assert.Throws<ArgumentException>(() => f.ReadBytes(w, new byte[11]));
        var e = Assert.Throws<ArgumentException>(() => g.ReadSingles(w));
        Assert.Contains("does not belong", e.Message);
        Assert.Equal([4f, 5f, 6f], g.ReadSingles(g.GetTensor("w")));
    }

    [Fact]
    public void FromBytesReadsOnlyItsSlice()
    {
        // The image sits inside a larger buffer; bytes around it must not count as part of the file.
        byte[] image = File(Header(Entry("w", "F32", "[2]", 0, 8)), F32(7, 8));
        var big = new byte[image.Length + 64];
        new Random(1).NextBytes(big);
        image.CopyTo(big, 32);
        using SafeTensorsFile f = SafeTensorsFile.FromBytes(big.AsMemory(32, image.Length));
        Assert.Equal([7f, 8f], f.ReadSingles(f.GetTensor("w")));
        Assert.Throws<InvalidDataException>(() => SafeTensorsFile.FromBytes(big.AsMemory(32, image.Length + 1)).Dispose());
    }

    [Fact]
    public void HeaderLengthIsLittleEndian()
    {
        byte[] image = File("{}");
        BinaryPrimitives.WriteUInt64BigEndian(image, 2);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.FromBytes(image, "be").Dispose());
        Assert.Contains("exceeds the limit", e.Message);
        Assert.Equal("{}", Encoding.UTF8.GetString(image, 8, 2));
    }
}
