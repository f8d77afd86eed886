using ILGPU;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>
/// How a buffer's elements become float32 and back inside a kernel. Kernels are generic over a storage
/// struct, so one kernel body serves F32, F16 and BF16 buffers with F32 arithmetic. Kernels move eight elements
/// at a time (<see cref="Float8"/>): one 16-byte load for F16 and BF16, two for F32, at an element index that is a
/// multiple of 8 in a buffer whose start is 16-byte aligned (<see cref="Load8"/>); where that does not
/// hold (a row pitch that is not a multiple of 8, a view that starts mid-vector) they take the bounded
/// scalar forms (<see cref="Load8Within"/>).
/// </summary>
/// <typeparam name="T">The element type in memory.</typeparam>
public interface IStorage<T> where T : unmanaged
{
    /// <summary>The element as float32 (exact).</summary>
    float Load(T value);

    /// <summary>A float32 as an element (rounded to nearest, ties to even).</summary>
    T Store(float value);

    /// <summary>Elements <paramref name="index"/> to +7, read with 16-byte loads (the address must be 16-byte aligned).</summary>
    Float8 Load8(ArrayView<T> view, long index);

    /// <summary>Elements <paramref name="index"/> to +7, each read only if below <paramref name="end"/> (else 0).</summary>
    Float8 Load8Within(ArrayView<T> view, long index, long end);

    /// <summary>Writes elements <paramref name="index"/> to +7 with 16-byte stores (the address must be 16-byte aligned).</summary>
    void Store8(ArrayView<T> view, long index, in Float8 values);

    /// <summary>Writes those of elements <paramref name="index"/> to +7 that are below <paramref name="end"/>.</summary>
    void Store8Within(ArrayView<T> view, long index, long end, in Float8 values);
}

/// <summary>Eight float32 values in registers: what one vectorised step of a kernel loads, computes with and stores.</summary>
public struct Float8
{
#pragma warning disable CS1591 // the lanes of a vector
    public float F0, F1, F2, F3, F4, F5, F6, F7;
#pragma warning restore CS1591

    /// <summary>The dot product, summed in lane order.</summary>
    public readonly float Dot(in Float8 other) =>
        F0 * other.F0 + F1 * other.F1 + F2 * other.F2 + F3 * other.F3 + F4 * other.F4 + F5 * other.F5 + F6 * other.F6 + F7 * other.F7;

    /// <summary>Adds <paramref name="scale"/> · <paramref name="values"/>.</summary>
    public void Add(float scale, in Float8 values)
    {
        F0 += scale * values.F0;
        F1 += scale * values.F1;
        F2 += scale * values.F2;
        F3 += scale * values.F3;
        F4 += scale * values.F4;
        F5 += scale * values.F5;
        F6 += scale * values.F6;
        F7 += scale * values.F7;
    }

    /// <summary>Adds <paramref name="values"/>.</summary>
    public void Add(in Float8 values) => Add(1f, values);
}

/// <summary>Four float32 lanes: a 16-byte unit of F32 storage (PTX turns an aligned load of it into <c>ld.global.v4.f32</c>).</summary>
internal struct Float4
{
    public float X, Y, Z, W;
}

/// <summary>Four 32-bit words: a 16-byte unit of F16 or BF16 storage (eight 16-bit elements, low half first).</summary>
internal struct Bits16
{
    public uint X, Y, Z, W;
}

/// <summary>float32 elements.</summary>
public readonly struct F32 : IStorage<float>
{
    /// <inheritdoc />
    public float Load(float value) => value;

    /// <inheritdoc />
    public float Store(float value) => value;

    /// <inheritdoc />
    public Float8 Load8(ArrayView<float> view, long index)
    {
        // The alignment assertion lets ILGPU's PTX backend emit vector loads; on the CPU accelerator it checks the address.
        ArrayView<Float4> v = view.SubView(index, 8).AsAligned(16).Cast<Float4>();
        Float4 a = v[0], b = v[1];
        return new Float8 { F0 = a.X, F1 = a.Y, F2 = a.Z, F3 = a.W, F4 = b.X, F5 = b.Y, F6 = b.Z, F7 = b.W };
    }

    /// <inheritdoc />
    public Float8 Load8Within(ArrayView<float> view, long index, long end) => BoundedVectors.Load8Within<float, F32>(view, index, end);

    /// <inheritdoc />
    public void Store8(ArrayView<float> view, long index, in Float8 values)
    {
        ArrayView<Float4> v = view.SubView(index, 8).AsAligned(16).Cast<Float4>();
        v[0] = new Float4 { X = values.F0, Y = values.F1, Z = values.F2, W = values.F3 };
        v[1] = new Float4 { X = values.F4, Y = values.F5, Z = values.F6, W = values.F7 };
    }

    /// <inheritdoc />
    public void Store8Within(ArrayView<float> view, long index, long end, in Float8 values) => BoundedVectors.Store8Within<float, F32>(view, index, end, values);
}

