using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace MoErging.Numerics;

/// <summary>
/// Exact conversions between float32 and the 16-bit storage formats (IEEE half and bfloat16).
/// Widening is exact; narrowing rounds to nearest, ties to even, as PyTorch does.
/// </summary>
public static class FloatConversions
{
    /// <summary>Widens bfloat16 bit patterns to float32 (exact: bfloat16 is the top half of a float32).</summary>
    public static void BFloat16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        CheckLengths(source.Length, destination.Length);
        Span<uint> bits = MemoryMarshal.Cast<float, uint>(destination);
        for (int i = 0; i < source.Length; i++)
        {
            bits[i] = (uint)source[i] << 16;
        }
    }

    /// <summary>Narrows float32 to bfloat16 bit patterns, rounding to nearest even; NaN stays NaN.</summary>
    public static void SingleToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        CheckLengths(source.Length, destination.Length);
        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = SingleToBFloat16(source[i]);
        }
    }

    /// <summary>Narrows one float32 to a bfloat16 bit pattern, rounding to nearest even.</summary>
    public static ushort SingleToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            // Keep the sign and force a quiet NaN so truncation cannot turn it into infinity.
            return (ushort)((bits >> 16) | 0x0040);
        }
        uint roundingBias = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + roundingBias) >> 16);
    }

    /// <summary>Widens one bfloat16 bit pattern to float32.</summary>
    public static float BFloat16ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Widens IEEE half values to float32 (exact).</summary>
    public static void HalfToSingle(ReadOnlySpan<Half> source, Span<float> destination)
    {
        CheckLengths(source.Length, destination.Length);
        TensorPrimitives.ConvertToSingle(source, destination);
    }

    /// <summary>Narrows float32 to IEEE half, rounding to nearest even.</summary>
    public static void SingleToHalf(ReadOnlySpan<float> source, Span<Half> destination)
    {
        CheckLengths(source.Length, destination.Length);
        TensorPrimitives.ConvertToHalf(source, destination);
    }

    private static void CheckLengths(int source, int destination)
    {
        if (source != destination)
        {
            throw new ArgumentException($"destination has {destination} elements but source has {source}", nameof(destination));
        }
    }
}
