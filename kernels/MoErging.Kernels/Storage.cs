using ILGPU;

namespace MoErging.Kernels;

/// <summary>
/// How a buffer's elements become float32 and back inside a kernel. Kernels are generic over a storage
/// struct, so one kernel body serves F32 and F16 buffers with F32 arithmetic.
/// </summary>
/// <typeparam name="T">The element type in memory.</typeparam>
public interface IStorage<T> where T : unmanaged
{
    /// <summary>The element as float32 (exact).</summary>
    float Load(T value);

    /// <summary>A float32 as an element (rounded to nearest, ties to even).</summary>
    T Store(float value);
}

/// <summary>float32 elements.</summary>
public readonly struct F32 : IStorage<float>
{
    /// <inheritdoc />
    public float Load(float value) => value;

    /// <inheritdoc />
    public float Store(float value) => value;
}

/// <summary>
/// IEEE binary16 elements held as their bit patterns (<c>ushort</c>, the layout of System.Half and
/// ILGPU.Half). The conversions are written out in integer arithmetic: ILGPU's own float → Half
/// truncates on its CPU accelerator while CUDA rounds, and results must not depend on the backend.
/// </summary>
public readonly struct F16 : IStorage<ushort>
{
    /// <inheritdoc />
    public float Load(ushort value) => HalfBits.ToSingle(value);

    /// <inheritdoc />
    public ushort Store(float value) => HalfBits.FromSingle(value);
}

/// <summary>Exact binary16 ↔ float32 conversions usable on the host and in kernels.</summary>
public static class HalfBits
{
    /// <summary>
    /// Widens binary16 bits to float32 (exact). Selects instead of branches, and int → float only:
    /// a <c>uint</c> → <c>float</c> conversion goes through float64 in ILGPU's IL translation.
    /// </summary>
    public static float ToSingle(ushort bits)
    {
        int magnitude = bits & 0x7FFF;
        int exponent = magnitude >> 10;
        // Normal numbers: rebias the exponent by 127 - 15; infinity and NaN: all exponent bits set.
        int widened = (magnitude << 13) + (exponent == 0x1F ? 0x7000_0000 : 0x3800_0000);
        // Zero and subnormals: mantissa · 2⁻²⁴, exact in float32.
        float small = (magnitude & 0x3FF) * 5.9604645E-8f;
        float value = exponent == 0 ? small : Interop.IntAsFloat((uint)widened);
        return (bits & 0x8000) != 0 ? -value : value;
    }

    /// <summary>Narrows float32 to binary16 bits, rounding to nearest, ties to even; NaN stays NaN.</summary>
    public static ushort FromSingle(float value)
    {
        uint x = Interop.FloatAsInt(value);
        uint sign = (x >> 16) & 0x8000;
        x &= 0x7FFF_FFFF;
        if (x >= 0x7F80_0000)
        {
            return (ushort)(sign | 0x7C00 | (x > 0x7F80_0000 ? 0x200u : 0u));
        }
        if (x >= 0x477F_F000)
        {
            return (ushort)(sign | 0x7C00); // 65520 and above round to infinity
        }
        if (x < 0x3880_0000)
        {
            // Below 2⁻¹⁴: a subnormal half, the mantissa (with its implicit bit) shifted right with rounding.
            int shift = 126 - (int)(x >> 23);
            if (shift > 24)
            {
                return (ushort)sign; // below half the smallest subnormal (or exactly it: ties to even, 0)
            }
            uint m = (x & 0x7F_FFFF) | 0x80_0000;
            uint kept = m >> shift;
            uint rest = m & ((1u << shift) - 1);
            uint halfway = 1u << (shift - 1);
            if (rest > halfway || (rest == halfway && (kept & 1) != 0))
            {
                kept++;
            }
            return (ushort)(sign | kept);
        }
        uint r = (x >> 13) - (112u << 10);
        uint remainder = x & 0x1FFF;
        if (remainder > 0x1000 || (remainder == 0x1000 && (r & 1) != 0))
        {
            r++; // a carry into the exponent is the right result
        }
        return (ushort)(sign | r);
    }
}