/// <summary>
/// IEEE binary16 elements held as their bit patterns (<c>ushort</c>, the layout of System.Half and
/// ILGPU.Half), converted in integer arithmetic (<see cref="HalfBits"/>): OpenCL has no half type without
/// an extension, and ILGPU's own float → Half truncates on its CPU accelerator. The portable kernels use it.
/// </summary>
public readonly struct F16 : IStorage<ushort>
{
    /// <inheritdoc />
    public float Load(ushort value) => HalfBits.ToSingle(value);

    /// <inheritdoc />
    public ushort Store(float value) => HalfBits.FromSingle(value);

    /// <inheritdoc />
    public Float8 Load8(ArrayView<ushort> view, long index) => HalfVectors.Load8<F16>(view, index);

    /// <inheritdoc />
    public Float8 Load8Within(ArrayView<ushort> view, long index, long end) => BoundedVectors.Load8Within<ushort, F16>(view, index, end);

    /// <inheritdoc />
    public void Store8(ArrayView<ushort> view, long index, in Float8 values) => HalfVectors.Store8<F16>(view, index, values);

    /// <inheritdoc />
    public void Store8Within(ArrayView<ushort> view, long index, long end, in Float8 values) => BoundedVectors.Store8Within<ushort, F16>(view, index, end, values);
}

/// <summary>
/// Binary16 bits as <see cref="F16"/>, converted by the hardware on CUDA (<c>cvt.f32.f16</c>,
/// <c>cvt.rn.f16.f32</c>: exact widening, narrowing to nearest, ties to even, as <see cref="HalfBits"/>)
/// and by <see cref="HalfBits"/> on ILGPU's CPU accelerator, so the two agree. The warp kernels use it;
/// the portable ones cannot, since ILGPU refuses the half type on an OpenCL device without fp16.
/// </summary>
public readonly struct F16Cuda : IStorage<ushort>
{
    /// <inheritdoc />
    public float Load(ushort value) =>
        Accelerator.CurrentType == AcceleratorType.Cuda ? (float)Interop.IntAsFloat(value) : HalfBits.ToSingle(value);

    /// <inheritdoc />
    public ushort Store(float value) =>
        Accelerator.CurrentType == AcceleratorType.Cuda ? Interop.FloatAsInt((ILGPU.Half)value) : HalfBits.FromSingle(value);

    /// <inheritdoc />
    public Float8 Load8(ArrayView<ushort> view, long index) => HalfVectors.Load8<F16Cuda>(view, index);

    /// <inheritdoc />
    public Float8 Load8Within(ArrayView<ushort> view, long index, long end) => BoundedVectors.Load8Within<ushort, F16Cuda>(view, index, end);

    /// <inheritdoc />
    public void Store8(ArrayView<ushort> view, long index, in Float8 values) => HalfVectors.Store8<F16Cuda>(view, index, values);

    /// <inheritdoc />
    public void Store8Within(ArrayView<ushort> view, long index, long end, in Float8 values) => BoundedVectors.Store8Within<ushort, F16Cuda>(view, index, end, values);
}

/// <summary>
/// A bfloat16 held as its bit pattern (the top half of a float32): the element type of <see cref="BF16"/> storage.
/// A type of its own rather than <c>ushort</c>, which F16 bits already use, so the launchers tell the two storages
/// apart by element type; a struct of one <c>ushort</c> is two bytes on the host, in ILGPU's OpenCL C and in PTX
/// alike, and the kernels read it eight at a time as 16 bytes (<see cref="Bits16"/>), so it costs nothing over a <c>ushort</c>.
/// </summary>
public readonly struct BFloat16Bits
{
    /// <summary>The bfloat16 with these bits.</summary>
    public BFloat16Bits(ushort bits) => Bits = bits;

    /// <summary>The bit pattern: sign, 8 exponent bits, 7 mantissa bits.</summary>
    public ushort Bits { get; }

    /// <summary>Widens to float32 (exact: a 16-bit shift).</summary>
    public float ToSingle() => Interop.IntAsFloat((uint)Bits << 16);

    /// <summary>
    /// Narrows float32 to bfloat16, rounding to nearest, ties to even (values past the largest bfloat16's midpoint
    /// round to infinity); a NaN stays a NaN of the same sign, made quiet so that dropping its low bits cannot leave
    /// an infinity. Integer code only, so the host and every kernel give the same bits.
    /// </summary>
    public static BFloat16Bits FromSingle(float value)
    {
        uint x = Interop.FloatAsInt(value);
        if ((x & 0x7FFF_FFFF) > 0x7F80_0000)
        {
            return new BFloat16Bits((ushort)((x >> 16) | 0x40));
        }
        return new BFloat16Bits((ushort)((x + 0x7FFF + ((x >> 16) & 1)) >> 16));
    }
}

