using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using MoErging.Execution;
using MoErging.Execution.Cpu;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Merging;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>
/// 16-bit weight storage on the CPU (<see cref="WeightPrecision.BFloat16"/>, <see cref="WeightPrecision.Float16"/>): a
/// 16-bit run equals the float32 run on the widened values bit for bit (same summation order); an engine converts a
/// library held at another precision once per module, reads one held at its own in place, packs each router's
/// prototypes once, and frees its copies on Release; adapters stored in the format keep their bits, eagerly and lazily, and other dtypes are rounded
/// once (checked against the tests' own IEEE rounding, <see cref="Narrow"/>); NaN, infinities, overflow, subnormals and
/// ties; the exact widening of every 16-bit pattern by the kernels' loads. (The forward and router tests against the
/// float64 reference run at each precision through their <c>...OnCpuBFloat16</c> and <c>...OnCpuFloat16</c> classes.)
/// </summary>
public sealed class WeightPrecisionTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    public static TheoryData<WeightPrecision> SixteenBit() => new() { WeightPrecision.BFloat16, WeightPrecision.Float16 };

    private static LoraFactors At(RawFactors f, WeightPrecision precision) =>
        new(f.A, f.B, f.Rank, f.InputDim, f.OutputDim, f.Scaling, precision: precision);

    private static ExpertLibrary LibraryOf(IReadOnlyList<RawFactors> raw, Func<int, WeightPrecision> precision) =>
        new(raw.Select((f, e) => new Expert($"e{e}", [new(Module, At(f, precision(e)))])));

    private static void AssertBitsEqual<T>(ReadOnlySpan<T> expected, ReadOnlySpan<T> actual, string what) where T : unmanaged
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        ReadOnlySpan<byte> e = MemoryMarshal.AsBytes(expected), a = MemoryMarshal.AsBytes(actual);
        for (int i = 0; i < e.Length; i++)
        {
            Assert.True(e[i] == a[i], $"{what}: differs at byte {i} (element {i / Unsafe.SizeOf<T>()})");
        }
    }

    /// <summary>
    /// The engine at a 16-bit precision, on a library held at it, against a float32 engine on the same values widened
    /// (exact): every output bit, every decision, for routed output mixing (float32 and Half activations), parameter
    /// mixing and several thread counts, on shapes that cross every vector tail and work-item block. The router's
    /// prototypes are representable at the precision, so both engines score with the same values.
    /// </summary>
    [Theory]
    [MemberData(nameof(SixteenBit))]
    public void ASixteenBitRunIsTheFloat32RunOnTheWidenedValuesBitForBit(WeightPrecision precision)
    {
        var data = new TestData();
        const int dIn = 301, dOut = 1100, tokens = 37;
        int[] ranks = [16, 5, 9, 1, 12, 4, 7];
        RawFactors[] raw = [.. ranks.Select(r => data.Factors(r, dIn, dOut))];
        ExpertLibrary held = LibraryOf(raw, _ => precision);
        // The widened values, read back through the float accessors (A widens, CopyB gives PEFT's B).
        ExpertLibrary widened = new(held.Experts.Select(x =>
        {
            LoraFactors f = x.Modules[Module];
            var b = new float[f.OutputDim * f.Rank];
            f.CopyB(b);
            return new Expert(x.Name, [new(Module, new LoraFactors(f.A, b, f.Rank, dIn, dOut, f.Scaling))]);
        }));
        float[] prototypes = Stored.Values(ArrowRouter.ComputePrototypes(held.Module(Module)), precision);
        var router = new LinearRouter(prototypes, dIn, new RoutingOptions(3, 0.7f), InputNormalization.None, ScoreFunction.AbsoluteValue);
        float[] x = data.Normal(tokens * dIn), yBase = data.Normal(tokens * dOut);
        Half[] xh = x.Select(v => (Half)v).ToArray(), yh = yBase.Select(v => (Half)v).ToArray();

        foreach (int threads in new[] { 1, 2, 3 })
        {
            using Engine sixteen = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = threads, WeightPrecision = precision });
            using Engine thirtyTwo = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = threads });
            using Session s16 = sixteen.CreateSession(), s32 = thirtyTwo.CreateSession();
            string where = $"{data} ({precision}, {threads} threads)";

            var (d16, d32) = (new RoutingDecision(), new RoutingDecision());
            float[] y16 = (float[])yBase.Clone(), y32 = (float[])yBase.Clone();
            s16.Forward(held.Module(Module), router, x, d16, y16);
            s32.Forward(widened.Module(Module), router, x, d32, y32);
            AssertBitsEqual<int>(d32.ExpertIds, d16.ExpertIds, $"{where}: expert ids");
            AssertBitsEqual<float>(d32.Weights, d16.Weights, $"{where}: weights");
            AssertBitsEqual<float>(y32, y16, $"{where}: routed output mixing");

            Half[] yh16 = (Half[])yh.Clone(), yh32 = (Half[])yh.Clone();
            s16.Forward(held.Module(Module), router, xh, d16, yh16);
            s32.Forward(widened.Module(Module), router, xh, d32, yh32);
            AssertBitsEqual<Half>(yh32, yh16, $"{where}: Half activations");

            // Parameter mixing: the chosen experts need one rank and scaling, so each token takes expert 1 twice.
            var assigned = new RoutingDecision();
            assigned.Assign([.. Enumerable.Range(0, tokens * 2).Select(i => i % 2 == 0 ? 1 : (i % 3 == 0 ? -1 : 1))], data.Normal(tokens * 2), 2, ranks.Length);
            y16 = (float[])yBase.Clone();
            y32 = (float[])yBase.Clone();
            s16.Forward(held.Module(Module), assigned, Aggregation.Parameter, x, y16);
            s32.Forward(widened.Module(Module), assigned, Aggregation.Parameter, x, y32);
            AssertBitsEqual<float>(y32, y16, $"{where}: parameter mixing");
        }
    }

    /// <summary>
    /// A 16-bit engine on a float32 library converts the module's experts (rounded once, as a library held at the
    /// precision rounds them) and the router's prototypes, each once, and gives that library's results bit for bit;
    /// a library of mixed precisions gives them too. Every module gets one packed copy (Bᵀ's panels, A where it is
    /// converted), as does the router; Release frees each copy, a later use makes it again, and a copy whose module the
    /// host no longer holds goes when the next new copy is made.
    /// </summary>
    [Theory]
    [MemberData(nameof(SixteenBit))]
    public void AnEngineConvertsALibraryOfAnotherPrecisionOnceAndReleaseFreesIt(WeightPrecision precision)
    {
        var data = new TestData();
        RawFactors[] raw = [.. new[] { 3, 8, 1, 5 }.Select(r => data.Factors(r, 40, 29))];
        ExpertLibrary float32 = LibraryOf(raw, _ => WeightPrecision.Float32);
        ExpertLibrary held = LibraryOf(raw, _ => precision);
        ExpertLibrary mixed = LibraryOf(raw, e => e % 2 == 0 ? precision : WeightPrecision.Float32);
        float[] x = data.Normal(9 * 40), yBase = data.Normal(9 * 29);
        // A linear router, not an ArrowRouter: it is tied to no module, so it routes all three libraries alike.
        var arrow = new LinearRouter(ArrowRouter.ComputePrototypes(float32.Module(Module)), 40, new RoutingOptions(2),
            InputNormalization.None, ScoreFunction.AbsoluteValue);
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 2, WeightPrecision = precision });
        Assert.Equal(precision, engine.WeightPrecision);
        var cpu = (CpuBackend)engine.Implementation;
        using Session session = engine.CreateSession();
        var decision = new RoutingDecision();

        float[] Forward(AdaptedModule module)
        {
            float[] y = (float[])yBase.Clone();
            session.Forward(module, arrow, x, decision, y);
            return y;
        }

        float[] reference = Forward(held.Module(Module));
        Assert.Equal(2, cpu.CopyCount); // the router's prototypes and the module's panels
        AssertBitsEqual<float>(reference, Forward(float32.Module(Module)), $"{data}: the converted float32 library");
        Assert.Equal(3, cpu.CopyCount);
        AssertBitsEqual<float>(reference, Forward(float32.Module(Module)), $"{data}: the converted float32 library, warm");
        Assert.Equal(3, cpu.CopyCount); // converted once
        AssertBitsEqual<float>(reference, Forward(mixed.Module(Module)), $"{data}: a library of mixed precisions");
        Assert.Equal(4, cpu.CopyCount);

        Assert.True(engine.Release(float32.Module(Module)));
        Assert.False(engine.Release(float32.Module(Module))); // nothing left to free
        Assert.True(engine.Release(held.Module(Module)));
        Assert.Equal(2, cpu.CopyCount);
        Assert.True(engine.Release(arrow));
        Assert.Equal(1, cpu.CopyCount);
        AssertBitsEqual<float>(reference, Forward(float32.Module(Module)), $"{data}: converted again after Release");
        Assert.Equal(3, cpu.CopyCount);

        // A module the host no longer holds goes when the next new copy comes.
        ForwardOnce(session, data, arrow, x, yBase, decision);
        Assert.Equal(4, cpu.CopyCount);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        Forward(float32.Module(Module)); // already there: nothing is swept
        Assert.Equal(4, cpu.CopyCount);
        ExpertLibrary other = LibraryOf(raw, _ => WeightPrecision.Float32);
        Forward(other.Module(Module)); // new: the collected one is freed first
        Assert.Equal(4, cpu.CopyCount);
        GC.KeepAlive(other);
        GC.KeepAlive(mixed);

        // A float32 engine on a float32 library converts nothing: its copies are the router's panels and the module's.
        using Engine plain = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 1 });
        using Session plainSession = plain.CreateSession();
        plainSession.Forward(float32.Module(Module), arrow, x, new RoutingDecision(), (float[])yBase.Clone());
        Assert.Equal(2, ((CpuBackend)plain.Implementation).CopyCount);
        Assert.True(plain.Release(float32.Module(Module)));
        Assert.True(plain.Release(arrow));
        Assert.Equal(0, ((CpuBackend)plain.Implementation).CopyCount);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ForwardOnce(Session session, TestData data, LinearRouter router, float[] x, float[] yBase, RoutingDecision decision)
    {
        RawFactors[] raw = [.. new[] { 3, 8, 1, 5 }.Select(r => data.Factors(r, 40, 29))];
        ExpertLibrary dropped = LibraryOf(raw, _ => WeightPrecision.Float32);
        session.Forward(dropped.Module(Module), router, x, decision, (float[])yBase.Clone());
    }

    public static TheoryData<TensorDType, WeightPrecision, bool> FileCases()
    {
        var cases = new TheoryData<TensorDType, WeightPrecision, bool>();
        foreach (bool lazy in new[] { false, true })
        {
            foreach (TensorDType dtype in new[] { TensorDType.F32, TensorDType.F16, TensorDType.BF16 })
            {
                foreach (WeightPrecision precision in new[] { WeightPrecision.Float32, WeightPrecision.Float16, WeightPrecision.BFloat16 })
                {
                    cases.Add(dtype, precision, lazy);
                }
            }
        }
        return cases;
    }

    /// <summary>
    /// An adapter's tensors, written with the safetensors writer in each dtype and loaded at each precision, eagerly
    /// and lazily: a tensor in the precision's own format keeps its bits (B transposed is a permutation of them); any
    /// other is widened exactly and rounded once (to the value the tests' rounding gives); float32 holds the file's
    /// values exactly. Written back in the same format, the bits come out unchanged.
    /// </summary>
    [Theory]
    [MemberData(nameof(FileCases))]
    public void AdaptersKeepTheBitsOfTheirOwnFormatAndAreRoundedOnceOtherwise(TensorDType dtype, WeightPrecision precision, bool lazy)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        RawFactors raw = data.Factors(5, 37, 23);
        string dir = tmp.Sub("adapter");
        PeftAdapter.Write(dir, new Expert("x", [new(Module, At(raw, WeightPrecision.Float32))]), dtype);
        double[] fileA, fileB;
        ushort[]? fileABits = null, fileBBits = null;
        using (SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(dir, PeftAdapter.WeightsFileName)))
        {
            TensorInfo a = file.GetTensor(Module + ".lora_A.weight"), b = file.GetTensor(Module + ".lora_B.weight");
            fileA = [.. file.ReadSingles(a).Select(v => (double)v)];
            fileB = [.. file.ReadSingles(b).Select(v => (double)v)];
            if (dtype != TensorDType.F32)
            {
                fileABits = new ushort[a.ElementCount];
                fileBBits = new ushort[b.ElementCount];
                file.ReadBytes(a, MemoryMarshal.AsBytes(fileABits.AsSpan()));
                file.ReadBytes(b, MemoryMarshal.AsBytes(fileBBits.AsSpan()));
            }
        }
        string where = $"{data} ({dtype} file at {precision}, lazy {lazy})";
        ExpertLibrary library = ExpertLibrary.Load([dir], new ExpertLibraryOptions { Lazy = lazy, WeightPrecision = precision });
        LoraFactors f = library.Module(Module).Factors(0)!;
        Assert.Equal(precision, f.Precision);
        Assert.Equal(dtype, f.StorageType);
        Assert.Equal(!lazy, f.IsLoaded);

        // Bᵀ in PEFT's order: row k of Bᵀ is column k of B.
        int rank = raw.Rank, dOut = raw.OutputDim;
        double TransposedB(double[] b, int i) => b[(i % dOut) * rank + i / dOut];
        if (precision == WeightPrecision.Float32)
        {
            Assert.Throws<InvalidOperationException>(() => f.ABits.Length);
            float[] a = f.A.ToArray(), bT = f.BTransposed.ToArray();
            Assert.True(a.Select((v, i) => v == fileA[i]).All(ok => ok), $"{where}: A is not the file's values");
            Assert.True(bT.Select((v, i) => v == TransposedB(fileB, i)).All(ok => ok), $"{where}: Bᵀ is not the file's values");
            return;
        }
        ushort[] aBits = f.ABits.ToArray(), bTBits = f.BTransposedBits.ToArray();
        if (dtype == WeightStorage.DType(precision))
        {
            AssertBitsEqual<ushort>(fileABits!, aBits, $"{where}: A kept bit for bit");
            AssertBitsEqual<ushort>([.. Enumerable.Range(0, bTBits.Length).Select(i => fileBBits![(i % dOut) * rank + i / dOut])], bTBits, $"{where}: Bᵀ kept bit for bit");
            using var back = new TempDir();
            PeftAdapter.Write(back.Path, library.Experts[0], dtype);
            using SafeTensorsFile written = SafeTensorsFile.Open(Path.Combine(back.Path, PeftAdapter.WeightsFileName));
            var again = new ushort[aBits.Length];
            written.ReadBytes(written.GetTensor(Module + ".lora_A.weight"), MemoryMarshal.AsBytes(again.AsSpan()));
            AssertBitsEqual<ushort>(fileABits!, again, $"{where}: A written back");
        }
        else
        {
            for (int i = 0; i < aBits.Length; i++)
            {
                Assert.True(aBits[i] == Stored.Bits(fileA[i], precision), $"{where}: A[{i}] = {fileA[i]:R} held as 0x{aBits[i]:X4}, not its rounding 0x{Stored.Bits(fileA[i], precision):X4}");
            }
            for (int i = 0; i < bTBits.Length; i++)
            {
                ushort expected = Stored.Bits(TransposedB(fileB, i), precision);
                Assert.True(bTBits[i] == expected, $"{where}: Bᵀ[{i}] held as 0x{bTBits[i]:X4}, not 0x{expected:X4}");
            }
        }
        // The float view is the exact widening of the bits.
        float[] widened = f.A.ToArray();
        Assert.True(widened.Select((v, i) => v == Stored.Value(aBits[i], precision)).All(ok => ok), $"{where}: A does not widen the held bits exactly");
    }

    /// <summary>
    /// Rounding at construction (the same rounding a library's load and an engine's conversion use), against the tests'
    /// rounding: ties to even, subnormals and underflow, the largest finite values and overflow to infinity (F16 from
    /// 65,520; BF16 from float32's top), infinities, signed zeros; a NaN stays a NaN, quiet, with its sign.
    /// </summary>
    [Theory]
    [MemberData(nameof(SixteenBit))]
    public void RoundingHandlesTiesSubnormalsOverflowInfinitiesAndNaN(WeightPrecision precision)
    {
        var data = new TestData();
        Func<int, double> midpoint = precision == WeightPrecision.Float16 ? Narrow.HalfMidpoint : Narrow.BFloat16Midpoint;
        int finitePatterns = precision == WeightPrecision.Float16 ? 0x7C00 : 0x7F80;
        var values = new List<float>
        {
            0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, float.MinValue, float.Epsilon, -float.Epsilon,
            65504f, 65519.99f, 65520f, -65520f, 1e6f, 2.9802322e-8f /* 2^-25: half F16's smallest subnormal, a tie to 0 */,
            8.940697e-8f /* 3 · 2^-25: a tie between F16 subnormals 1 and 2, to 2 */, 6.1035156e-5f /* F16's smallest normal */,
            3.3895314e38f /* BF16's largest */, 1e-40f /* a float32 subnormal */, 1.00390625f /* 1 + 2^-8: a BF16 tie, to 1 */,
            1.01171875f /* 1 + 3 · 2^-8: a BF16 tie, up */, 1.00048828125f /* 1 + 2^-11: an F16 tie, to 1 */,
        };
        for (int i = 0; i < 200; i++)
        {
            // Random ties between neighbouring 16-bit values and the floats just beside them.
            float tie = (float)midpoint(data.Rng.Next(finitePatterns));
            float sign = data.Rng.Next(2) == 0 ? 1f : -1f;
            values.AddRange([sign * tie, sign * MathF.BitIncrement(tie), sign * MathF.BitDecrement(tie)]);
        }
        float[] nans = [float.NaN, -float.NaN, BitConverter.UInt32BitsToSingle(0x7F80_0001) /* signalling */, BitConverter.UInt32BitsToSingle(0xFFA0_0000)];
        float[] a = [.. values, .. nans];
        float[] b = [.. a.Reverse()]; // B [d_out, 1]: the same values through the transposed factor
        var f = new LoraFactors(a, b, 1, a.Length, b.Length, 1f, precision: precision);
        ushort quiet = precision == WeightPrecision.Float16 ? (ushort)0x0200 : (ushort)0x0040;
        ushort exponent = precision == WeightPrecision.Float16 ? (ushort)0x7C00 : (ushort)0x7F80;
        void Check(ReadOnlySpan<float> source, ReadOnlySpan<ushort> held, string factor)
        {
            for (int i = 0; i < source.Length; i++)
            {
                float v = source[i];
                ushort bits = held[i];
                string what = $"{data}: {precision} {factor}[{i}] = {v:R} (0x{BitConverter.SingleToUInt32Bits(v):X8}) held as 0x{bits:X4}";
                if (float.IsNaN(v))
                {
                    Assert.True((bits & exponent) == exponent && (bits & quiet) != 0, $"{what}: not a quiet NaN");
                    Assert.True((bits & 0x8000) != 0 == float.IsNegative(v), $"{what}: the NaN lost its sign");
                }
                else
                {
                    Assert.True(bits == Stored.Bits(v, precision), $"{what}, expected 0x{Stored.Bits(v, precision):X4}");
                }
            }
        }
        Check(a, f.ABits, "A");
        Check(b, [.. Enumerable.Range(0, b.Length).Select(i => f.BTransposedBits[i])], "B");
        Assert.Equal(precision == WeightPrecision.Float16 ? 0x7C00 : 0x7F80, f.ABits[values.IndexOf(precision == WeightPrecision.Float16 ? 65520f : float.MaxValue)]);
    }

    /// <summary>
    /// The kernels' loads widen every one of the 65,536 patterns exactly, vector and scalar alike (at every lane of the
    /// vector, at every register width the kernels have, emulated where this machine lacks it): the value the tests
    /// decode from the IEEE definitions, the sign of zero included, and a NaN with its sign and payload.
    /// </summary>
    [Theory]
    [MemberData(nameof(SixteenBit))]
    public void TheKernelsWidenEveryPatternExactly(WeightPrecision precision)
    {
        WidenEveryPattern<Lanes128>(precision);
        WidenEveryPattern<Lanes256>(precision);
        WidenEveryPattern<Lanes512>(precision);
    }

    private static unsafe void WidenEveryPattern<TV>(WeightPrecision precision) where TV : unmanaged, ILanes<TV>
    {
        int lanes = TV.Count;
        ushort[] patterns = GC.AllocateUninitializedArray<ushort>(65536 + lanes, pinned: true);
        for (int i = 0; i < patterns.Length; i++)
        {
            patterns[i] = (ushort)i;
        }
        int mantissaBits = precision == WeightPrecision.Float16 ? 10 : 7;
        float* register = stackalloc float[lanes];
        float Lane(TV value, int lane)
        {
            TV.Store(value, register);
            return register[lane];
        }
        fixed (ushort* p = patterns)
        {
            for (int i = 0; i < 65536; i++)
            {
                // Each pattern at lane i % lanes of one load, and at lane 0 of another.
                float vector = Lane(precision == WeightPrecision.Float16 ? Float16Weights<TV>.Create().Load(p + i / lanes * lanes) : BFloat16Weights<TV>.Create().Load(p + i / lanes * lanes), i % lanes);
                float first = Lane(precision == WeightPrecision.Float16 ? Float16Weights<TV>.Create().Load(p + i) : BFloat16Weights<TV>.Create().Load(p + i), 0);
                float one = precision == WeightPrecision.Float16 ? Float16Weights<TV>.LoadOne(p + i) : BFloat16Weights<TV>.LoadOne(p + i);
                double expected = Stored.Value((ushort)i, precision);
                foreach (float widened in new[] { vector, first, one })
                {
                    uint bits = BitConverter.SingleToUInt32Bits(widened);
                    string what = $"{precision} 0x{i:X4} widened ({typeof(TV).Name}) to {widened:R} (0x{bits:X8})";
                    if (double.IsNaN(expected))
                    {
                        Assert.True(float.IsNaN(widened) && bits >> 31 == (uint)i >> 15, $"{what}: not a NaN of its sign");
                        Assert.True(((bits & 0x7F_FFFF) >> (23 - mantissaBits)) == (i & ((1 << mantissaBits) - 1)), $"{what}: the NaN's payload changed");
                    }
                    else
                    {
                        Assert.True(widened == expected && float.IsNegative(widened) == double.IsNegative(expected), $"{what}, expected {expected:R}");
                    }
                }
            }
        }
    }

    /// <summary>
    /// What reads factors as float32 sees the exact widening of 16-bit ones, so Arrow prototypes, merges and exports of a
    /// 16-bit library equal those of the float32 library of the widened values bit for bit; general knowledge
    /// subtraction keeps each task expert's precision, its difference rounded once; A and Bᵀ of 16-bit factors are new
    /// arrays on every call (the bits are read in place), those of float32 factors their own storage.
    /// </summary>
    [Theory]
    [MemberData(nameof(SixteenBit))]
    public void FloatAccessorsWidenAndTheirUsersSeeTheWidenedValues(WeightPrecision precision)
    {
        var data = new TestData();
        RawFactors[] raw = [.. Enumerable.Range(0, 3).Select(_ => data.Factors(4, 19, 11))];
        ExpertLibrary held = LibraryOf(raw, _ => precision);
        RawFactors[] widenedRaw = [.. Stored.Factors(raw, precision).Select(f => f!)];
        ExpertLibrary widened = LibraryOf(widenedRaw, _ => WeightPrecision.Float32);
        LoraFactors f = held.Module(Module).Factors(0)!, g = widened.Module(Module).Factors(0)!;
        AssertBitsEqual(g.A, f.A, $"{data}: A widened");
        AssertBitsEqual(g.BTransposed, f.BTransposed, $"{data}: Bᵀ widened");
        var (bf, bg) = (new float[11 * 4], new float[11 * 4]);
        f.CopyB(bf);
        g.CopyB(bg);
        AssertBitsEqual<float>(bg, bf, $"{data}: B copied");
        Assert.False(Unsafe.AreSame(ref MemoryMarshal.GetReference(f.A), ref MemoryMarshal.GetReference(f.A)), "16-bit A should widen into a new array");
        Assert.True(Unsafe.AreSame(ref MemoryMarshal.GetReference(f.ABits), ref MemoryMarshal.GetReference(f.ABits)), "16-bit bits should be read in place");
        Assert.True(Unsafe.AreSame(ref MemoryMarshal.GetReference(g.A), ref MemoryMarshal.GetReference(g.A)), "float32 A should be read in place");
        Assert.Contains("held as Float32", Assert.Throws<InvalidOperationException>(() => g.BTransposedBits.Length).Message);

        AssertBitsEqual<float>(ArrowRouter.ComputePrototypes(widened.Module(Module)), ArrowRouter.ComputePrototypes(held.Module(Module)), $"{data}: Arrow prototypes");
        foreach (MergeMethod method in new[] { MergeMethod.Cat, MergeMethod.Linear, MergeMethod.Svd })
        {
            var options = method == MergeMethod.Svd ? new MergeOptions(method) { Rank = 3 } : new MergeOptions(method);
            LoraFactors m16 = ExpertMerge.Merge(held, [0.5, 1.0, -0.25], options).Modules[Module];
            LoraFactors m32 = ExpertMerge.Merge(widened, [0.5, 1.0, -0.25], options).Modules[Module];
            AssertBitsEqual(m32.A, m16.A, $"{data}: {method} merge's A");
            AssertBitsEqual(m32.BTransposed, m16.BTransposed, $"{data}: {method} merge's Bᵀ");
        }

        ExpertLibrary purified16 = GeneralKnowledgeSubtraction.Apply(LibraryOf(raw[..2], _ => precision), [held.Experts[2]]);
        ExpertLibrary purified32 = GeneralKnowledgeSubtraction.Apply(LibraryOf(widenedRaw[..2], _ => WeightPrecision.Float32), [widened.Experts[2]]);
        for (int e = 0; e < 2; e++)
        {
            LoraFactors p16 = purified16.Module(Module).Factors(e)!, p32 = purified32.Module(Module).Factors(e)!;
            Assert.Equal(precision, p16.Precision);
            ushort[] expected = [.. p32.A.ToArray().Select(v => Stored.Bits(v, precision))];
            AssertBitsEqual<ushort>(expected, p16.ABits, $"{data}: GenKnowSub's A of expert {e}, rounded once");
        }
    }

    [Fact]
    public void PrecisionsOutsideTheEnumAreRefused()
    {
        var data = new TestData();
        RawFactors raw = data.Factors(2, 5, 3);
        var bad = (WeightPrecision)7;
        Assert.Contains("unknown weight precision", Assert.Throws<ArgumentOutOfRangeException>(() => Engine.Create(new EngineOptions { WeightPrecision = bad })).Message);
        Assert.Contains("unknown weight precision", Assert.Throws<ArgumentOutOfRangeException>(() => At(raw, bad)).Message);
        Assert.Contains("unknown weight precision", Assert.Throws<ArgumentOutOfRangeException>(() =>
            ExpertLibrary.Load(["unused"], new ExpertLibraryOptions { WeightPrecision = bad })).Message);
        foreach (Backend backend in new[] { Backend.Cpu, Backend.GpuSimulator })
        {
            using Engine engine = Engine.Create(new EngineOptions { Backend = backend, WeightPrecision = WeightPrecision.BFloat16 });
            Assert.Equal((backend, WeightPrecision.BFloat16), (engine.Backend, engine.WeightPrecision));
        }
    }
}
