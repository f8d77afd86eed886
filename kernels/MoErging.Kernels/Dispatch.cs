using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Algorithms.ScanReduceOperations;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>Arguments of the dispatch kernel.</summary>
public struct DispatchArgs
{
    /// <summary>Expert id of every (token, slot), row-major <c>[T, TopK]</c>; -1 is an empty slot.</summary>
    public ArrayView<int> Ids;

    /// <summary>Weight of every (token, slot).</summary>
    public ArrayView<float> Weights;

    /// <summary>T · k.</summary>
    public int Slots;

    /// <summary>k.</summary>
    public int TopK;

    /// <summary>E.</summary>
    public int Experts;

    /// <summary>Rank of each expert at this module; 0 when the expert does not adapt it.</summary>
    public ArrayView<int> Rank;

    /// <summary>Scaling s of each expert at this module.</summary>
    public ArrayView<float> Scaling;

    /// <summary>
    /// 1 for parameter mixing: each pair's coefficient is w alone (the expand applies w · s to the token's
    /// summed V); 0 for output mixing, where it is w · s.
    /// </summary>
    public int ParameterMixing;

    /// <summary>Rank rows per shrink item (<see cref="ShrinkKernel.RowsPerItem"/>).</summary>
    public int RowsPerItem;

    /// <summary>Out: for every (token, slot), the index of its pair, or -1 when the slot adds nothing.</summary>
    public ArrayView<int> SlotPair;

    /// <summary>Out: the token of every pair, pairs grouped by expert.</summary>
    public ArrayView<int> PairToken;

    /// <summary>Out: w · s of every pair (w alone for parameter mixing).</summary>
    public ArrayView<float> PairCoefficient;

    /// <summary>Out: shrink work items: expert, first rank row, first and end pair.</summary>
    public ArrayView<int> ItemExpert;

    /// <inheritdoc cref="ItemExpert"/>
    public ArrayView<int> ItemRow;

    /// <inheritdoc cref="ItemExpert"/>
    public ArrayView<int> ItemPairStart;

    /// <inheritdoc cref="ItemExpert"/>
    public ArrayView<int> ItemPairEnd;

    /// <summary>Out: the number of work items (one element).</summary>
    public ArrayView<int> ItemCount;
}

/// <summary>
/// Groups (token, slot) pairs by expert in one group, so gating, dispatch and the expert kernels chain
/// with no host round trip: a histogram in shared memory (slots that are empty, weigh 0, or name an
/// expert without factors here are dropped), exclusive group scans into segment starts and into the
/// shrink work list (one item per block of <see cref="DispatchArgs.RowsPerItem"/> rank rows and
/// <see cref="ShrinkKernel.PairsPerItem"/> pairs), then a scatter. Order within a segment follows the
/// atomics and is not fixed, but no result depends on it: each pair's V is computed alone and the expand
/// sums a token's slots in slot order. Host-given assignments enter here, skipping the gating.
/// </summary>
public sealed class DispatchKernel
{
    private readonly Action<AcceleratorStream, KernelConfig, DispatchArgs> _kernel;
    private readonly int _groupSize;

    /// <summary>Compiles the kernel for an accelerator.</summary>
    public DispatchKernel(Accelerator accelerator)
    {
        _kernel = accelerator.LoadKernel<DispatchArgs>(Kernel);
        _groupSize = Math.Min(1024, accelerator.MaxNumThreadsPerGroup);
    }

    /// <summary>Launches the dispatch (a single group).</summary>
    public void Launch(AcceleratorStream stream, in DispatchArgs args) =>
        _kernel(stream, new KernelConfig(1, _groupSize, SharedMemoryConfig.RequestDynamic<int>(3 * args.Experts)), args);

