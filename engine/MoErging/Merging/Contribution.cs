using MoErging.Experts;
using MoErging.Numerics;

namespace MoErging.Merging;

/// <summary>One expert's part in merging one module: its index in the library, its factors and its merge weight w.</summary>
internal sealed record Contribution(int Expert, LoraFactors Factors, double Weight)
{
    /// <summary>c = w · s: the weight with the expert's scaling folded in.</summary>
    public double Coefficient => Weight * Factors.Scaling;

    /// <summary>A as float64, row-major <c>[r, d_in]</c>.</summary>
    public double[] AWide() => Widen(Factors.A);

    /// <summary>Bᵀ as float64, row-major <c>[r, d_out]</c>.</summary>
    public double[] BTransposedWide() => Widen(Factors.BTransposed);

    /// <summary>B in PEFT's layout as float64, row-major <c>[d_out, r]</c>.</summary>
    public double[] BWide()
    {
        var b = new float[Factors.OutputDim * Factors.Rank];
        Factors.CopyB(b);
        return Widen(b);
    }

    private static double[] Widen(ReadOnlySpan<float> values)
    {
        var wide = new double[values.Length];
        System.Numerics.Tensors.TensorPrimitives.ConvertTruncating(values, wide.AsSpan()); // exact
        return wide;
    }

    /// <summary>The stream of DARE draws for tensor <paramref name="tensor"/> (0 ΔW, 1 A, 2 B), as <see cref="MergeOptions.Seed"/> documents.</summary>
    public static ulong Stream(int seed, string module, int expert, ulong tensor) =>
        SeededRandom.Derive(SeededRandom.Derive(SeededRandom.Derive((ulong)(uint)seed, SeededRandom.Hash(module)), (ulong)expert), tensor);
}
