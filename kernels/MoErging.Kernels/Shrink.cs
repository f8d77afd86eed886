using System.Reflection;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>
/// Arguments of the shrink kernel. The last field is a view: for a struct that ends in a lone int (tail padding),
/// rusticl refuses the argument size ILGPU passes (CL_INVALID_ARG_SIZE), as a strict driver may.
/// </summary>
/// <typeparam name="TX">Element type of X.</typeparam>
/// <typeparam name="TW">Element type of the factors.</typeparam>
public struct ShrinkArgs<TX, TW>
    where TX : unmanaged
    where TW : unmanaged
{
    /// <summary>X, row-major <c>[T, InputDim]</c>.</summary>
    public ArrayView<TX> X;

    /// <summary>d_in.</summary>
    public int InputDim;

    /// <summary>Row stride of V: the largest rank.</summary>
    public int VStride;

    /// <summary>Every expert's A, row-major <c>[r_e, d_in]</c>, back to back (mixed ranks, no padding).</summary>
    public ArrayView<TW> A;

    /// <summary>Where each expert's A starts in <see cref="A"/>.</summary>
    public ArrayView<long> AOffset;

    /// <summary>Rank of each expert.</summary>
    public ArrayView<int> Rank;

    /// <summary>The dispatch's work items and their count.</summary>
    public ArrayView<int> ItemExpert;

    /// <inheritdoc cref="ItemExpert"/>
    public ArrayView<int> ItemRow;

    /// <inheritdoc cref="ItemExpert"/>
    public ArrayView<int> ItemPairStart;

    /// <inheritdoc cref="ItemExpert"/>
    public ArrayView<int> ItemPairEnd;

    /// <inheritdoc cref="ItemExpert"/>
    public ArrayView<int> ItemCount;

    /// <summary>The token of every pair.</summary>
    public ArrayView<int> PairToken;

    /// <summary>w · s of every pair.</summary>
    public ArrayView<float> PairCoefficient;

    /// <summary>Out: V, row-major <c>[pairs, VStride]</c>: V[p, k] = c_p · (A_e[k] · x_t).</summary>
    public ArrayView<float> V;
}

/// <summary>
/// Shrink, V = X_seg A_eᵀ scaled per pair, over the dispatch's work list. The grid is fixed and groups
/// stride over the items (their number is known only on the device). In an item, each team takes one
/// rank row of A and up to <see cref="PairsPerItem"/> tokens: lanes stride d_in, so the row streams once,
/// coalesced, against all the item's tokens; each dot product ends in a reduction of its own, so its
/// value does not depend on which item or position computed it.
/// </summary>
public sealed class ShrinkKernel
{
    /// <summary>Pairs (tokens) per item.</summary>
    public const int PairsPerItem = 8;

    private readonly Accelerator _accelerator;
    private readonly TeamShape _shape;
    private readonly Action<AcceleratorStream, KernelConfig, ShrinkArgs<float, float>> _f32f32;
    private readonly Action<AcceleratorStream, KernelConfig, ShrinkArgs<float, ushort>> _f32f16;
    private readonly Action<AcceleratorStream, KernelConfig, ShrinkArgs<ushort, float>> _f16f32;
    private readonly Action<AcceleratorStream, KernelConfig, ShrinkArgs<ushort, ushort>> _f16f16;

    /// <summary>Compiles the four storage variants for an accelerator, with up to four teams (rank rows) per group.</summary>
    internal ShrinkKernel(Accelerator accelerator, bool warps)
    {
        _accelerator = accelerator;
        var (f32f32, f32f16, f16f32, f16f16) = Variants(warps);
        _f32f32 = KernelLoader.Load(accelerator, f32f32, out int a);
        _f32f16 = KernelLoader.Load(accelerator, f32f16, out int b);
        _f16f32 = KernelLoader.Load(accelerator, f16f32, out int c);
        _f16f16 = KernelLoader.Load(accelerator, f16f16, out int d);
        _shape = TeamShape.For(accelerator, maxTeamsPerGroup: 4, Math.Min(Math.Min(a, b), Math.Min(c, d)));
    }

    /// <summary>The entry points an accelerator with (or without) warp reductions loads.</summary>
    internal static IEnumerable<MethodInfo> EntryPoints(bool warps)
    {
        var (f32f32, f32f16, f16f32, f16f16) = Variants(warps);
        return [f32f32.Method, f32f16.Method, f16f32.Method, f16f16.Method];
    }

    private static (Action<ShrinkArgs<float, float>>, Action<ShrinkArgs<float, ushort>>, Action<ShrinkArgs<ushort, float>>, Action<ShrinkArgs<ushort, ushort>>) Variants(bool warps) => warps
        ? (Kernel<float, F32, float, F32, WarpTeam>, Kernel<float, F32, ushort, F16, WarpTeam>, Kernel<ushort, F16, float, F32, WarpTeam>, Kernel<ushort, F16, ushort, F16, WarpTeam>)
        : (Kernel<float, F32, float, F32, GroupTeam>, Kernel<float, F32, ushort, F16, GroupTeam>, Kernel<ushort, F16, float, F32, GroupTeam>, Kernel<ushort, F16, ushort, F16, GroupTeam>);

    /// <summary>Rank rows per item: one per team of a group.</summary>
    public int RowsPerItem => _shape.TeamsPerGroup;