/// <summary>
/// bfloat16 elements (<see cref="BFloat16Bits"/>), widened by a shift and narrowed by <see cref="BFloat16Bits.FromSingle"/>.
/// Both kernel variants use it: widening is a bit move on any hardware, so CUDA has no faster conversion to offer, and the
/// engine's kernels only read it (they write activations alone), so its narrowing is the integer code on CUDA too.
/// Expert factors and prototypes take it (<c>WeightPrecision.BFloat16</c>); activations stay F32 or F16.
/// </summary>
public readonly struct BF16 : IStorage<BFloat16Bits>
{
    /// <inheritdoc />
    public float Load(BFloat16Bits value) => value.ToSingle();

    /// <inheritdoc />
    public BFloat16Bits Store(float value) => BFloat16Bits.FromSingle(value);

    /// <inheritdoc />
    public Float8 Load8(ArrayView<BFloat16Bits> view, long index)
    {
        // Element 2i is a word's low half, shifted up; element 2i + 1 its high half, already in place.
        Bits16 b = view.SubView(index, 8).AsAligned(16).Cast<Bits16>()[0];
        return new Float8
        {
            F0 = Interop.IntAsFloat(b.X << 16), F1 = Interop.IntAsFloat(b.X & 0xFFFF_0000),
            F2 = Interop.IntAsFloat(b.Y << 16), F3 = Interop.IntAsFloat(b.Y & 0xFFFF_0000),
            F4 = Interop.IntAsFloat(b.Z << 16), F5 = Interop.IntAsFloat(b.Z & 0xFFFF_0000),
            F6 = Interop.IntAsFloat(b.W << 16), F7 = Interop.IntAsFloat(b.W & 0xFFFF_0000),
        };
    }

    /// <inheritdoc />
    public Float8 Load8Within(ArrayView<BFloat16Bits> view, long index, long end) => BoundedVectors.Load8Within<BFloat16Bits, BF16>(view, index, end);

    /// <inheritdoc />
    public void Store8(ArrayView<BFloat16Bits> view, long index, in Float8 values) =>
        view.SubView(index, 8).AsAligned(16).Cast<Bits16>()[0] = new Bits16
        {
            X = Pack(values.F0, values.F1),
            Y = Pack(values.F2, values.F3),
            Z = Pack(values.F4, values.F5),
            W = Pack(values.F6, values.F7),
        };

    /// <inheritdoc />
    public void Store8Within(ArrayView<BFloat16Bits> view, long index, long end, in Float8 values) => BoundedVectors.Store8Within<BFloat16Bits, BF16>(view, index, end, values);

    private static uint Pack(float low, float high) => BFloat16Bits.FromSingle(low).Bits | ((uint)BFloat16Bits.FromSingle(high).Bits << 16);
}

/// <summary>The bounded element-by-element forms of every storage: each element read or written only below the end.</summary>
internal static class BoundedVectors
{
    public static Float8 Load8Within<T, TS>(ArrayView<T> view, long index, long end)
        where T : unmanaged
        where TS : struct, IStorage<T>
    {
        TS s = default;
        return new Float8
        {
            F0 = index < end ? s.Load(view[index]) : 0f,
            F1 = index + 1 < end ? s.Load(view[index + 1]) : 0f,
            F2 = index + 2 < end ? s.Load(view[index + 2]) : 0f,
            F3 = index + 3 < end ? s.Load(view[index + 3]) : 0f,
            F4 = index + 4 < end ? s.Load(view[index + 4]) : 0f,
            F5 = index + 5 < end ? s.Load(view[index + 5]) : 0f,
            F6 = index + 6 < end ? s.Load(view[index + 6]) : 0f,
            F7 = index + 7 < end ? s.Load(view[index + 7]) : 0f,
        };
    }

    public static void Store8Within<T, TS>(ArrayView<T> view, long index, long end, in Float8 values)
        where T : unmanaged
        where TS : struct, IStorage<T>
    {
        TS s = default;
        if (index < end) view[index] = s.Store(values.F0);
        if (index + 1 < end) view[index + 1] = s.Store(values.F1);
        if (index + 2 < end) view[index + 2] = s.Store(values.F2);
        if (index + 3 < end) view[index + 3] = s.Store(values.F3);
        if (index + 4 < end) view[index + 4] = s.Store(values.F4);
        if (index + 5 < end) view[index + 5] = s.Store(values.F5);
        if (index + 6 < end) view[index + 6] = s.Store(values.F6);
        if (index + 7 < end) view[index + 7] = s.Store(values.F7);
    }
}

