using MoErging.Execution;

namespace MoErging.Tests;

/// <summary>
/// Values as an engine of a <see cref="WeightPrecision"/> holds them, for the references: each rounded to nearest,
/// ties to even, by <see cref="Narrow"/> (the tests' own rounding from the IEEE definitions, sharing no code with the
/// engine), then widened exactly. Float32 leaves them as they are. Only for finite values in the format's range.
/// </summary>
public static class Stored
{
    /// <summary>The 16-bit pattern nearest to <paramref name="value"/>.</summary>
    public static ushort Bits(double value, WeightPrecision precision) =>
        precision == WeightPrecision.Float16 ? Narrow.ToHalfBits(value) : Narrow.ToBFloat16Bits(value);

    /// <summary>The value of a 16-bit pattern.</summary>
    public static double Value(ushort bits, WeightPrecision precision) =>
        precision == WeightPrecision.Float16 ? Narrow.HalfValue(bits) : Narrow.BFloat16Value(bits);

    /// <summary>Every value rounded to the precision (exact in float32).</summary>
    public static float[] Values(ReadOnlySpan<float> values, WeightPrecision precision)
    {
        float[] stored = values.ToArray();
        if (precision != WeightPrecision.Float32)
        {
            for (int i = 0; i < stored.Length; i++)
            {
                stored[i] = (float)Value(Bits(stored[i], precision), precision);
            }
        }
        return stored;
    }

    /// <summary>Each expert's A and B rounded to the precision (null stays null).</summary>
    public static RawFactors?[] Factors(IReadOnlyList<RawFactors?> experts, WeightPrecision precision) =>
        experts.Select(f => f is null ? null : f with { A = Values(f.A, precision), B = Values(f.B, precision) }).ToArray();
}
