using ILGPU;
using ILGPU.Runtime;
using MoErging.Kernels;
using MoErging.Numerics;

namespace MoErging.Tests.Kernels;

/// <summary>Arguments of the BF16 round-trip kernel (ending in a view: see <c>ScoresArgs</c> on rusticl and tail padding).</summary>
public struct RoundTripArgs
{
    public ArrayView<float> Input;

    public int Length;

    public ArrayView<BFloat16Bits> Stored;

    public ArrayView<float> Output;
}

/// <summary>
/// BF16 storage inside a kernel on every test device: float32 values stored through BF16's 16-byte and bounded stores
/// take the bits of the tests' own round to nearest even (<see cref="Narrow"/>; ties, the overflow to infinity, subnormals,
/// zeros and infinities included) and the host's (<see cref="FloatConversions.SingleToBFloat16(float)"/>); a NaN stays a
/// quiet NaN of its sign (a signalling NaN whose payload lies in the dropped bits too); loading the bits back with the
/// 16-byte and bounded loads gives their exact value. The length is not a multiple of 8, so both forms run.
/// </summary>
public abstract class BFloat16StorageTests(DeviceFixture fixture)
{
    [Fact]
    public void StoresRoundToNearestEvenAndLoadsWidenExactly()
    {
        var data = new TestData();
        float[] values = Values(data);
        Accelerator accelerator = fixture.Device.Accelerator;
        var launch = KernelLoader.Load<RoundTripArgs>(accelerator, RoundTrip, out _);
        using var input = DeviceIo.Upload(accelerator, values);
        using var stored = DeviceIo.Poisoned(accelerator, values.Length, new BFloat16Bits(0x7FFF));
        using var output = DeviceIo.Poisoned(accelerator, values.Length, 12345f);
        using AcceleratorStream stream = accelerator.CreateStream();
        int groups = (values.Length + 8 * 32 - 1) / (8 * 32);
        launch(stream, new KernelConfig(groups, 32), new RoundTripArgs { Input = input.View, Length = values.Length, Stored = stored.View, Output = output.View });
        stream.Synchronize();
        KernelAssertions.AssertNone($"{data}");
        BFloat16Bits[] bits = stored.GetAsArray1D();
        float[] widened = output.GetAsArray1D();
        for (int i = 0; i < values.Length; i++)
        {
            float v = values[i];
            ushort got = bits[i].Bits;
            string what = $"{data}: value {i}, 0x{BitConverter.SingleToUInt32Bits(v):X8} ({v:R})";
            Assert.True(got == FloatConversions.SingleToBFloat16(v), $"{what}: stored as 0x{got:X4}, the host rounds it to 0x{FloatConversions.SingleToBFloat16(v):X4}");
            if (float.IsNaN(v))
            {
                Assert.True((got & 0x7F80) == 0x7F80 && (got & 0x0040) != 0, $"{what}: stored as 0x{got:X4}, not a quiet NaN");
                Assert.True((got & 0x8000) == (BitConverter.SingleToUInt32Bits(v) >> 16 & 0x8000), $"{what}: the NaN lost its sign (0x{got:X4})");
                Assert.True(float.IsNaN(widened[i]), $"{what}: loaded back as {widened[i]:R}");
                continue;
            }
            ushort expected = Narrow.ToBFloat16Bits(v);
            Assert.True(got == expected, $"{what}: stored as 0x{got:X4}, expected 0x{expected:X4}");
            float exact = (float)Narrow.BFloat16Value(expected);
            Assert.True(BitConverter.SingleToUInt32Bits(widened[i]) == BitConverter.SingleToUInt32Bits(exact),
                $"{what}: 0x{got:X4} loaded back as {widened[i]:R}, exactly {exact:R}");
        }
    }

