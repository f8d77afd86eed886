using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace MoErging.Kernels;

/// <summary>
/// The threads that share one task (a token's scores, one rank row's dot products) and how they reduce.
/// Kernels are generic over it, as they are over storage: <see cref="WarpTeam"/> is one warp reducing
/// with shuffles, <see cref="GroupTeam"/> is one whole group reducing through static shared memory with
/// barriers, which every OpenCL driver compiles (no sub-group functions, atomics, work-group collectives
/// or dynamic shared memory). Reductions run a fixed tree, so a result does not depend on which team or
/// position computed it. Every thread of a group must make the same calls in the same order, since a
/// <see cref="GroupTeam"/> call holds group barriers; kernels keep idle threads in step instead of
/// letting them return early.
/// </summary>
internal interface ITeam
{
    /// <summary>Threads in a team, as the kernel sees it (a sub-group can differ from the host's warp size).</summary>
    int Width { get; }

    /// <summary>This thread's index in its team.</summary>
    int Lane { get; }

    /// <summary>This team's index in its group.</summary>
    int Index { get; }

    /// <summary>Teams per group.</summary>
    int Count { get; }

    /// <summary>The sum over the team; every lane gets it. <paramref name="scratch"/>: this team's <see cref="GroupTeam.MaxWidth"/> floats.</summary>
    float Sum(float value, ArrayView<float> scratch);

    /// <summary>Eight sums over the team at once; every lane gets them. <paramref name="scratch"/>: 8 × <see cref="GroupTeam.MaxWidth"/> floats.</summary>
    void Sum(ref Sums8 sums, ArrayView<float> scratch);

    /// <summary>
    /// Eight sums over the team written to <paramref name="destination"/>[0..7] by lanes of the team (visible to
    /// the group after a barrier): cheaper than <see cref="Sum(ref Sums8, ArrayView{float})"/> where not every lane needs them.
    /// </summary>
    void SumInto(in Sums8 sums, ArrayView<float> scratch, ArrayView<float> destination);

    /// <summary>The minimum over the team; every lane gets it.</summary>
    ulong Min(ulong value, ArrayView<ulong> scratch);

    /// <summary>Orders this team's shared-memory writes before its later reads.</summary>
    void Barrier();
}

/// <summary>How two lanes' values combine in a reduction (the lane's own value first).</summary>
internal interface ICombine<T>
{
    T Of(T mine, T other);
}

internal readonly struct Add : ICombine<float>
{
    public float Of(float mine, float other) => mine + other;
}

internal readonly struct Smaller : ICombine<ulong>
{
    public ulong Of(ulong mine, ulong other) => other < mine ? other : mine;
}

/// <summary>Eight running sums a team reduces together (one shrink item's tokens).</summary>
internal struct Sums8
{
    public float S0, S1, S2, S3, S4, S5, S6, S7;
}

/// <summary>A team is one warp (CUDA, ILGPU's CPU accelerator): butterfly shuffles.</summary>
internal readonly struct WarpTeam : ITeam
{
    /// <inheritdoc />
    public int Width => Warp.WarpSize;

    /// <inheritdoc />
    public int Lane => Warp.LaneIdx;

    /// <inheritdoc />
    public int Index => Warp.WarpIdx;

    /// <inheritdoc />
    public int Count => Group.DimX / Warp.WarpSize;

    /// <inheritdoc />
    public float Sum(float value, ArrayView<float> scratch) => Butterfly<float, Add>(value);

    /// <inheritdoc />
    public void Sum(ref Sums8 sums, ArrayView<float> scratch)
    {
        sums.S0 = Sum(sums.S0, scratch);
        sums.S1 = Sum(sums.S1, scratch);
        sums.S2 = Sum(sums.S2, scratch);
        sums.S3 = Sum(sums.S3, scratch);
        sums.S4 = Sum(sums.S4, scratch);
        sums.S5 = Sum(sums.S5, scratch);
        sums.S6 = Sum(sums.S6, scratch);
        sums.S7 = Sum(sums.S7, scratch);
    }

    /// <inheritdoc />
    public void SumInto(in Sums8 sums, ArrayView<float> scratch, ArrayView<float> destination)
    {
        if (Warp.WarpSize != 32)
        {
            Sums8 all = sums;
            Sum(ref all, scratch);
            if (Warp.LaneIdx == 0)
            {
                destination[0] = all.S0; destination[1] = all.S1; destination[2] = all.S2; destination[3] = all.S3;
                destination[4] = all.S4; destination[5] = all.S5; destination[6] = all.S6; destination[7] = all.S7;
            }
            return;
        }
        // A transposing butterfly: at offsets 16, 8 and 4 each lane keeps half of its values and adds its
        // partner's half of the other (4 + 2 + 1 shuffles), then offsets 2 and 1 finish one value per lane:
        // 9 shuffles instead of 40. Lane 4q' then holds sum q, q's bits being the lane's bits 4, 3 and 2.
        int lane = Warp.LaneIdx;
        bool high = (lane & 16) != 0;
        float a0 = Half(sums.S0, sums.S4, high, 16), a1 = Half(sums.S1, sums.S5, high, 16);
        float a2 = Half(sums.S2, sums.S6, high, 16), a3 = Half(sums.S3, sums.S7, high, 16);
        high = (lane & 8) != 0;
        float b0 = Half(a0, a2, high, 8), b1 = Half(a1, a3, high, 8);
        float c = Half(b0, b1, (lane & 4) != 0, 4);
        c += Warp.ShuffleXor(c, 2);
        c += Warp.ShuffleXor(c, 1);
        if ((lane & 3) == 0)
        {
            destination[((lane >> 4) & 1) * 4 + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1)] = c;
        }
    }

    /// <summary>Keeps <paramref name="low"/> (or <paramref name="high"/> when <paramref name="upper"/>) and adds the partner lane's copy of it.</summary>
    private static float Half(float low, float high, bool upper, int offset)
    {
        float kept = upper ? high : low, given = upper ? low : high;
        return kept + Warp.ShuffleXor(given, offset);
    }

    /// <inheritdoc />
    public ulong Min(ulong value, ArrayView<ulong> scratch) => Butterfly<ulong, Smaller>(value);

    /// <inheritdoc />
    public void Barrier() => Warp.Barrier();

    private static T Butterfly<T, TC>(T value)
        where T : unmanaged
        where TC : struct, ICombine<T>
    {
        TC combine = default;
        for (int offset = Warp.WarpSize / 2; offset > 0; offset >>= 1)
        {
            value = combine.Of(value, Warp.ShuffleXor(value, offset));
        }
        return value;
    }
}

