using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace MoErging.Bench;

/// <summary>
/// The FMA peak the "share of FMA peak" figures are taken against, measured rather than read from a data sheet: every
/// core runs twelve independent fused multiply-add chains (enough to cover the FMA latency on the pipes of any x86 or
/// Arm core we run on) at 256 and at 512 bits, and the best of five rounds counts. A 512-bit figure twice the 256-bit
/// one means the cores have full-width 512-bit FMA units, as the engine's kernels then use.
/// </summary>
internal static class FmaPeak
{
    private const long Iterations = 50_000_000;

    public static int Run()
    {
        int cores = Environment.ProcessorCount;
        double wide256 = Best(cores, Chains256, Vector256<float>.Count), wide512 = Best(cores, Chains512, Vector512<float>.Count);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"FMA peak, {cores} threads: 256-bit {wide256:F1} GFMA/s ({wide256 / cores:F1} per core), 512-bit {wide512:F1} GFMA/s ({wide512 / cores:F1} per core){(Vector512.IsHardwareAccelerated ? "" : "; Vector512 is not accelerated here, so the kernels run at 256 bits")}"));
        return 0;
    }

    private static double Best(int cores, Func<long, float> chains, int lanes)
    {
        double best = 0;
        for (int round = 0; round < 5; round++)
        {
            long start = Stopwatch.GetTimestamp();
            Parallel.For(0, cores, new ParallelOptions { MaxDegreeOfParallelism = cores }, _ => chains(Iterations));
            best = Math.Max(best, 12.0 * lanes * Iterations * cores / Stopwatch.GetElapsedTime(start).TotalSeconds / 1e9);
        }
        return best;
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Chains256(long iterations)
    {
        Vector256<float> m = Vector256.Create(0.999f), c = Vector256.Create(1e-3f);
        Vector256<float> a0 = c, a1 = c, a2 = c, a3 = c, a4 = c, a5 = c, a6 = c, a7 = c, a8 = c, a9 = c, a10 = c, a11 = c;
        for (long i = 0; i < iterations; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, m, c);
            a1 = Vector256.FusedMultiplyAdd(a1, m, c);
            a2 = Vector256.FusedMultiplyAdd(a2, m, c);
            a3 = Vector256.FusedMultiplyAdd(a3, m, c);
            a4 = Vector256.FusedMultiplyAdd(a4, m, c);
            a5 = Vector256.FusedMultiplyAdd(a5, m, c);
            a6 = Vector256.FusedMultiplyAdd(a6, m, c);
            a7 = Vector256.FusedMultiplyAdd(a7, m, c);
            a8 = Vector256.FusedMultiplyAdd(a8, m, c);
            a9 = Vector256.FusedMultiplyAdd(a9, m, c);
            a10 = Vector256.FusedMultiplyAdd(a10, m, c);
            a11 = Vector256.FusedMultiplyAdd(a11, m, c);
        }
        return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Chains512(long iterations)
    {
        Vector512<float> m = Vector512.Create(0.999f), c = Vector512.Create(1e-3f);
        Vector512<float> a0 = c, a1 = c, a2 = c, a3 = c, a4 = c, a5 = c, a6 = c, a7 = c, a8 = c, a9 = c, a10 = c, a11 = c;
        for (long i = 0; i < iterations; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, m, c);
            a1 = Vector512.FusedMultiplyAdd(a1, m, c);
            a2 = Vector512.FusedMultiplyAdd(a2, m, c);
            a3 = Vector512.FusedMultiplyAdd(a3, m, c);
            a4 = Vector512.FusedMultiplyAdd(a4, m, c);
            a5 = Vector512.FusedMultiplyAdd(a5, m, c);
            a6 = Vector512.FusedMultiplyAdd(a6, m, c);
            a7 = Vector512.FusedMultiplyAdd(a7, m, c);
            a8 = Vector512.FusedMultiplyAdd(a8, m, c);
            a9 = Vector512.FusedMultiplyAdd(a9, m, c);
            a10 = Vector512.FusedMultiplyAdd(a10, m, c);
            a11 = Vector512.FusedMultiplyAdd(a11, m, c);
        }
        return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }
}
