using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
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
/// with no host round trip. Slots that are empty, weigh 0, or name an expert without factors here are
/// dropped. Experts are taken <see cref="ExpertsPerPass"/> at a time; in each pass, a group-sized tile of
/// slots at a time goes to shared memory, where each slot counts the equal experts before it, which gives
/// its place in its expert's segment in slot order; group scans then turn the counts into segment starts
/// and starts in the shrink work list (one item per block of <see cref="DispatchArgs.RowsPerItem"/> rank
/// rows and <see cref="ShrinkKernel.PairsPerItem"/> pairs), and a scatter writes the pairs. Only static
/// shared memory and group barriers: no atomics, no work-group collectives, so every OpenCL driver
/// compiles it, and the layout is the same on every run and device. Host-given assignments enter here,
/// skipping the gating.
/// </summary>
public sealed class DispatchKernel
{
    /// <summary>Experts per pass over the slots: each has three counters in shared memory.</summary>
    public const int ExpertsPerPass = 1024;

    /// <summary>The largest group (the slot tile and the scan live in shared memory, one value per thread).</summary>
    public const int MaxGroupSize = 1024;

    /// <summary>Shared memory the kernel declares.</summary>
    public const int SharedBytes = (3 * ExpertsPerPass + 2 * MaxGroupSize) * sizeof(int);

    private readonly Action<AcceleratorStream, KernelConfig, DispatchArgs> _kernel;
    private readonly int _groupSize;

    /// <summary>Compiles the kernel for an accelerator.</summary>
    internal DispatchKernel(Accelerator accelerator)
    {
        _kernel = KernelLoader.Load<DispatchArgs>(accelerator, Kernel, out int kernelLimit);
        _groupSize = Math.Min(MaxGroupSize, kernelLimit); // any size works: tiles and scans follow the group
    }

    /// <summary>The entry point every accelerator loads.</summary>
    internal static MethodInfo EntryPoint => ((Action<DispatchArgs>)Kernel).Method;

    /// <summary>Threads in the single group.</summary>
    public int GroupSize => _groupSize;

    /// <summary>Launches the dispatch (a single group).</summary>
    public void Launch(AcceleratorStream stream, in DispatchArgs args) => _kernel(stream, new KernelConfig(1, _groupSize), args);

    /// <summary>Work items the dispatch may write for a batch: a bound for sizing the item buffers.</summary>
    public static long MaxItems(long slots, int experts, int maxRank, int rowsPerItem) =>
        (long)((maxRank + rowsPerItem - 1) / rowsPerItem) * ((slots + ShrinkKernel.PairsPerItem - 1) / ShrinkKernel.PairsPerItem + experts);

