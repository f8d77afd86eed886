using System.Reflection;
using ILGPU;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>
/// Arguments of the shrink kernel. The last field is a view: for a struct that ends in a lone int (tail padding),
/// rusticl refuses the argument size ILGPU passes (CL_INVALID_ARG_SIZE), as a strict driver may.
/// </summary>
/// <typeparam name="TX">Element type of X.</typeparam>
/// <typeparam name="TW">Element type of the factors.</typeparam>
internal struct ShrinkArgs<TX, TW>
    where TX : unmanaged
    where TW : unmanaged
{
    /// <summary>X, row-major <c>[Tokens, InputDim]</c>.</summary>
    public ArrayView<TX> X;

    /// <summary>T.</summary>
    public int Tokens;

    /// <summary>d_in.</summary>
    public int InputDim;

    /// <summary>1 when X starts 16-byte aligned and d_in is a multiple of 8, so its rows take 16-byte loads.</summary>
    public int XVector;

    /// <summary>k.</summary>
    public int TopK;

    /// <summary>E.</summary>
    public int Experts;

    /// <summary>
    /// 1: each token's experts are chosen here from <see cref="Scores"/> (the gating's selection, run by every
    /// group; the first group writes <see cref="Ids"/> and <see cref="Weights"/>); 0: they are read from there.
    /// </summary>
    public int Select;

    /// <summary>The gating scores, expert-major <c>[Experts, Tokens]</c>; read only when <see cref="Select"/> is 1.</summary>
    public ArrayView<float> Scores;

    /// <summary>Expert id of every (token, slot), row-major <c>[Tokens, TopK]</c>; -1 is an empty slot.</summary>
    public ArrayView<int> Ids;

    /// <summary>Weight of every (token, slot).</summary>
    public ArrayView<float> Weights;

    /// <summary>Every expert's A, row-major <c>[r_e, APitch]</c>, back to back (mixed ranks), zero past d_in; 16-byte aligned.</summary>
    public ArrayView<TW> A;

    /// <summary>Row pitch of <see cref="A"/>: d_in rounded up to a multiple of 8.</summary>
    public int APitch;

    /// <summary>1 for parameter mixing: a slot's coefficient is w alone (the expand applies s); 0: w · s.</summary>
    public int ParameterMixing;

    /// <summary>Where each expert's A starts in <see cref="A"/> (a multiple of 8).</summary>
    public ArrayView<long> AOffset;

    /// <summary>Rank of each expert; 0 when it does not adapt this module.</summary>
    public ArrayView<int> Rank;

    /// <summary>Scaling s of each expert.</summary>
    public ArrayView<float> Scaling;

    /// <summary>Groups per expert: <see cref="ShrinkKernel.RowGroups"/> of the largest rank (the launch has Experts × RowGroups groups).</summary>
    public int RowGroups;

    /// <summary>Row stride of V: the largest rank.</summary>
    public int VStride;

    /// <summary>Out: V, row-major <c>[Tokens · TopK, VStride]</c>: V[slot, k] = c · (A_e[k] · x_t) for every contributing slot.</summary>
    public ArrayView<float> V;
}

/// <summary>
/// Shrink, V = c · (A_e x) for every contributing (token, slot), with the grouping by expert done in the kernel:
/// a group owns a few rank rows of one expert (two with four warps), scans the slots a chunk at a time for those
/// that chose its expert (a group scan places them in a shared list, so no dispatch launch and no atomics), and
/// computes their dot products up to eight tokens at a time against its rows: two teams split each row's d_in
/// (lanes striding it two 16-byte vectors at a time, so a warp's chain of dependent loads is d_in / 1024 long at
/// warp 32), each token's partial sums reduce within the team and then across the pair in a fixed order, so a
/// value does not depend on which tokens shared its batch. Only the real number of tokens is loaded. V is
/// indexed by slot, so the expand finds a slot's vector directly. A row of A streams once per eight tokens.
/// </summary>
public sealed class ShrinkKernel
{
    /// <summary>Tokens per batch against a row.</summary>
    public const int PairsPerBatch = 8;

