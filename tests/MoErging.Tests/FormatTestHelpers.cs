using System.Buffers.Binary;
using System.Text;

namespace MoErging.Tests;

/// <summary>Builds safetensors images byte by byte, independently of the engine's writer.</summary>
public static class StBytes
{
    /// <summary>8-byte little-endian length (the real header length unless <paramref name="declaredLength"/>), header, data.</summary>
    public static byte[] File(string header, byte[]? data = null, ulong? declaredLength = null) =>
        File(Encoding.UTF8.GetBytes(header), data, declaredLength);

    /// <summary>Same with a header given as raw bytes (for invalid UTF-8).</summary>
    public static byte[] File(byte[] header, byte[]? data = null, ulong? declaredLength = null)
    {
        data ??= [];
        var file = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, declaredLength ?? (ulong)header.Length);
        header.CopyTo(file, 8);
        data.CopyTo(file, 8 + header.Length);
        return file;
    }

    /// <summary>One tensor entry as header JSON text: <c>"name":{"dtype":..,"shape":..,"data_offsets":..}</c>.</summary>
    public static string Entry(string name, string dtype, string shape, long begin, long end) =>
        $"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{begin},{end}]}}";

    /// <summary>A header object of the given entries.</summary>
    public static string Header(params string[] entries) => "{" + string.Join(",", entries) + "}";

    /// <summary>The bytes of float32 values, little-endian.</summary>
    public static byte[] F32(params float[] values)
    {
        var bytes = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
        }
        return bytes;
    }

    /// <summary>The bytes of 16-bit patterns, little-endian.</summary>
    public static byte[] U16(params ushort[] values)
    {
        var bytes = new byte[values.Length * 2];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(i * 2), values[i]);
        }
        return bytes;
    }

    /// <summary>The bytes of int32 values, little-endian.</summary>
    public static byte[] I32(params int[] values)
    {
        var bytes = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(i * 4), values[i]);
        }
        return bytes;
    }
}

/// <summary>A fresh temporary directory, deleted with everything in it on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "moerging-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    /// <summary>A path inside the directory (not created).</summary>
    public string Sub(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}

/// <summary>
/// Float16 / bfloat16 arithmetic written from the IEEE definitions, sharing no code with the engine:
/// decoding a bit pattern into a double, and rounding a value to nearest, ties to even, by comparing it
/// with the exact midpoint of its two neighbours in a table of every finite value.
/// </summary>
public static class Narrow
{
    /// <summary>Half: 5 exponent bits (bias 15), 10 mantissa bits.</summary>
    public static double HalfValue(ushort bits) => Decode(bits, exponentBits: 5, mantissaBits: 10);

    /// <summary>BFloat16: 8 exponent bits (bias 127), 7 mantissa bits.</summary>
    public static double BFloat16Value(ushort bits) => Decode(bits, exponentBits: 8, mantissaBits: 7);

    private static double Decode(ushort bits, int exponentBits, int mantissaBits)
    {
        int bias = (1 << (exponentBits - 1)) - 1;
        int maxExponent = (1 << exponentBits) - 1;
        double sign = (bits & 0x8000) != 0 ? -1 : 1;
        int exponent = (bits >> mantissaBits) & maxExponent;
        int mantissa = bits & ((1 << mantissaBits) - 1);
        if (exponent == maxExponent)
        {
            return mantissa == 0 ? sign * double.PositiveInfinity : double.NaN;
        }
        return exponent == 0
            ? sign * Math.ScaleB(mantissa, 1 - bias - mantissaBits)
            : sign * Math.ScaleB((1 << mantissaBits) + mantissa, exponent - bias - mantissaBits);
    }

    // table[i] = value of the non-negative pattern i, for every finite pattern, and one more entry: the
    // infinity pattern standing for 2^(emax+1), where the next binade would start. Rounding against that
    // entry gives IEEE overflow: values at or past the midpoint of max and 2^(emax+1) go to infinity
    // (the tie goes to infinity because max has an odd mantissa and infinity's pattern is even).
    private static readonly double[] HalfTable = Table(0x7C00, HalfValue, 65536.0);
    private static readonly double[] BFloat16Table = Table(0x7F80, BFloat16Value, Math.ScaleB(1.0, 128));

    private static double[] Table(int infinityBits, Func<ushort, double> decode, double beyondMax)
    {
        var table = new double[infinityBits + 1];
        for (int i = 0; i < infinityBits; i++)
        {
            table[i] = decode((ushort)i);
        }
        table[infinityBits] = beyondMax;
        return table;
    }

    /// <summary>The half pattern nearest to <paramref name="value"/> (ties to even); not for NaN.</summary>
    public static ushort ToHalfBits(double value) => Round(value, HalfTable);

    /// <summary>The bfloat16 pattern nearest to <paramref name="value"/> (ties to even); not for NaN.</summary>
    public static ushort ToBFloat16Bits(double value) => Round(value, BFloat16Table);

    private static ushort Round(double value, double[] table)
    {
        if (double.IsNaN(value))
        {
            throw new ArgumentException("NaN has no nearest value", nameof(value));
        }
        ushort sign = double.IsNegative(value) ? (ushort)0x8000 : (ushort)0;
        double a = Math.Abs(value);
        int last = table.Length - 1;
        if (a >= table[last])
        {
            return (ushort)(sign | last);
        }
        // Largest i with table[i] <= a (table is increasing).
        int lo = 0, hi = last;
        while (hi - lo > 1)
        {
            int mid = (lo + hi) / 2;
            if (table[mid] <= a)
            {
                lo = mid;
            }
            else
            {
                hi = mid;
            }
        }
        if (table[lo] == a)
        {
            return (ushort)(sign | lo);
        }
        // Both neighbours have at most 12 significant bits and lie within a factor 2 of each other,
        // so their sum and its half are exact in double and the comparison below is exact.
        double midpoint = (table[lo] + table[hi]) / 2;
        int pick = a < midpoint ? lo : a > midpoint ? hi : (lo % 2 == 0 ? lo : hi);
        return (ushort)(sign | pick);
    }

    /// <summary>Exact midpoint of the non-negative patterns i and i + 1, for building ties.</summary>
    public static double HalfMidpoint(int i) => (HalfTable[i] + HalfTable[i + 1]) / 2;

    /// <summary>Exact midpoint of the non-negative patterns i and i + 1, for building ties.</summary>
    public static double BFloat16Midpoint(int i) => (BFloat16Table[i] + BFloat16Table[i + 1]) / 2;
}
