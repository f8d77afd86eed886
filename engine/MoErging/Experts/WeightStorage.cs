using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using MoErging.Execution;
using MoErging.Formats;
using MoErging.Numerics;

namespace MoErging.Experts;

/// <summary>
/// The arrays expert factors and router prototypes are held in, by <see cref="WeightPrecision"/>: <c>float[]</c> for
/// float32, <c>ushort[]</c> of bit patterns for the 16-bit formats, on the pinned object heap so the CPU loops read
/// them in place. Narrowing rounds to nearest, ties to even (a NaN stays a quiet NaN; a float32 beyond F16's range
/// becomes infinity); widening is exact.
/// </summary>
internal static unsafe class WeightStorage
{
    /// <summary>Refuses a value outside the enum.</summary>
    public static void Check(WeightPrecision precision, string parameter)
    {
        if (!Enum.IsDefined(precision))
        {
            throw new ArgumentOutOfRangeException(parameter, precision, "unknown weight precision: Float32, Float16 or BFloat16");
        }
    }

    /// <summary>Whether <paramref name="stored"/> is an array of the precision's type.</summary>
    public static bool Holds(Array stored, WeightPrecision precision) =>
        precision == WeightPrecision.Float32 ? stored is float[] : stored is ushort[];

    /// <summary>The safetensors dtype of the precision's elements.</summary>
    public static TensorDType DType(WeightPrecision precision) => precision switch
    {
        WeightPrecision.Float16 => TensorDType.F16,
        WeightPrecision.BFloat16 => TensorDType.BF16,
        _ => TensorDType.F32,
    };

    /// <summary>Bytes per element.</summary>
    public static int ElementSize(WeightPrecision precision) => precision == WeightPrecision.Float32 ? sizeof(float) : sizeof(ushort);

    /// <summary>A pinned, uninitialised array of <paramref name="length"/> elements of the precision's type.</summary>
    public static Array Allocate(WeightPrecision precision, int length) => precision == WeightPrecision.Float32
        ? GC.AllocateUninitializedArray<float>(length, pinned: true)
        : GC.AllocateUninitializedArray<ushort>(length, pinned: true);

    /// <summary>A pinned copy of <paramref name="values"/> at <paramref name="precision"/>, rounded once.</summary>
    public static Array From(ReadOnlySpan<float> values, WeightPrecision precision)
    {
        Array stored = Allocate(precision, values.Length);
        if (stored is float[] floats)
        {
            values.CopyTo(floats);
        }
        else
        {
            Round(values, precision, (ushort[])stored);
        }
        return stored;
    }

    /// <summary>Pinned float32 values held at <paramref name="precision"/>: the array itself for float32, else a rounded copy.</summary>
    public static Array Keep(float[] pinned, WeightPrecision precision) => precision == WeightPrecision.Float32 ? pinned : From(pinned, precision);

    /// <summary>Rounds float32 values to 16-bit patterns of <paramref name="precision"/> (Float16 or BFloat16).</summary>
    public static void Round(ReadOnlySpan<float> values, WeightPrecision precision, Span<ushort> bits)
    {
        if (precision == WeightPrecision.Float16)
        {
            FloatConversions.SingleToHalf(values, MemoryMarshal.Cast<ushort, Half>(bits));
        }
        else
        {
            FloatConversions.SingleToBFloat16(values, bits);
        }
    }

    /// <summary>Widens 16-bit patterns of <paramref name="precision"/> (Float16 or BFloat16) to float32, exactly.</summary>
    public static void Widen(ReadOnlySpan<ushort> bits, WeightPrecision precision, Span<float> values)
    {
        if (precision == WeightPrecision.Float16)
        {
            FloatConversions.HalfToSingle(MemoryMarshal.Cast<ushort, Half>(bits), values);
        }
        else
        {
            FloatConversions.BFloat16ToSingle(bits, values);
        }
    }

    /// <summary>Widens one 16-bit pattern of <paramref name="precision"/> (Float16 or BFloat16) to float32, exactly.</summary>
    public static float Widen(ushort bits, WeightPrecision precision) => precision == WeightPrecision.Float16
        ? (float)BitConverter.UInt16BitsToHalf(bits)
        : FloatConversions.BFloat16ToSingle(bits);

    /// <summary>
    /// <paramref name="stored"/> (held at <paramref name="from"/>) at precision <paramref name="to"/>, in a new pinned
    /// array: widened exactly, then rounded once to <paramref name="to"/>.
    /// </summary>
    public static Array Convert(Array stored, WeightPrecision from, WeightPrecision to)
    {
        if (stored is float[] floats)
        {
            return From(floats, to);
        }
        ReadOnlySpan<ushort> bits = (ushort[])stored;
        if (to == WeightPrecision.Float32)
        {
            float[] widened = GC.AllocateUninitializedArray<float>(bits.Length, pinned: true);
            Widen(bits, from, widened);
            return widened;
        }
        float[] exact = new float[bits.Length];
        Widen(bits, from, exact);
        return From(exact, to);
    }

    /// <summary>PEFT's B <c>[outputDim, rank]</c> transposed into a new pinned <c>[rank, outputDim]</c> array: a permutation of its elements.</summary>
    public static T[] Transposed<T>(ReadOnlySpan<T> b, int rank, int outputDim) where T : unmanaged
    {
        T[] bTransposed = GC.AllocateUninitializedArray<T>(b.Length, pinned: true);
        for (int o = 0; o < outputDim; o++)
        {
            for (int k = 0; k < rank; k++)
            {
                bTransposed[k * outputDim + o] = b[o * rank + k];
            }
        }
        return bTransposed;
    }

    /// <summary>The address of a pinned array's first element (stable: the pinned heap never moves it).</summary>
    public static void* Address(Array pinned) => Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));
}
