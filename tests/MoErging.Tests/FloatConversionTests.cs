using System.Runtime.InteropServices;
using MoErging.Numerics;

namespace MoErging.Tests;

/// <summary>
/// F16 and BF16 exactness: widening every one of the 65,536 patterns is exact and narrowing it back gives
/// the same pattern; narrowing random floats rounds to nearest, ties to even, checked against
/// <see cref="Narrow"/>, which rounds from the IEEE definitions in float64 without the engine's code.
/// </summary>
public sealed class FloatConversionTests
{
    private static ushort[] AllPatterns() => [.. Enumerable.Range(0, 65536).Select(i => (ushort)i)];

    private static bool IsHalfNaN(ushort bits) => (bits & 0x7C00) == 0x7C00 && (bits & 0x03FF) != 0;

    private static bool IsBFloat16NaN(ushort bits) => (bits & 0x7F80) == 0x7F80 && (bits & 0x007F) != 0;

    private static void CheckWidened(ushort bits, float widened, double expected, string what)
    {
        if (double.IsNaN(expected))
        {
            Assert.True(float.IsNaN(widened), $"{what} 0x{bits:X4} is NaN but widened to {widened:R}");
            return;
        }
        Assert.True((double)widened == expected && double.IsNegative(widened) == double.IsNegative(expected),
            $"{what} 0x{bits:X4} should widen to {expected:R}, got {widened:R} (0x{BitConverter.SingleToUInt32Bits(widened):X8})");
    }

    [Fact]
    public void EveryHalfPatternWidensExactlyAndNarrowsBack()
    {
        ushort[] patterns = AllPatterns();
        ReadOnlySpan<Half> halves = MemoryMarshal.Cast<ushort, Half>(patterns);
        var widened = new float[patterns.Length];
        FloatConversions.HalfToSingle(halves, widened);
        var back = new Half[patterns.Length];
        FloatConversions.SingleToHalf(widened, back);

        // The same through an odd offset and one element at a time, so both vector bodies and scalar tails run.
        var widenedOdd = new float[patterns.Length - 3];
        FloatConversions.HalfToSingle(halves[3..], widenedOdd);
        var one = new float[1];
        var oneHalf = new Half[1];

        for (int i = 0; i < patterns.Length; i++)
        {
            ushort bits = patterns[i];
            CheckWidened(bits, widened[i], Narrow.HalfValue(bits), "F16");
            ushort backBits = BitConverter.HalfToUInt16Bits(back[i]);
            if (IsHalfNaN(bits))
            {
                Assert.True(IsHalfNaN(backBits), $"F16 NaN 0x{bits:X4} narrowed back to 0x{backBits:X4}, not a NaN");
            }
            else
            {
                Assert.True(backBits == bits, $"F16 0x{bits:X4} -> {widened[i]:R} -> 0x{backBits:X4}");
            }
            if (i >= 3)
            {
                Assert.True(widenedOdd[i - 3].Equals(widened[i]), $"F16 0x{bits:X4} widened differently at an odd offset");
            }
            if (i % 61 == 0 || (bits & 0x7C00) is 0 or 0x7C00)
            {
                FloatConversions.HalfToSingle(halves.Slice(i, 1), one);
                Assert.True(one[0].Equals(widened[i]), $"F16 0x{bits:X4} widened differently alone");
                FloatConversions.SingleToHalf(one, oneHalf);
                ushort alone = BitConverter.HalfToUInt16Bits(oneHalf[0]);
                Assert.True(IsHalfNaN(bits) ? IsHalfNaN(alone) : alone == bits, $"F16 0x{bits:X4} narrowed back alone to 0x{alone:X4}");
            }
        }
    }

