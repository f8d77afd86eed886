using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using MoErging.Kernels;

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

    /// <summary>
    /// Narrows one float32 to a bfloat16 bit pattern, rounding to nearest even; a NaN stays a quiet NaN of its sign.
    /// The GPU kernels' own conversion (<see cref="BFloat16Bits.FromSingle"/>), so a factor stored for a GPU and for the host round alike.
    /// </summary>
    public static ushort SingleToBFloat16(float value) => BFloat16Bits.FromSingle(value).Bits;

    /// <summary>Widens one bfloat16 bit pattern to float32.</summary>
    public static float BFloat16ToSingle(ushort bits) => new BFloat16Bits(bits).ToSingle();

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