/// <summary>Eight halves at a time with 16-byte loads and stores, through either conversion.</summary>
internal static class HalfVectors
{
    public static Float8 Load8<TS>(ArrayView<ushort> view, long index) where TS : struct, IStorage<ushort>
    {
        TS s = default;
        Bits16 b = view.SubView(index, 8).AsAligned(16).Cast<Bits16>()[0];
        return new Float8
        {
            F0 = s.Load((ushort)b.X), F1 = s.Load((ushort)(b.X >> 16)),
            F2 = s.Load((ushort)b.Y), F3 = s.Load((ushort)(b.Y >> 16)),
            F4 = s.Load((ushort)b.Z), F5 = s.Load((ushort)(b.Z >> 16)),
            F6 = s.Load((ushort)b.W), F7 = s.Load((ushort)(b.W >> 16)),
        };
    }

    public static void Store8<TS>(ArrayView<ushort> view, long index, in Float8 values) where TS : struct, IStorage<ushort> =>
        view.SubView(index, 8).AsAligned(16).Cast<Bits16>()[0] = new Bits16
        {
            X = Pack<TS>(values.F0, values.F1),
            Y = Pack<TS>(values.F2, values.F3),
            Z = Pack<TS>(values.F4, values.F5),
            W = Pack<TS>(values.F6, values.F7),
        };

    private static uint Pack<TS>(float low, float high) where TS : struct, IStorage<ushort>
    {
        TS s = default;
        return s.Store(low) | ((uint)s.Store(high) << 16);
    }
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

/// <summary>The row layout the vectorised kernels need: pitches in whole 16-byte vectors, and which views may take vector loads.</summary>
public static class VectorRows
{
    /// <summary>Elements per vector step (<see cref="Float8"/>).</summary>
    public const int Width = 8;

    /// <summary>A row pitch for <paramref name="length"/> elements: rounded up to a multiple of <see cref="Width"/>, so every row starts 16-byte aligned.</summary>
    public static int Pitch(int length) => (length + Width - 1) / Width * Width;

    /// <summary>
    /// Whether rows of <paramref name="rowLength"/> elements packed from the start of <paramref name="view"/>
    /// all start 16-byte aligned (the length a multiple of <see cref="Width"/>, the view's first element on a
    /// 16-byte boundary), so a kernel may read them with vector loads. An OpenCL buffer's base is aligned
    /// by the driver (CL_DEVICE_MEM_BASE_ADDR_ALIGN is at least 1,024 bits), and its handle is no address.
    /// </summary>
    public static bool Aligned<TView>(TView view, int rowLength, Accelerator accelerator)
        where TView : IContiguousArrayView
    {
        if (rowLength % Width != 0)
        {
            return false;
        }
        if (view.Buffer is null)
        {
            return true; // an empty view: nothing is read
        }
        long start = accelerator is ILGPU.Runtime.OpenCL.CLAccelerator ? 0 : view.Buffer.NativePtr.ToInt64();
        return (start + view.IndexInBytes) % 16 == 0;
    }
}

/// <summary>
/// How a kernel reads a row of activations, decided once per launch and compiled into separate loops (a kernel
/// is generic over it): with 16-byte vector loads, or element by element up to the row's end. A branch per
/// load would split the loop into blocks the compiler cannot batch loads across.
/// </summary>
internal interface IRowAccess
{
    /// <summary>Elements <paramref name="i"/> to +7 of the row starting at <paramref name="row"/>, zero past <paramref name="length"/>.</summary>
    Float8 Load<T, S>(ArrayView<T> view, long row, long i, long length)
        where T : unmanaged
        where S : struct, IStorage<T>;
}

/// <summary>Rows that start 16-byte aligned and are whole vectors long (<see cref="VectorRows.Aligned"/>).</summary>
internal readonly struct VectorAccess : IRowAccess
{
    public Float8 Load<T, S>(ArrayView<T> view, long row, long i, long length)
        where T : unmanaged
        where S : struct, IStorage<T> => default(S).Load8(view, row + i);
}

/// <summary>Any rows: element loads, bounded by the row's length.</summary>
internal readonly struct BoundedAccess : IRowAccess
{
    public Float8 Load<T, S>(ArrayView<T> view, long row, long i, long length)
        where T : unmanaged
        where S : struct, IStorage<T> => default(S).Load8Within(view, row + i, row + length);
}
