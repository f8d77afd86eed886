using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace MoErging.Execution.Cpu;

/// <summary>
/// How the CPU kernels read a weight row (expert factors, router prototypes) held at one <see cref="WeightPrecision"/>:
/// a vector of <see cref="Vector{T}.Count"/> float32 lanes, or one value, widened exactly in registers. The kernels are
/// generic over it (a struct, so the JIT compiles one body per precision with the load inlined and no per-element
/// branch); the arithmetic after the load is the same float32 for all three.
/// </summary>
/// <typeparam name="T">The element type in memory: float, or ushort bit patterns.</typeparam>
internal unsafe interface IWeights<T> where T : unmanaged
{
    /// <summary>Elements p[0] to p[W - 1] as float32 lanes.</summary>
    static abstract Vector<float> Load(T* p);

    /// <summary>Element p[0] as float32.</summary>
    static abstract float LoadOne(T* p);
}

/// <summary>float32 weights: plain loads.</summary>
internal readonly unsafe struct Float32Weights : IWeights<float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Load(float* p) => Unsafe.ReadUnaligned<Vector<float>>(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadOne(float* p) => *p;
}

/// <summary>bfloat16 weights: a bfloat16 is the upper half of a float32, so widening is a zero extension and a 16-bit shift.</summary>
internal readonly unsafe struct BFloat16Weights : IWeights<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Load(ushort* p) => Vector.ShiftLeft(Wide16.Load(p), 16).As<uint, float>();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadOne(ushort* p) => BitConverter.UInt32BitsToSingle((uint)*p << 16);
}

/// <summary>
/// IEEE binary16 weights, widened by integer and float32 vector arithmetic: .NET 10 exposes no F16C or AVX-512 FP16
/// conversion (no <c>vcvtph2ps</c> intrinsic; <c>System.Half</c> and TensorPrimitives.ConvertToSingle convert in
/// software), so this is the fallback, branch-free and exact. The magnitude's bits shifted into float32's place are
/// the value times 2⁻¹¹², for normal and subnormal halves alike, so one multiply by 2¹¹² rebiases them; infinities and
/// NaNs (exponent 31) get float32's all-ones exponent instead, their mantissa (a NaN's payload) kept as it is.
/// </summary>
internal readonly unsafe struct Float16Weights : IWeights<ushort>
{
    private const uint Magnitude = 0x7FFF, Infinity = 0x7C00, SignBit = 0x8000_0000u, AllOnesExponent = 0x7F80_0000u;

    /// <summary>2¹¹²: float32's exponent bias (127) minus binary16's (15), exact.</summary>
    private const float Rebias = (float)(1UL << 56) * (1UL << 56);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Load(ushort* p)
    {
        Vector<uint> bits = Wide16.Load(p);
        Vector<uint> magnitude = bits & new Vector<uint>(Magnitude);
        Vector<uint> scaled = (Vector.ShiftLeft(magnitude, 13).As<uint, float>() * new Vector<float>(Rebias)).As<float, uint>();
        // The magnitude is below 2¹⁵, so a signed compare (one instruction on x64) is the unsigned one.
        Vector<uint> special = Vector.GreaterThan(magnitude.As<uint, int>(), new Vector<int>((int)Infinity - 1)).As<int, uint>()
            & new Vector<uint>(AllOnesExponent);
        Vector<uint> sign = Vector.ShiftLeft(bits, 16) & new Vector<uint>(SignBit);
        return (scaled | special | sign).As<uint, float>();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadOne(ushort* p)
    {
        uint bits = *p, magnitude = bits & Magnitude;
        uint scaled = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(magnitude << 13) * Rebias);
        uint special = magnitude >= Infinity ? AllOnesExponent : 0u;
        return BitConverter.UInt32BitsToSingle(scaled | special | ((bits << 16) & SignBit));
    }
}

/// <summary>W 16-bit elements zero-extended to 32-bit lanes, reading exactly 2 · W bytes (never past a row's end).</summary>
internal static unsafe class Wide16
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<uint> Load(ushort* p)
    {
        // Vector<T>'s width is a JIT-time constant: one branch survives, a single zero-extending load (vpmovzxwd).
        if (Vector<uint>.Count == Vector256<uint>.Count)
        {
            return Vector256.WidenLower(Vector128.Load(p).ToVector256Unsafe()).AsVector();
        }
        if (Vector<uint>.Count == Vector512<uint>.Count)
        {
            return Vector512.WidenLower(Vector256.Load(p).ToVector512Unsafe()).AsVector();
        }
        return Vector128.WidenLower(Vector64.Load(p).ToVector128Unsafe()).AsVector();
    }
}
