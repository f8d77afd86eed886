using System.Runtime.CompilerServices;

namespace MoErging.Execution.Cpu;

/// <summary>
/// How the CPU kernels read a weight row (expert factors, router prototypes) held at one <see cref="WeightPrecision"/>:
/// a register of float32 lanes at any width (<see cref="ILanes{TV}"/>), or one value, widened exactly in registers. The
/// kernels are generic over it (a struct, so the JIT compiles one body per precision with the load inlined and no
/// per-element branch); the arithmetic after the load is the same float32 for all three.
/// </summary>
/// <typeparam name="T">The element type in memory: float, or ushort bit patterns.</typeparam>
internal unsafe interface IWeights<T> where T : unmanaged
{
    /// <summary>Elements p[0] to p[TV.Count - 1] as float32 lanes.</summary>
    static abstract TV Load<TV>(T* p) where TV : unmanaged, ILanes<TV>;

    /// <summary>Element p[0] as float32.</summary>
    static abstract float LoadOne(T* p);
}

/// <summary>float32 weights: plain loads.</summary>
internal readonly unsafe struct Float32Weights : IWeights<float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TV Load<TV>(float* p) where TV : unmanaged, ILanes<TV> => TV.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadOne(float* p) => *p;
}

/// <summary>bfloat16 weights: a bfloat16 is the upper half of a float32, so widening is a zero extension and a 16-bit shift.</summary>
internal readonly unsafe struct BFloat16Weights : IWeights<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TV Load<TV>(ushort* p) where TV : unmanaged, ILanes<TV> => TV.ShiftLeft(TV.Widen16(p), 16);

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
    public static TV Load<TV>(ushort* p) where TV : unmanaged, ILanes<TV>
    {
        TV bits = TV.Widen16(p);
        TV magnitude = TV.And(bits, Magnitude);
        TV scaled = TV.Multiply(TV.ShiftLeft(magnitude, 13), TV.Broadcast(Rebias));
        // The magnitude is below 2¹⁵, so a signed compare (one instruction on x64) is the unsigned one.
        TV special = TV.And(TV.GreaterThan(magnitude, (int)Infinity - 1), AllOnesExponent);
        TV sign = TV.And(TV.ShiftLeft(bits, 16), SignBit);
        return TV.Or(TV.Or(scaled, special), sign);
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
