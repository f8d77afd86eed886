using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using MoErging.Execution.Cpu;

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
        double wide256 = Best(cores, Chains<Lanes256>, Lanes256.Count), wide512 = Best(cores, Chains<Lanes512>, Lanes512.Count);
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

    /// <summary>Twelve independent chains in the kernels' own register type, so the peak is the one their code can reach.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static unsafe float Chains<TV>(long iterations) where TV : unmanaged, ILanes<TV>
    {
        TV m = TV.Broadcast(0.999f), c = TV.Broadcast(1e-3f);
        TV a0 = c, a1 = c, a2 = c, a3 = c, a4 = c, a5 = c, a6 = c, a7 = c, a8 = c, a9 = c, a10 = c, a11 = c;
        for (long i = 0; i < iterations; i++)
        {
            a0 = TV.FusedMultiplyAdd(a0, m, c);
            a1 = TV.FusedMultiplyAdd(a1, m, c);
            a2 = TV.FusedMultiplyAdd(a2, m, c);
            a3 = TV.FusedMultiplyAdd(a3, m, c);
            a4 = TV.FusedMultiplyAdd(a4, m, c);
            a5 = TV.FusedMultiplyAdd(a5, m, c);
            a6 = TV.FusedMultiplyAdd(a6, m, c);
            a7 = TV.FusedMultiplyAdd(a7, m, c);
            a8 = TV.FusedMultiplyAdd(a8, m, c);
            a9 = TV.FusedMultiplyAdd(a9, m, c);
            a10 = TV.FusedMultiplyAdd(a10, m, c);
            a11 = TV.FusedMultiplyAdd(a11, m, c);
        }
        return TV.Sum(TV.Add(TV.Add(TV.Add(TV.Add(a0, a1), TV.Add(a2, a3)), TV.Add(TV.Add(a4, a5), TV.Add(a6, a7))), TV.Add(TV.Add(a8, a9), TV.Add(a10, a11))));
    }
}
