using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace MoErging.Execution.Cpu;

/// <summary>
/// One SIMD register of float32 lanes, at one width. The CPU kernels are generic over it (a struct, so the JIT compiles
/// one body per width with every operation inlined), and <see cref="CpuKernels"/> picks the widest the hardware runs at
/// full speed: 512 bits where <see cref="Vector512.IsHardwareAccelerated"/> (AVX-512 machines that do not slow down for
/// it), else 256, else 128. <c>Vector&lt;T&gt;</c> cannot serve: the runtime keeps it at 256 bits on AVX-512 hardware
/// unless the host process opts in, and that halves the FMA peak of a core with 512-bit units.
/// The bit operations serve the exact widening of 16-bit weights (<see cref="IWeights{TSelf, T, TV}"/>).
/// </summary>
internal unsafe interface ILanes<TV> where TV : unmanaged, ILanes<TV>
{
    /// <summary>float32 lanes per register.</summary>
    static abstract int Count { get; }

    /// <summary>
    /// Tokens an outer-product tile spans (router scores, <see cref="CpuScores"/>, and the shrink and the expand): 8 where
    /// the register file holds 32 vectors (AVX-512), so 8 tokens × 2 or 3 vectors of sums accumulate in registers beside
    /// the operands; 6 with 16 registers at 256 bits (12 sums, two operands and a broadcast: 4 left a 256-bit core's two
    /// multiply-add pipes short of independent chains, and T = 512 ran about a tenth slower); 4 at 128 bits.
    /// </summary>
    static abstract int TileTokens { get; }

    static abstract TV Load(float* p);

    static abstract void Store(TV value, float* p);

    static abstract TV Broadcast(float value);

    /// <summary>a · b + c, rounded once.</summary>
    static abstract TV FusedMultiplyAdd(TV a, TV b, TV c);

    /// <summary>
    /// accumulator += a · *b in every lane, rounded once. In place and with the broadcast read from memory, so the JIT
    /// compiles it to one multiply-add into the accumulator's register with an embedded broadcast: written as
    /// accumulator = FusedMultiplyAdd(a, Broadcast(*b), accumulator) over this wrapper it took a broadcast, a multiply-add
    /// into a scratch register and a move, three instructions where the kernels' loops have room for one.
    /// </summary>
    static abstract void MultiplyAdd(ref TV accumulator, TV a, float* b);

    static abstract TV Add(TV a, TV b);

    /// <summary>The lesser of each pair of lanes, for operands that are neither NaN nor zeros of both signs (one instruction).</summary>
    static abstract TV Min(TV a, TV b);

    /// <summary>The sum of the lanes, in a fixed order for the width.</summary>
    static abstract float Sum(TV value);

    /// <summary>Count 16-bit elements sign-extended to 32-bit lanes (raw bits), reading exactly 2 · Count bytes.</summary>
    static abstract TV Widen16(ushort* p);

    /// <summary>Each lane's bits shifted left.</summary>
    static abstract TV ShiftLeft(TV bits, int count);

    /// <summary>Each lane's bits plus <paramref name="value"/>'s, as integers (wrapping).</summary>
    static abstract TV AddBits(TV bits, TV value);

    /// <summary>Each lane's bits and <paramref name="mask"/>'s.</summary>
    static abstract TV And(TV bits, TV mask);

    static abstract TV Or(TV a, TV b);

    /// <summary>a | (b &amp; mask), bit by bit (one instruction on AVX-512).</summary>
    static abstract TV OrAnd(TV a, TV b, TV mask);

    /// <summary>
    /// Each lane from <paramref name="whereAbove"/> where <paramref name="bits"/>, read as a signed integer, exceed
    /// <paramref name="bound"/>'s, else from <paramref name="elsewhere"/> (one expression, so that AVX-512 compiles it to
    /// a compare into a mask register and a masked operation).
    /// </summary>
    static abstract TV SelectAbove(TV bits, TV bound, TV whereAbove, TV elsewhere);
}