    /// <summary>Work items the dispatch may write for a batch: a bound for sizing the item buffers.</summary>
    public static long MaxItems(long slots, int experts, int maxRank, int rowsPerItem) =>
        (long)((maxRank + rowsPerItem - 1) / rowsPerItem) * ((slots + ShrinkKernel.PairsPerItem - 1) / ShrinkKernel.PairsPerItem + experts);

    internal static void Kernel(DispatchArgs a)
    {
        ArrayView<int> shared = SharedMemory.GetDynamic<int>();
        ArrayView<int> count = shared.SubView(0, a.Experts);
        ArrayView<int> start = shared.SubView(a.Experts, a.Experts);
        ArrayView<int> itemStart = shared.SubView(2L * a.Experts, a.Experts);
        int tid = Group.IdxX, size = Group.DimX;

        for (int e = tid; e < a.Experts; e += size)
        {
            count[e] = 0;
        }
        Group.Barrier();
        for (int i = tid; i < a.Slots; i += size)
        {
            int e = a.Ids[i];
            a.SlotPair[i] = -1;
            if (e >= 0 && e < a.Experts && a.Weights[i] != 0f && a.Rank[e] > 0)
            {
                Atomic.Add(ref count[e], 1);
            }
        }
        Group.Barrier();

        // Exclusive scans over experts, a group-sized chunk at a time with a running carry.
        int pairCarry = 0, itemCarry = 0;
        for (int chunk = 0; chunk < a.Experts; chunk += size)
        {
            int e = chunk + tid;
            int pairs = e < a.Experts ? count[e] : 0;
            int items = e < a.Experts && pairs > 0
                ? (a.Rank[e] + a.RowsPerItem - 1) / a.RowsPerItem * ((pairs + ShrinkKernel.PairsPerItem - 1) / ShrinkKernel.PairsPerItem)
                : 0;
            int pairsBefore = GroupExtensions.ExclusiveScan<int, AddInt32>(pairs);
            int itemsBefore = GroupExtensions.ExclusiveScan<int, AddInt32>(items);
            if (e < a.Experts)
            {
                start[e] = pairCarry + pairsBefore;
                itemStart[e] = itemCarry + itemsBefore;
            }
            pairCarry += Group.Broadcast(pairsBefore + pairs, size - 1);
            itemCarry += Group.Broadcast(itemsBefore + items, size - 1);
        }
        if (tid == 0)
        {
            a.ItemCount[0] = itemCarry;
        }
        Group.Barrier();

        // Scatter: count[e] becomes the fill position of e's segment.
        for (int e = tid; e < a.Experts; e += size)
        {
            count[e] = 0;
        }
        Group.Barrier();
        for (int i = tid; i < a.Slots; i += size)
        {
            int e = a.Ids[i];
            if (e >= 0 && e < a.Experts && a.Weights[i] != 0f && a.Rank[e] > 0)
            {
                int pair = start[e] + Atomic.Add(ref count[e], 1);
                a.PairToken[pair] = i / a.TopK;
                a.PairCoefficient[pair] = a.ParameterMixing != 0 ? a.Weights[i] : a.Weights[i] * a.Scaling[e];
                a.SlotPair[i] = pair;
            }
        }
        Group.Barrier();

        for (int e = tid; e < a.Experts; e += size)
        {
            int pairs = count[e];
            if (pairs == 0)
            {
                continue;
            }
            int tiles = (pairs + ShrinkKernel.PairsPerItem - 1) / ShrinkKernel.PairsPerItem;
            int item = itemStart[e];
            for (int row = 0; row < a.Rank[e]; row += a.RowsPerItem)
            {
                for (int tile = 0; tile < tiles; tile++, item++)
                {
                    a.ItemExpert[item] = e;
                    a.ItemRow[item] = row;
                    a.ItemPairStart[item] = start[e] + tile * ShrinkKernel.PairsPerItem;
                    a.ItemPairEnd[item] = start[e] + XMath.Min(pairs, (tile + 1) * ShrinkKernel.PairsPerItem);
                }
            }
        }
    }
}
