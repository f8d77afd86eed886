using System.Runtime.CompilerServices;

namespace MoErging.Execution.Cpu;

/// <summary>
/// How the CPU kernels read a weight row (expert factors, router prototypes) held at one <see cref="WeightPrecision"/>:
/// a register of float32 lanes at width <typeparamref name="TV"/>, or one value, widened exactly in registers. The
/// kernels are generic over it (a struct, so the JIT compiles one body per precision with the load inlined and no
/// per-element branch); the arithmetic after the load is the same float32 for all three. A kernel makes one reader
/// (<see cref="Create"/>) before its loops and loads through it: a reader holds the registers its widening needs (F16's
/// masks and bounds), made once per call, where vector constants written in the load were loaded again on every step of
/// a loop (the JIT neither hoists them nor keeps them in registers). It is made after the kernel's last call before the
/// loops, since no vector register keeps its value across a call and the JIT would keep the reader on the stack.
/// </summary>
/// <typeparam name="TSelf">The reader itself.</typeparam>
/// <typeparam name="T">The element type in memory: float, or ushort bit patterns.</typeparam>
/// <typeparam name="TV">The register width.</typeparam>
internal unsafe interface IWeights<TSelf, T, TV>
    where TSelf : struct, IWeights<TSelf, T, TV>
    where T : unmanaged
    where TV : unmanaged, ILanes<TV>
{
    /// <summary>A reader with its registers set.</summary>
    static abstract TSelf Create();

    /// <summary>Elements p[0] to p[TV.Count - 1] as float32 lanes.</summary>
    TV Load(T* p);

    /// <summary>Element p[0] as float32.</summary>
    static abstract float LoadOne(T* p);
}

/// <summary>float32 weights: plain loads.</summary>
internal readonly unsafe struct Float32Weights<TV> : IWeights<Float32Weights<TV>, float, TV> where TV : unmanaged, ILanes<TV>
{
    public static Float32Weights<TV> Create() => default;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public TV Load(float* p) => TV.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadOne(float* p) => *p;
}

/// <summary>bfloat16 weights: a bfloat16 is the upper half of a float32, so widening is a 16-bit shift (which drops the widening's extension bits).</summary>
internal readonly unsafe struct BFloat16Weights<TV> : IWeights<BFloat16Weights<TV>, ushort, TV> where TV : unmanaged, ILanes<TV>
{
    public static BFloat16Weights<TV> Create() => default;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public TV Load(ushort* p) => TV.ShiftLeft(TV.Widen16(p), 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadOne(ushort* p) => BitConverter.UInt32BitsToSingle((uint)*p << 16);
}

/// <summary>
/// IEEE binary16 weights, widened by integer and float32 vector arithmetic: .NET 10 exposes no F16C or AVX-512 FP16
/// conversion (no <c>vcvtph2ps</c> intrinsic; <c>System.Half</c> and TensorPrimitives.ConvertToSingle convert in
/// software), so this is the fallback, branch-free and exact. A half shifted left 13 has its magnitude's bits in
/// float32's place, so adding 112 (float32's exponent bias, 127, minus binary16's, 15) to the exponent gives a normal
/// half's value. A subnormal half (exponent 0, 10-bit mantissa m) comes out as 2⁻¹⁵ · (1 + m / 2¹⁰), and 2 · that −
/// 2⁻¹⁴ (one exact fused multiply-add) is its value 2⁻²⁴ · m; that is below the first value exactly where the first is
/// below 2⁻¹⁴ (for a normal half it is greater or equal), so the lesser of the two is the value either way. No operand
/// is a float32 subnormal: multiplying the shifted bits by 2¹¹² would be a step fewer, but subnormal operands take a
/// slow path on x64, and small trained factors hold many subnormal halves. Infinities and NaNs (exponent 31) get
/// float32's all-ones exponent, their mantissa (a NaN's payload) kept. The seven constants live in the reader's registers.
/// </summary>
internal readonly unsafe struct Float16Weights<TV> : IWeights<Float16Weights<TV>, ushort, TV> where TV : unmanaged, ILanes<TV>
{
    private const int Magnitude = 0x7FFF << 13, Rebias = 112 << 23, LargestFinite = (0x7C00 << 13) - 1;
    private const uint SignBit = 0x8000_0000u;

    /// <summary>2⁻¹⁴, binary16's smallest normal value.</summary>
    private const float SmallestNormal = 1f / 16384;

    private readonly TV _magnitude, _rebias, _largestFinite, _two, _minusSmallestNormal, _infinity, _signBit;

    /// <summary>A reader with its registers set (<see cref="Create"/>).</summary>
    public Float16Weights()
    {
        _magnitude = Bits(Magnitude);
        _rebias = Bits(Rebias);
        _largestFinite = Bits(LargestFinite);
        _two = TV.Broadcast(2f);
        _minusSmallestNormal = TV.Broadcast(-SmallestNormal);
        _infinity = TV.Broadcast(float.PositiveInfinity);
        _signBit = Bits(unchecked((int)SignBit));
    }

    public static Float16Weights<TV> Create() => new();

    private static TV Bits(int bits) => TV.Broadcast(BitConverter.Int32BitsToSingle(bits));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public TV Load(ushort* p)
    {
        // Sign-extended, the shifted half holds its sign in float32's sign bit, and copies of it in bits 28 to 30.
        TV shifted = TV.ShiftLeft(TV.Widen16(p), 13);
        TV placed = TV.And(shifted, _magnitude);
        TV normal = TV.AddBits(placed, _rebias);
        TV value = TV.Min(normal, TV.FusedMultiplyAdd(normal, _two, _minusSmallestNormal));
        // float32's infinity is its all-ones exponent alone; or-ing it in keeps the mantissa.
        value = TV.SelectAbove(placed, _largestFinite, TV.Or(value, _infinity), value);
        return TV.OrAnd(value, shifted, _signBit);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadOne(ushort* p)
    {
        uint half = *p;
        int placed = (int)(half << 13) & Magnitude;
        float normal = BitConverter.Int32BitsToSingle(placed + Rebias);
        float value = MathF.Min(normal, MathF.FusedMultiplyAdd(normal, 2f, -SmallestNormal));
        uint bits = BitConverter.SingleToUInt32Bits(value) | (placed > LargestFinite ? BitConverter.SingleToUInt32Bits(float.PositiveInfinity) : 0u);
        return BitConverter.UInt32BitsToSingle(bits | ((half << 16) & SignBit));
    }
}