    /// <summary>Slots one thread examines per chunk of the scan.</summary>
    public const int SlotsPerThread = 8;

    /// <summary>The largest group: a chunk's matches must fit the shared list.</summary>
    public const int MaxGroupSize = ListCapacity / SlotsPerThread;

    /// <summary>Shared memory the kernel declares: the list (slot and coefficient), the scan, the reduction tree, the teams' partial sums.</summary>
    public const int SharedBytes = ListCapacity * (sizeof(int) + sizeof(float)) + MaxGroupSize * sizeof(int) + 8 * GroupTeam.MaxWidth * sizeof(float)
        + 8 * MaxTeams * sizeof(float);

    private const int ListCapacity = 1024;

    private readonly TeamShape _shape;
    private readonly Delegate[] _variants; // in StorageVariant's order

    /// <summary>
    /// Compiles the six storage variants (F32 and F16 activations, F32, F16 and BF16 factors) for an accelerator, with up
    /// to four teams per group (two rank rows, two teams each).
    /// </summary>
    internal ShrinkKernel(Accelerator accelerator, bool warps)
    {
        var (f32f32, f32f16, f32bf16, f16f32, f16f16, f16bf16) = Variants(warps);
        int limit = MaxGroupSize;
        _variants =
        [
            KernelLoader.LoadVariant(accelerator, f32f32, ref limit), KernelLoader.LoadVariant(accelerator, f32f16, ref limit), KernelLoader.LoadVariant(accelerator, f32bf16, ref limit),
            KernelLoader.LoadVariant(accelerator, f16f32, ref limit), KernelLoader.LoadVariant(accelerator, f16f16, ref limit), KernelLoader.LoadVariant(accelerator, f16bf16, ref limit),
        ];
        _shape = TeamShape.For(accelerator, MaxTeams, limit);
    }

    /// <summary>The most teams per group (they split d_in).</summary>
    internal const int MaxTeams = 4;

    /// <summary>The CUDA shape for a warp size and a kernel limit (what <see cref="LaunchShape.Cuda"/> plans with).</summary>
    internal static TeamShape CudaShape(int warpSize, int kernelLimit) => TeamShape.OfWarps(warpSize, MaxTeams, Math.Min(MaxGroupSize, kernelLimit));

    /// <summary>The entry points an accelerator with (or without) warp reductions loads.</summary>
    internal static IEnumerable<MethodInfo> EntryPoints(bool warps)
    {
        var (f32f32, f32f16, f32bf16, f16f32, f16f16, f16bf16) = Variants(warps);
        return [f32f32.Method, f32f16.Method, f32bf16.Method, f16f32.Method, f16f16.Method, f16bf16.Method];
    }

    private static (Action<ShrinkArgs<float, float>>, Action<ShrinkArgs<float, ushort>>, Action<ShrinkArgs<float, BFloat16Bits>>,
        Action<ShrinkArgs<ushort, float>>, Action<ShrinkArgs<ushort, ushort>>, Action<ShrinkArgs<ushort, BFloat16Bits>>) Variants(bool warps) => warps
        ? (Kernel<float, F32, float, F32, WarpTeam>, Kernel<float, F32, ushort, F16Cuda, WarpTeam>, Kernel<float, F32, BFloat16Bits, BF16, WarpTeam>,
            Kernel<ushort, F16Cuda, float, F32, WarpTeam>, Kernel<ushort, F16Cuda, ushort, F16Cuda, WarpTeam>, Kernel<ushort, F16Cuda, BFloat16Bits, BF16, WarpTeam>)
        : (Kernel<float, F32, float, F32, GroupTeam>, Kernel<float, F32, ushort, F16, GroupTeam>, Kernel<float, F32, BFloat16Bits, BF16, GroupTeam>,
            Kernel<ushort, F16, float, F32, GroupTeam>, Kernel<ushort, F16, ushort, F16, GroupTeam>, Kernel<ushort, F16, BFloat16Bits, BF16, GroupTeam>);