/// <summary>
/// A team is the whole group (a power of two, at most <see cref="MaxWidth"/> threads): a tree in shared
/// memory, pairing the same lanes as <see cref="WarpTeam"/>'s butterfly, with a group barrier per level.
/// </summary>
internal readonly struct GroupTeam : ITeam
{
    /// <summary>The largest team, and the scratch length a kernel allocates for it.</summary>
    public const int MaxWidth = 64;

    /// <inheritdoc />
    public int Width => Group.DimX;

    /// <inheritdoc />
    public int Lane => Group.IdxX;

    /// <inheritdoc />
    public int Index => 0;

    /// <inheritdoc />
    public int Count => 1;

    /// <inheritdoc />
    public float Sum(float value, ArrayView<float> scratch) => Tree<float, Add>(value, scratch);

    /// <inheritdoc />
    public void Sum(ref Sums8 sums, ArrayView<float> scratch)
    {
        // Eight columns of MaxWidth, reduced side by side: one barrier per level for all eight, which keeps
        // the barrier count down (PoCL's compile time grows with it).
        int lane = Group.IdxX;
        scratch[lane] = sums.S0;
        scratch[lane + MaxWidth] = sums.S1;
        scratch[lane + 2 * MaxWidth] = sums.S2;
        scratch[lane + 3 * MaxWidth] = sums.S3;
        scratch[lane + 4 * MaxWidth] = sums.S4;
        scratch[lane + 5 * MaxWidth] = sums.S5;
        scratch[lane + 6 * MaxWidth] = sums.S6;
        scratch[lane + 7 * MaxWidth] = sums.S7;
        Group.Barrier();
        for (int offset = Group.DimX / 2; offset > 0; offset >>= 1)
        {
            if (lane < offset)
            {
                for (int column = 0; column < 8 * MaxWidth; column += MaxWidth)
                {
                    scratch[column + lane] += scratch[column + lane + offset];
                }
            }
            Group.Barrier();
        }
        sums.S0 = scratch[0];
        sums.S1 = scratch[MaxWidth];
        sums.S2 = scratch[2 * MaxWidth];
        sums.S3 = scratch[3 * MaxWidth];
        sums.S4 = scratch[4 * MaxWidth];
        sums.S5 = scratch[5 * MaxWidth];
        sums.S6 = scratch[6 * MaxWidth];
        sums.S7 = scratch[7 * MaxWidth];
        Group.Barrier();
    }

    /// <inheritdoc />
    public void SumInto(in Sums8 sums, ArrayView<float> scratch, ArrayView<float> destination)
    {
        Sums8 all = sums;
        Sum(ref all, scratch);
        if (Group.IdxX == 0)
        {
            destination[0] = all.S0; destination[1] = all.S1; destination[2] = all.S2; destination[3] = all.S3;
            destination[4] = all.S4; destination[5] = all.S5; destination[6] = all.S6; destination[7] = all.S7;
        }
    }

    /// <inheritdoc />
    public ulong Min(ulong value, ArrayView<ulong> scratch) => Tree<ulong, Smaller>(value, scratch);

    /// <inheritdoc />
    public void Barrier() => Group.Barrier();

    private static T Tree<T, TC>(T value, ArrayView<T> scratch)
        where T : unmanaged
        where TC : struct, ICombine<T>
    {
        TC combine = default;
        int lane = Group.IdxX;
        scratch[lane] = value;
        Group.Barrier();
        for (int offset = Group.DimX / 2; offset > 0; offset >>= 1)
        {
            if (lane < offset)
            {
                scratch[lane] = combine.Of(scratch[lane], scratch[lane + offset]);
            }
            Group.Barrier();
        }
        T result = scratch[0];
        Group.Barrier(); // every lane has read the result before the scratch is reused
        return result;
    }
}