    /// <summary>Stores eight values per thread as BF16 and loads them back: 16-byte forms for whole vectors, bounded forms for the tail.</summary>
    private static void RoundTrip(RoundTripArgs a)
    {
        long i = 8L * Grid.GlobalIndex.X;
        if (i >= a.Length)
        {
            return;
        }
        F32 f32 = default;
        BF16 bf16 = default;
        Float8 values = f32.Load8Within(a.Input, i, a.Length);
        if (i + 8 <= a.Length)
        {
            bf16.Store8(a.Stored, i, values);
            f32.Store8Within(a.Output, i, a.Length, bf16.Load8(a.Stored, i));
        }
        else
        {
            bf16.Store8Within(a.Stored, i, a.Length, values);
            f32.Store8Within(a.Output, i, a.Length, bf16.Load8Within(a.Stored, i, a.Length));
        }
    }

    /// <summary>Random values over float32's exponents, exact ties and their neighbours, the largest values, and the special values.</summary>
    private static float[] Values(TestData data)
    {
        var values = new List<float>();
        foreach (float v in data.Normal(400))
        {
            values.Add((float)Math.ScaleB(v, data.Rng.Next(-140, 128)));
        }
        for (int q = 0; q < 200; q++)
        {
            // A midpoint between two adjacent finite bfloat16 values (normal or subnormal; exact in float32), and just either side.
            float tie = (float)Narrow.BFloat16Midpoint(data.Rng.Next(0, 0x7F7F)) * (q % 2 == 0 ? 1 : -1);
            values.AddRange([tie, MathF.BitIncrement(tie), MathF.BitDecrement(tie)]);
        }
        float lastTie = (float)Narrow.BFloat16Midpoint(0x7F7F); // the largest bfloat16 and 2¹²⁸: rounds to infinity
        values.AddRange([lastTie, MathF.BitDecrement(lastTie), float.MaxValue, -float.MaxValue, float.Epsilon, -float.Epsilon,
            0f, -0f, float.PositiveInfinity, float.NegativeInfinity]);
        foreach (uint nan in new uint[] { 0x7FC0_0000, 0xFFC0_0000, 0x7F80_0001, 0xFF80_0001, 0x7FBF_FFFF, 0x7F81_0000, 0xFFFF_FFFF })
        {
            values.Add(BitConverter.UInt32BitsToSingle(nan));
        }
        while (values.Count % 8 != 5)
        {
            values.Add(data.Normal(1)[0]);
        }
        return [.. values];
    }
}

public sealed class BFloat16StorageTestsOnSimulator(SimulatorFixture f) : BFloat16StorageTests(f), IClassFixture<SimulatorFixture>;

[Trait("Backend", "OpenCL")]
public sealed class BFloat16StorageTestsOnRusticl(RusticlFixture f) : BFloat16StorageTests(f), IClassFixture<RusticlFixture>;

[Trait("Backend", "OpenCL")]
public sealed class BFloat16StorageTestsOnPocl(PoclFixture f) : BFloat16StorageTests(f), IClassFixture<PoclFixture>;

[Trait("Backend", "Cuda")]
public sealed class BFloat16StorageTestsOnCuda(CudaFixture f) : BFloat16StorageTests(f), IClassFixture<CudaFixture>;

/// <summary>
/// A launch whose storage has no compiled variant is refused before anything is queued, naming the type: BF16 activations
/// (activations are F32 or F16) and element types that are no storage at all.
/// </summary>
public sealed class StorageVariantTests(SimulatorFixture fixture) : IClassFixture<SimulatorFixture>
{
    [Fact]
    public void StoragesWithoutAVariantAreRefusedNamingTheType()
    {
        KernelSet kernels = fixture.Device.Kernels;
        using AcceleratorStream stream = fixture.Device.Accelerator.CreateStream();
        Assert.Contains("activations of BFloat16Bits",
            Assert.Throws<NotSupportedException>(() => kernels.Gating.LaunchScores(stream, new ScoresArgs<BFloat16Bits, float>())).Message);
        Assert.Contains("activations of BFloat16Bits",
            Assert.Throws<NotSupportedException>(() => kernels.Shrink.Launch(stream, new ShrinkArgs<BFloat16Bits, BFloat16Bits>())).Message);
        Assert.Contains("storage Int32",
            Assert.Throws<NotSupportedException>(() => kernels.Expand.Launch(stream, new ExpandArgs<float, int>())).Message);
    }
}