    /// <summary>Threads per group.</summary>
    public int GroupSize => _shape.GroupSize;

    /// <summary>Rank rows per group: its teams in pairs splitting d_in (one row for a single team).</summary>
    public int RowsPerGroup => RowsFor(_shape.TeamsPerGroup);

    /// <summary>Rank rows per group for a number of teams (the kernel computes the same from what it sees).</summary>
    internal static int RowsFor(int teams) => teams >= 2 ? teams / 2 : 1;

    /// <summary>Groups per expert for a module whose largest rank is <paramref name="maxRank"/>.</summary>
    public static int RowGroups(int maxRank, int rowsPerGroup) => Math.Max(1, (maxRank + rowsPerGroup - 1) / rowsPerGroup);

    /// <summary>Groups of one launch: every expert's row groups.</summary>
    public static int Groups(int experts, int maxRank, int rowsPerGroup) => Math.Max(1, experts * RowGroups(maxRank, rowsPerGroup));

    /// <summary>Launches the shrink for F32 (float) or F16 (ushort) activations and F32, F16 or BF16 (<see cref="BFloat16Bits"/>) factors.</summary>
    internal void Launch<TX, TW>(AcceleratorStream stream, in ShrinkArgs<TX, TW> args)
        where TX : unmanaged
        where TW : unmanaged
    {
        var config = new KernelConfig(Math.Max(1, args.Experts * args.RowGroups), _shape.GroupSize);
        ((Action<AcceleratorStream, KernelConfig, ShrinkArgs<TX, TW>>)_variants[StorageVariant.Of<TX, TW>()])(stream, config, args);
    }