/// <summary>Which team kind an accelerator runs, decided from what ILGPU can generate for it, and the group shapes that follow.</summary>
internal sealed class TeamShape
{
    private TeamShape(bool warps, int width, int teamsPerGroup)
    {
        Warps = warps;
        Width = width;
        TeamsPerGroup = teamsPerGroup;
    }

    /// <summary>True for <see cref="WarpTeam"/>, false for <see cref="GroupTeam"/>.</summary>
    public bool Warps { get; }

    /// <summary>Threads per team as the host plans it (the warp size, or the group size).</summary>
    public int Width { get; }

    /// <summary>Teams per group as the host plans it (a kernel recomputes it from what it sees).</summary>
    public int TeamsPerGroup { get; }

    /// <summary>Threads per group.</summary>
    public int GroupSize => Width * TeamsPerGroup;

    /// <summary>
    /// Warps on CUDA and on ILGPU's CPU accelerator, where the warp size a kernel sees is the host's. Every
    /// OpenCL device takes groups: ILGPU emits sub-group shuffles for Intel only, and even there the compiler
    /// picks the sub-group size, so a launch planned around the host's value could split a team.
    /// </summary>
    public static bool UsesWarps(Accelerator accelerator) => accelerator is CudaAccelerator or CPUAccelerator;

    /// <summary>
    /// The shape for a kernel that may run <paramref name="kernelLimit"/> threads per group: up to
    /// <paramref name="maxTeamsPerGroup"/> warps, or one team of the largest power of two up to
    /// <see cref="GroupTeam.MaxWidth"/> (64: wide enough to coalesce, small enough for any driver).
    /// </summary>
    /// <exception cref="NotSupportedException">The kernel runs fewer threads per group than one warp.</exception>
    public static TeamShape For(Accelerator accelerator, int maxTeamsPerGroup, int kernelLimit)
    {
        if (!UsesWarps(accelerator))
        {
            return new TeamShape(false, GroupWidth(kernelLimit), 1);
        }
        if (kernelLimit < accelerator.WarpSize)
        {
            throw new NotSupportedException($"'{accelerator.Name}' runs a kernel with at most {kernelLimit} threads per group, less than its warp of {accelerator.WarpSize}");
        }
        return OfWarps(accelerator.WarpSize, maxTeamsPerGroup, kernelLimit);
    }

    /// <summary>The warp shape: up to <paramref name="maxTeamsPerGroup"/> warps of <paramref name="warpSize"/>, within the kernel's limit.</summary>
    public static TeamShape OfWarps(int warpSize, int maxTeamsPerGroup, int kernelLimit) =>
        new(true, warpSize, Math.Clamp(kernelLimit / warpSize, 1, maxTeamsPerGroup));

    /// <summary>The width of a <see cref="GroupTeam"/> for a kernel that may run <paramref name="kernelLimit"/> threads per group.</summary>
    public static int GroupWidth(int kernelLimit)
    {
        int width = 1;
        while (width * 2 <= Math.Min(GroupTeam.MaxWidth, kernelLimit))
        {
            width *= 2;
        }
        return width;
    }
}

/// <summary>Group-wide integer scans through static shared memory (every thread of the group must call them).</summary>
internal static class GroupScan
{
    /// <summary>
    /// The exclusive prefix sum of one value per thread over the group, and the total (a Hillis–Steele
    /// scan in shared memory; integers, so the order does not matter). <paramref name="scratch"/>: one int per thread.
    /// </summary>
    public static int ExclusiveSum(int value, ArrayView<int> scratch, out int total)
    {
        int tid = Group.IdxX;
        scratch[tid] = value;
        Group.Barrier();
        for (int offset = 1; offset < Group.DimX; offset <<= 1)
        {
            int add = tid >= offset ? scratch[tid - offset] : 0;
            Group.Barrier();
            scratch[tid] += add;
            Group.Barrier();
        }
        int inclusive = scratch[tid];
        total = scratch[Group.DimX - 1];
        Group.Barrier(); // every thread has read before the scratch is reused
        return inclusive - value;
    }
}