    [Fact]
    public void EveryBFloat16PatternWidensExactlyAndNarrowsBack()
    {
        ushort[] patterns = AllPatterns();
        var widened = new float[patterns.Length];
        FloatConversions.BFloat16ToSingle(patterns, widened);
        var back = new ushort[patterns.Length];
        FloatConversions.SingleToBFloat16(widened, back);
        for (int i = 0; i < patterns.Length; i++)
        {
            ushort bits = patterns[i];
            CheckWidened(bits, widened[i], Narrow.BFloat16Value(bits), "BF16");
            Assert.True(FloatConversions.BFloat16ToSingle(bits).Equals(widened[i]), $"BF16 0x{bits:X4}: scalar and span widening differ");
            ushort backBits = back[i];
            if (IsBFloat16NaN(bits))
            {
                Assert.True(IsBFloat16NaN(backBits), $"BF16 NaN 0x{bits:X4} narrowed back to 0x{backBits:X4}, not a NaN");
            }
            else
            {
                Assert.True(backBits == bits, $"BF16 0x{bits:X4} -> {widened[i]:R} -> 0x{backBits:X4}");
            }
            Assert.Equal(backBits, FloatConversions.SingleToBFloat16(widened[i]));
        }
    }

    /// <summary>
    /// Random floats of three kinds: random patterns over the exponents that matter, exact midpoints
    /// between neighbouring 16-bit values (ties), and the floats just above and below those midpoints.
    /// </summary>
    private static float[] Samples(TestData data, int count, int minExponent, int maxExponent, Func<int, double> midpoint, int finitePatterns)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            uint sign = (uint)data.Rng.Next(2) << 31;
            switch (i % 4)
            {
                case 0:
                    uint exponent = (uint)(data.Rng.Next(minExponent, maxExponent + 1) + 127);
                    uint mantissa = (uint)data.Rng.Next(1 << 23);
                    values[i] = BitConverter.UInt32BitsToSingle(sign | exponent << 23 | mantissa);
                    break;
                default:
                    // Midpoint between pattern k and k + 1 (k + 1 may be infinity: the overflow threshold).
                    double tie = midpoint(data.Rng.Next(finitePatterns));
                    float f = (float)tie;
                    Assert.True(f == tie, $"{data}: midpoint {tie:R} is not a float");
                    f = (i % 4) switch
                    {
                        1 => f,
                        2 => MathF.BitIncrement(f),
                        _ => MathF.BitDecrement(f),
                    };
                    values[i] = sign != 0 ? -f : f;
                    break;
            }
        }
        // Fixed edge cases.
        float[] edges =
        [
            0f, -0f, float.Epsilon, -float.Epsilon, float.MaxValue, float.MinValue, float.PositiveInfinity, float.NegativeInfinity,
            65504f, 65519.99f, 65520f, 65536f, 1e-8f, 2.9802322e-8f /* 2^-25: half of the smallest half subnormal */,
            3.4028235e38f, 3.3895314e38f /* BF16 max */, 1.0000001f, 1.00390625f /* 1 + 2^-8: BF16 tie */, 1.01171875f /* 1 + 3·2^-8: BF16 tie */,
        ];
        return [.. values, .. edges];
    }

    [Fact]
    public void NarrowingToHalfRoundsToNearestEven()
    {
        var data = new TestData();
        // Half's subnormals start at 2^-24; its finite range ends below 2^16. Exponents -30..17 cover
        // underflow to zero, subnormals, normals and overflow to infinity.
        float[] values = Samples(data, 4000, -30, 17, Narrow.HalfMidpoint, 0x7C00);
        var got = new Half[values.Length];
        FloatConversions.SingleToHalf(values, got);
        for (int i = 0; i < values.Length; i++)
        {
            float v = values[i];
            ushort expected = Narrow.ToHalfBits(v);
            ushort actual = BitConverter.HalfToUInt16Bits(got[i]);
            Assert.True(actual == expected,
                $"{data}: {v:R} (0x{BitConverter.SingleToUInt32Bits(v):X8}) should narrow to F16 0x{expected:X4}, got 0x{actual:X4}");
            // .NET's double -> Half conversion is correctly rounded (nearest, ties to even) and a float
            // widens to double exactly, so (Half)(double)v is a second, independent reference.
            ushort dotnet = BitConverter.HalfToUInt16Bits((Half)(double)v);
            Assert.True(actual == dotnet, $"{data}: {v:R} narrowed to 0x{actual:X4} but (Half)(double) gives 0x{dotnet:X4}");
        }
    }

    [Fact]
    public void NarrowingToBFloat16RoundsToNearestEven()
    {
        var data = new TestData();
        // BF16 has float32's exponent range, so every exponent matters: -133 (its subnormals) up to 127.
        float[] values = Samples(data, 4000, -127, 127, Narrow.BFloat16Midpoint, 0x7F80);
        var got = new ushort[values.Length];
        FloatConversions.SingleToBFloat16(values, got);
        for (int i = 0; i < values.Length; i++)
        {
            float v = values[i];
            ushort expected = Narrow.ToBFloat16Bits(v);
            Assert.True(got[i] == expected,
                $"{data}: {v:R} (0x{BitConverter.SingleToUInt32Bits(v):X8}) should narrow to BF16 0x{expected:X4}, got 0x{got[i]:X4}");
            Assert.Equal(got[i], FloatConversions.SingleToBFloat16(v));
        }
        // float32 subnormals (exponent field 0) too: BF16 keeps the top 7 of their 23 mantissa bits.
        for (int i = 0; i < 500; i++)
        {
            float v = BitConverter.UInt32BitsToSingle((uint)data.Rng.Next(1 << 23) | ((uint)data.Rng.Next(2) << 31));
            Assert.True(FloatConversions.SingleToBFloat16(v) == Narrow.ToBFloat16Bits(v), $"{data}: subnormal {v:R}");
        }
    }

    [Fact]
    public void NarrowingNaNGivesNaN()
    {
        var data = new TestData();
        // Payloads only in the low 16 bits are the trap for BF16: truncation would give infinity.
        var nans = new List<float>
        {
            float.NaN,
            BitConverter.UInt32BitsToSingle(0x7F800001),
            BitConverter.UInt32BitsToSingle(0xFF800001),
            BitConverter.UInt32BitsToSingle(0x7F80FFFF),
            BitConverter.UInt32BitsToSingle(0x7FC00000),
            BitConverter.UInt32BitsToSingle(0x7FFFFFFF),
            BitConverter.UInt32BitsToSingle(0xFFFFFFFF),
            BitConverter.UInt32BitsToSingle(0x7F802000), // payload below half's 10 mantissa bits
        };
        for (int i = 0; i < 200; i++)
        {
            nans.Add(BitConverter.UInt32BitsToSingle(0x7F800000 | ((uint)data.Rng.Next(2) << 31) | (uint)data.Rng.Next(1, 1 << 23)));
        }
        float[] values = [.. nans];
        var bf = new ushort[values.Length];
        FloatConversions.SingleToBFloat16(values, bf);
        var half = new Half[values.Length];
        FloatConversions.SingleToHalf(values, half);
        for (int i = 0; i < values.Length; i++)
        {
            uint bits = BitConverter.SingleToUInt32Bits(values[i]);
            Assert.True(IsBFloat16NaN(bf[i]), $"{data}: NaN 0x{bits:X8} -> BF16 0x{bf[i]:X4}");
            Assert.True(IsBFloat16NaN(FloatConversions.SingleToBFloat16(values[i])), $"{data}: NaN 0x{bits:X8} (scalar)");
            Assert.True(Half.IsNaN(half[i]), $"{data}: NaN 0x{bits:X8} -> F16 0x{BitConverter.HalfToUInt16Bits(half[i]):X4}");
        }
    }

    [Fact]
    public void MismatchedLengthsThrow()
    {
        Assert.Throws<ArgumentException>(() => FloatConversions.HalfToSingle(new Half[3], new float[2]));
        Assert.Throws<ArgumentException>(() => FloatConversions.SingleToHalf(new float[3], new Half[4]));
        Assert.Throws<ArgumentException>(() => FloatConversions.BFloat16ToSingle(new ushort[3], new float[2]));
        Assert.Throws<ArgumentException>(() => FloatConversions.SingleToBFloat16(new float[1], new ushort[2]));
    }
}