    internal static void Kernel<TX, SX, TW, SW, TT>(ShrinkArgs<TX, TW> a)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TW : unmanaged
        where SW : struct, IStorage<TW>
        where TT : struct, ITeam
    {
        TT team = default;
        ArrayView<int> listSlot = SharedMemory.Allocate<int>(ListCapacity);
        ArrayView<float> listCoefficient = SharedMemory.Allocate<float>(ListCapacity);
        ArrayView<int> scan = SharedMemory.Allocate<int>(MaxGroupSize);
        ArrayView<float> scratch = SharedMemory.Allocate<float>(8 * GroupTeam.MaxWidth);
        ArrayView<float> partial = SharedMemory.Allocate<float>(8 * MaxTeams);
        // Teams pair up per row where there are enough: rows × slices = teams (1 × 1 for a group team).
        int slices = team.Count >= 2 ? 2 : 1, rows = team.Count / slices;
        int e = Grid.IdxX / a.RowGroups, firstRow = Grid.IdxX % a.RowGroups * rows;
        int rank = a.Rank[e];
        bool writer = a.Select != 0 && Grid.IdxX == 0; // writes every token's decision
        bool computes = firstRow < rank;
        if (!computes && !writer)
        {
            return; // the whole group: no barrier is left waiting
        }
        int row = firstRow + team.Index / slices, slice = team.Index % slices;
        // A team past the expert's last row (or left over from an odd team count) idles through the reductions.
        bool active = computes && row < rank && team.Index < rows * slices;
        float scaling = a.ParameterMixing != 0 ? 1f : a.Scaling[e];
        long n = a.InputDim, w = a.AOffset[e] + (long)(active ? row : 0) * a.APitch;
        // A row's teams stride d_in together, slice after slice; each lane takes two vectors per step.
        long step = 8L * team.Width * slices, first = 8L * (slice * team.Width + team.Lane), end = active ? n : 0;
        int tid = Group.IdxX, size = Group.DimX;
        int perThread = a.Select != 0 ? 1 : SlotsPerThread;
        int units = a.Select != 0 ? a.Tokens : a.Tokens * a.TopK; // tokens to choose for, or slots to read
        for (int chunk = 0; chunk < units; chunk += perThread * size)
        {
            // 1. This thread's matches: with selection, its token's slot holding e (at most one, experts are
            //    distinct); without, those of its slots that name e (a host decision may repeat an expert).
            int chosenSlot = -1;
            float chosenWeight = 0f;
            int found = 0;
            if (a.Select != 0)
            {
                int t = chunk + tid;
                if (t < a.Tokens)
                {
                    int s = GatingKernel.Choose(a.Scores, a.Tokens, a.Experts, a.TopK, t, e, writer, a.Ids, a.Weights, out chosenWeight);
                    chosenSlot = s >= 0 && computes && RoutingContract.Contributes(e, chosenWeight, rank) ? t * a.TopK + s : -1;
                    found = chosenSlot >= 0 ? 1 : 0;
                }
            }
            else
            {
                for (int q = 0; q < SlotsPerThread; q++)
                {
                    int slot = chunk + q * size + tid;
                    found += slot < units && a.Ids[slot] == e && RoutingContract.Contributes(e, a.Weights[slot], rank) ? 1 : 0;
                }
            }

            // 2. Places in the shared list, in thread order.
            int place = GroupScan.ExclusiveSum(found, scan, out int total);
            if (a.Select != 0)
            {
                if (chosenSlot >= 0)
                {
                    listSlot[place] = chosenSlot;
                    listCoefficient[place] = chosenWeight * scaling;
                }
            }
            else
            {
                for (int q = 0; q < SlotsPerThread; q++)
                {
                    int slot = chunk + q * size + tid;
                    if (slot < units && a.Ids[slot] == e && RoutingContract.Contributes(e, a.Weights[slot], rank))
                    {
                        listSlot[place] = slot;
                        listCoefficient[place] = a.Weights[slot] * scaling;
                        place++;
                    }
                }
            }
            Group.Barrier();

            // 3. The listed slots against this team's row, eight tokens at a time (only the real ones loaded).
            for (int b = 0; computes && b < total; b += PairsPerBatch)
            {
                int count = total - b < PairsPerBatch ? total - b : PairsPerBatch;
                long x0 = XRow(a, listSlot, b, 0, count), x1 = XRow(a, listSlot, b, 1, count), x2 = XRow(a, listSlot, b, 2, count), x3 = XRow(a, listSlot, b, 3, count);
                long x4 = XRow(a, listSlot, b, 4, count), x5 = XRow(a, listSlot, b, 5, count), x6 = XRow(a, listSlot, b, 6, count), x7 = XRow(a, listSlot, b, 7, count);
                Sums8 s = a.XVector != 0
                    ? Dots<TX, SX, TW, SW, VectorAccess>(a, w, x0, x1, x2, x3, x4, x5, x6, x7, count, first, step, end)
                    : Dots<TX, SX, TW, SW, BoundedAccess>(a, w, x0, x1, x2, x3, x4, x5, x6, x7, count, first, step, end);
                team.SumInto(s, scratch, partial.SubView(team.Index * 8, 8));
                Group.Barrier();
                int q = tid % 8, mine = firstRow + tid / 8;
                if (tid < 8 * rows && q < count && mine < rank)
                {
                    float dot = 0f;
                    for (int t = 0; t < slices; t++)
                    {
                        dot += partial[((tid / 8) * slices + t) * 8 + q]; // slice order: the same sum on every run and device
                    }
                    a.V[(long)listSlot[b + q] * a.VStride + mine] = listCoefficient[b + q] * dot;
                }
                Group.Barrier(); // the partial sums are rewritten by the next batch
            }
            Group.Barrier(); // the list is rewritten by the next chunk
        }
    }