/// <summary>512-bit registers (AVX-512).</summary>
internal readonly unsafe struct Lanes512 : ILanes<Lanes512>
{
    private readonly Vector512<float> _v;

    private Lanes512(Vector512<float> v) => _v = v;

    public static int Count => Vector512<float>.Count;

    public static int TileTokens => 8;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 Load(float* p) => new(Vector512.Load(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Lanes512 value, float* p) => value._v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 Broadcast(float value) => new(Vector512.Create(value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 FusedMultiplyAdd(Lanes512 a, Lanes512 b, Lanes512 c) => new(Vector512.FusedMultiplyAdd(a._v, b._v, c._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MultiplyAdd(ref Lanes512 accumulator, Lanes512 a, float* b) =>
        Unsafe.As<Lanes512, Vector512<float>>(ref accumulator) = Vector512.FusedMultiplyAdd(a._v, Vector512.Create(*b), accumulator._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 Add(Lanes512 a, Lanes512 b) => new(a._v + b._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 Min(Lanes512 a, Lanes512 b) => new(Vector512.MinNative(a._v, b._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Lanes512 value) => Vector512.Sum(value._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 Widen16(ushort* p) => new(Vector512.WidenLower(Vector256.Load((short*)p).ToVector512Unsafe()).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 ShiftLeft(Lanes512 bits, int count) => new(Vector512.ShiftLeft(bits._v.AsUInt32(), count).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 AddBits(Lanes512 bits, Lanes512 value) => new((bits._v.AsInt32() + value._v.AsInt32()).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 And(Lanes512 bits, Lanes512 mask) => new(bits._v & mask._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 Or(Lanes512 a, Lanes512 b) => new(a._v | b._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 OrAnd(Lanes512 a, Lanes512 b, Lanes512 mask) =>
        // 0xF8 is the truth table of a | (b & c); without AVX-512 (a software Vector512) the plain form.
        new(Avx512F.IsSupported ? Avx512F.TernaryLogic(a._v, b._v, mask._v, 0xF8) : a._v | (b._v & mask._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes512 SelectAbove(Lanes512 bits, Lanes512 bound, Lanes512 whereAbove, Lanes512 elsewhere) =>
        new(Vector512.ConditionalSelect(Vector512.GreaterThan(bits._v.AsInt32(), bound._v.AsInt32()).AsSingle(), whereAbove._v, elsewhere._v));
}

/// <summary>256-bit registers (AVX2).</summary>
internal readonly unsafe struct Lanes256 : ILanes<Lanes256>
{
    private readonly Vector256<float> _v;

    private Lanes256(Vector256<float> v) => _v = v;

    public static int Count => Vector256<float>.Count;

    public static int TileTokens => 6;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 Load(float* p) => new(Vector256.Load(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Lanes256 value, float* p) => value._v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 Broadcast(float value) => new(Vector256.Create(value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 FusedMultiplyAdd(Lanes256 a, Lanes256 b, Lanes256 c) => new(Vector256.FusedMultiplyAdd(a._v, b._v, c._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MultiplyAdd(ref Lanes256 accumulator, Lanes256 a, float* b) =>
        Unsafe.As<Lanes256, Vector256<float>>(ref accumulator) = Vector256.FusedMultiplyAdd(a._v, Vector256.Create(*b), accumulator._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 Add(Lanes256 a, Lanes256 b) => new(a._v + b._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 Min(Lanes256 a, Lanes256 b) => new(Vector256.MinNative(a._v, b._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Lanes256 value) => Vector256.Sum(value._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 Widen16(ushort* p) => new(Vector256.WidenLower(Vector128.Load((short*)p).ToVector256Unsafe()).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 ShiftLeft(Lanes256 bits, int count) => new(Vector256.ShiftLeft(bits._v.AsUInt32(), count).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 AddBits(Lanes256 bits, Lanes256 value) => new((bits._v.AsInt32() + value._v.AsInt32()).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 And(Lanes256 bits, Lanes256 mask) => new(bits._v & mask._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 Or(Lanes256 a, Lanes256 b) => new(a._v | b._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 OrAnd(Lanes256 a, Lanes256 b, Lanes256 mask) => new(a._v | (b._v & mask._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 SelectAbove(Lanes256 bits, Lanes256 bound, Lanes256 whereAbove, Lanes256 elsewhere) =>
        new(Vector256.ConditionalSelect(Vector256.GreaterThan(bits._v.AsInt32(), bound._v.AsInt32()).AsSingle(), whereAbove._v, elsewhere._v));
}

/// <summary>128-bit registers (SSE, Arm NEON), and the software fallback where no SIMD is accelerated.</summary>
internal readonly unsafe struct Lanes128 : ILanes<Lanes128>
{
    private readonly Vector128<float> _v;

    private Lanes128(Vector128<float> v) => _v = v;

    public static int Count => Vector128<float>.Count;

    public static int TileTokens => 4;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 Load(float* p) => new(Vector128.Load(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Lanes128 value, float* p) => value._v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 Broadcast(float value) => new(Vector128.Create(value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 FusedMultiplyAdd(Lanes128 a, Lanes128 b, Lanes128 c) => new(Vector128.FusedMultiplyAdd(a._v, b._v, c._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MultiplyAdd(ref Lanes128 accumulator, Lanes128 a, float* b) =>
        Unsafe.As<Lanes128, Vector128<float>>(ref accumulator) = Vector128.FusedMultiplyAdd(a._v, Vector128.Create(*b), accumulator._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 Add(Lanes128 a, Lanes128 b) => new(a._v + b._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 Min(Lanes128 a, Lanes128 b) => new(Vector128.MinNative(a._v, b._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Lanes128 value) => Vector128.Sum(value._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 Widen16(ushort* p) => new(Vector128.WidenLower(Vector64.Load((short*)p).ToVector128Unsafe()).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 ShiftLeft(Lanes128 bits, int count) => new(Vector128.ShiftLeft(bits._v.AsUInt32(), count).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 AddBits(Lanes128 bits, Lanes128 value) => new((bits._v.AsInt32() + value._v.AsInt32()).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 And(Lanes128 bits, Lanes128 mask) => new(bits._v & mask._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 Or(Lanes128 a, Lanes128 b) => new(a._v | b._v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 OrAnd(Lanes128 a, Lanes128 b, Lanes128 mask) => new(a._v | (b._v & mask._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 SelectAbove(Lanes128 bits, Lanes128 bound, Lanes128 whereAbove, Lanes128 elsewhere) =>
        new(Vector128.ConditionalSelect(Vector128.GreaterThan(bits._v.AsInt32(), bound._v.AsInt32()).AsSingle(), whereAbove._v, elsewhere._v));
}