    internal static void Kernel(DispatchArgs a)
    {
        ArrayView<int> count = SharedMemory.Allocate<int>(ExpertsPerPass);
        ArrayView<int> start = SharedMemory.Allocate<int>(ExpertsPerPass);
        ArrayView<int> itemStart = SharedMemory.Allocate<int>(ExpertsPerPass);
        ArrayView<int> tile = SharedMemory.Allocate<int>(MaxGroupSize);
        ArrayView<int> scan = SharedMemory.Allocate<int>(MaxGroupSize);
        int tid = Group.IdxX, size = Group.DimX;

        // A slot that adds nothing keeps -1; each of the others is written in its expert's pass.
        for (int i = tid; i < a.Slots; i += size)
        {
            a.SlotPair[i] = -1;
        }

        int pairBase = 0, itemBase = 0; // pairs and items of the passes before, the same in every thread
        for (int first = 0; first < a.Experts; first += ExpertsPerPass)
        {
            int experts = XMath.Min(ExpertsPerPass, a.Experts - first);
            for (int e = tid; e < experts; e += size)
            {
                count[e] = 0;
            }
            Group.Barrier();

            // 1. Each slot's place in its expert's segment: the pairs of earlier tiles plus the equal slots
            //    before it in this one. The last of an expert's slots in a tile moves the count on. The
            //    place waits in SlotPair, which only this thread touches until the scatter.
            for (int tileStart = 0; tileStart < a.Slots; tileStart += size)
            {
                int i = tileStart + tid;
                int local = i < a.Slots ? Local(a, i, first, experts) : -1;
                tile[tid] = local;
                Group.Barrier();
                int filled = XMath.Min(size, a.Slots - tileStart);
                int before = 0, after = 0;
                if (local >= 0)
                {
                    for (int j = 0; j < filled; j++)
                    {
                        int same = tile[j] == local ? 1 : 0;
                        before += j < tid ? same : 0;
                        after += j > tid ? same : 0;
                    }
                }
                int place = local >= 0 ? count[local] + before : 0;
                Group.Barrier(); // every thread has read count before any moves it on
                if (local >= 0)
                {
                    a.SlotPair[i] = place;
                    if (after == 0)
                    {
                        count[local] = place + 1;
                    }
                }
                Group.Barrier();
            }

            // 2. Exclusive scans over the pass's experts, a group-sized chunk at a time.
            for (int chunk = 0; chunk < experts; chunk += size)
            {
                int e = chunk + tid;
                int pairs = e < experts ? count[e] : 0;
                int items = pairs > 0
                    ? (a.Rank[first + e] + a.RowsPerItem - 1) / a.RowsPerItem * ((pairs + ShrinkKernel.PairsPerItem - 1) / ShrinkKernel.PairsPerItem)
                    : 0;
                int pairsBefore = ExclusiveSum(pairs, scan, out int pairTotal);
                int itemsBefore = ExclusiveSum(items, scan, out int itemTotal);
                if (e < experts)
                {
                    start[e] = pairBase + pairsBefore;
                    itemStart[e] = itemBase + itemsBefore;
                }
                pairBase += pairTotal;
                itemBase += itemTotal;
            }
            Group.Barrier();

            // 3. Scatter, each thread over the slots it placed.
            for (int i = tid; i < a.Slots; i += size)
            {
                int local = Local(a, i, first, experts);
                if (local >= 0)
                {
                    int pair = start[local] + a.SlotPair[i];
                    int e = first + local;
                    a.SlotPair[i] = pair;
                    a.PairToken[pair] = i / a.TopK;
                    a.PairCoefficient[pair] = a.ParameterMixing != 0 ? a.Weights[i] : a.Weights[i] * a.Scaling[e];
                }
            }

            // 4. The work list: every block of rank rows against every tile of pairs.
            for (int local = tid; local < experts; local += size)
            {
                int pairs = count[local];
                int tiles = (pairs + ShrinkKernel.PairsPerItem - 1) / ShrinkKernel.PairsPerItem;
                int item = itemStart[local];
                int e = first + local;
                for (int row = 0; pairs > 0 && row < a.Rank[e]; row += a.RowsPerItem)
                {
                    for (int t = 0; t < tiles; t++, item++)
                    {
                        a.ItemExpert[item] = e;
                        a.ItemRow[item] = row;
                        a.ItemPairStart[item] = start[local] + t * ShrinkKernel.PairsPerItem;
                        a.ItemPairEnd[item] = start[local] + XMath.Min(pairs, (t + 1) * ShrinkKernel.PairsPerItem);
                    }
                }
            }
            Group.Barrier(); // the counters are reset for the next pass
        }
        if (tid == 0)
        {
            a.ItemCount[0] = itemBase;
        }
    }

    /// <summary>The slot's expert relative to the pass, or -1 when it adds nothing or belongs to another pass.</summary>
    private static int Local(in DispatchArgs a, int slot, int first, int experts)
    {
        int e = a.Ids[slot];
        bool adds = e >= first && e < first + experts && a.Weights[slot] != 0f && a.Rank[e] > 0;
        return adds ? e - first : -1;
    }

    /// <summary>
    /// The exclusive prefix sum of one value per thread over the group, and the total (a Hillis–Steele
    /// scan in shared memory; integers, so the order does not matter).
    /// </summary>
    private static int ExclusiveSum(int value, ArrayView<int> scratch, out int total)
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