    /// <summary>The start of the x row of listed slot b + q (a missing one repeats the first; it is never loaded).</summary>
    private static long XRow<TX, TW>(in ShrinkArgs<TX, TW> a, ArrayView<int> listSlot, int b, int q, int count)
        where TX : unmanaged
        where TW : unmanaged =>
        (long)(listSlot[b + (q < count ? q : 0)] / a.TopK) * a.InputDim;

    /// <summary>One row of A against up to eight tokens' rows of X over d_in (only the first <paramref name="count"/> loaded).</summary>
    private static Sums8 Dots<TX, SX, TW, SW, TA>(in ShrinkArgs<TX, TW> a, long w, long x0, long x1, long x2, long x3, long x4, long x5, long x6, long x7,
        int count, long first, long step, long end)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TW : unmanaged
        where SW : struct, IStorage<TW>
        where TA : struct, IRowAccess
    {
        SW sw = default;
        Sums8 s = default;
        long i = first;
        for (; i + step < end; i += 2 * step)
        {
            // Two independent vectors of the row in flight per lane, then their tokens.
            Float8 v = sw.Load8(a.A, w + i), u = sw.Load8(a.A, w + i + step);
            s.S0 += v.Dot(X<TX, SX, TW, TA>(a, x0, i)) + u.Dot(X<TX, SX, TW, TA>(a, x0, i + step));
            if (count > 1) s.S1 += v.Dot(X<TX, SX, TW, TA>(a, x1, i)) + u.Dot(X<TX, SX, TW, TA>(a, x1, i + step));
            if (count > 2) s.S2 += v.Dot(X<TX, SX, TW, TA>(a, x2, i)) + u.Dot(X<TX, SX, TW, TA>(a, x2, i + step));
            if (count > 3) s.S3 += v.Dot(X<TX, SX, TW, TA>(a, x3, i)) + u.Dot(X<TX, SX, TW, TA>(a, x3, i + step));
            if (count > 4) s.S4 += v.Dot(X<TX, SX, TW, TA>(a, x4, i)) + u.Dot(X<TX, SX, TW, TA>(a, x4, i + step));
            if (count > 5) s.S5 += v.Dot(X<TX, SX, TW, TA>(a, x5, i)) + u.Dot(X<TX, SX, TW, TA>(a, x5, i + step));
            if (count > 6) s.S6 += v.Dot(X<TX, SX, TW, TA>(a, x6, i)) + u.Dot(X<TX, SX, TW, TA>(a, x6, i + step));
            if (count > 7) s.S7 += v.Dot(X<TX, SX, TW, TA>(a, x7, i)) + u.Dot(X<TX, SX, TW, TA>(a, x7, i + step));
        }
        if (i < end)
        {
            Float8 v = sw.Load8(a.A, w + i);
            s.S0 += v.Dot(X<TX, SX, TW, TA>(a, x0, i));
            if (count > 1) s.S1 += v.Dot(X<TX, SX, TW, TA>(a, x1, i));
            if (count > 2) s.S2 += v.Dot(X<TX, SX, TW, TA>(a, x2, i));
            if (count > 3) s.S3 += v.Dot(X<TX, SX, TW, TA>(a, x3, i));
            if (count > 4) s.S4 += v.Dot(X<TX, SX, TW, TA>(a, x4, i));
            if (count > 5) s.S5 += v.Dot(X<TX, SX, TW, TA>(a, x5, i));
            if (count > 6) s.S6 += v.Dot(X<TX, SX, TW, TA>(a, x6, i));
            if (count > 7) s.S7 += v.Dot(X<TX, SX, TW, TA>(a, x7, i));
        }
        return s;
    }

    private static Float8 X<TX, SX, TW, TA>(in ShrinkArgs<TX, TW> a, long row, long i)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TW : unmanaged
        where TA : struct, IRowAccess => default(TA).Load<TX, SX>(a.X, row, i, a.InputDim);
}