    /// <summary>Threads per group.</summary>
    public int GroupSize => _shape.GroupSize;

    /// <summary>Groups the persistent grid launches: enough to fill the device several times over.</summary>
    public int Groups => Math.Max(1, _accelerator.NumMultiprocessors * 8);

    /// <summary>Launches the shrink for any combination of F32 (float) and F16 (ushort) storage.</summary>
    public void Launch<TX, TW>(AcceleratorStream stream, in ShrinkArgs<TX, TW> args)
        where TX : unmanaged
        where TW : unmanaged
    {
        // Each test is constant for a given instantiation, so the JIT keeps one branch.
        ref ShrinkArgs<TX, TW> a = ref Unsafe.AsRef(in args);
        if (typeof(TX) == typeof(float) && typeof(TW) == typeof(float))
        {
            _f32f32(stream, Config, Unsafe.As<ShrinkArgs<TX, TW>, ShrinkArgs<float, float>>(ref a));
        }
        else if (typeof(TX) == typeof(float) && typeof(TW) == typeof(ushort))
        {
            _f32f16(stream, Config, Unsafe.As<ShrinkArgs<TX, TW>, ShrinkArgs<float, ushort>>(ref a));
        }
        else if (typeof(TX) == typeof(ushort) && typeof(TW) == typeof(float))
        {
            _f16f32(stream, Config, Unsafe.As<ShrinkArgs<TX, TW>, ShrinkArgs<ushort, float>>(ref a));
        }
        else if (typeof(TX) == typeof(ushort) && typeof(TW) == typeof(ushort))
        {
            _f16f16(stream, Config, Unsafe.As<ShrinkArgs<TX, TW>, ShrinkArgs<ushort, ushort>>(ref a));
        }
        else
        {
            throw new NotSupportedException($"storage {typeof(TX).Name} × {typeof(TW).Name}: only float (F32) and ushort (F16 bits)");
        }
    }

    private KernelConfig Config => new(Groups, _shape.GroupSize);

    internal static void Kernel<TX, SX, TW, SW, TT>(ShrinkArgs<TX, TW> a)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TW : unmanaged
        where SW : struct, IStorage<TW>
        where TT : struct, ITeam
    {
        SX sx = default;
        SW sw = default;
        TT team = default;
        ArrayView<float> scratch = SharedMemory.Allocate<float>(8 * GroupTeam.MaxWidth);
        int lane = team.Lane, width = team.Width, n = a.InputDim;
        int items = a.ItemCount[0];
        for (int item = Grid.IdxX; item < items; item += Grid.DimX)
        {
            int e = a.ItemExpert[item];
            int row = a.ItemRow[item] + team.Index;
            // A team past the expert's last row idles through the reduction, so barriers stay in step.
            bool active = row < a.Rank[e];
            int p0 = a.ItemPairStart[item], count = a.ItemPairEnd[item] - p0;
            long w = a.AOffset[e] + (long)(active ? row : 0) * n;
            // Up to eight tokens; missing ones repeat the first and are not stored.
            long x0 = Row(a, p0, 0, count), x1 = Row(a, p0, 1, count), x2 = Row(a, p0, 2, count), x3 = Row(a, p0, 3, count);
            long x4 = Row(a, p0, 4, count), x5 = Row(a, p0, 5, count), x6 = Row(a, p0, 6, count), x7 = Row(a, p0, 7, count);
            Sums8 s = default;
            int end = active ? n : 0;
            for (int i = lane; i < end; i += width)
            {
                float v = sw.Load(a.A[w + i]);
                s.S0 += v * sx.Load(a.X[x0 + i]);
                s.S1 += v * sx.Load(a.X[x1 + i]);
                s.S2 += v * sx.Load(a.X[x2 + i]);
                s.S3 += v * sx.Load(a.X[x3 + i]);
                s.S4 += v * sx.Load(a.X[x4 + i]);
                s.S5 += v * sx.Load(a.X[x5 + i]);
                s.S6 += v * sx.Load(a.X[x6 + i]);
                s.S7 += v * sx.Load(a.X[x7 + i]);
            }
            team.Sum(ref s, scratch);
            if (active && lane == 0)
            {
                Store(a, p0, 0, count, row, s.S0);
                Store(a, p0, 1, count, row, s.S1);
                Store(a, p0, 2, count, row, s.S2);
                Store(a, p0, 3, count, row, s.S3);
                Store(a, p0, 4, count, row, s.S4);
                Store(a, p0, 5, count, row, s.S5);
                Store(a, p0, 6, count, row, s.S6);
                Store(a, p0, 7, count, row, s.S7);
            }
        }
    }

    private static long Row<TX, TW>(in ShrinkArgs<TX, TW> a, int p0, int q, int count)
        where TX : unmanaged
        where TW : unmanaged =>
        (long)a.PairToken[p0 + (q < count ? q : 0)] * a.InputDim;

    private static void Store<TX, TW>(in ShrinkArgs<TX, TW> a, int p0, int q, int count, int row, float dot)
        where TX : unmanaged
        where TW : unmanaged
    {
        if (q < count)
        {
            a.V[(long)(p0 + q) * a.VStride + row] = a.PairCoefficient[p0 + q] * dot;
        }
    }
}
