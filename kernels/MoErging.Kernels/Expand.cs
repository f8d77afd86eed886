using System.Reflection;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>
/// Arguments of the expand kernel. The last field is a view: for a struct that ends in a lone int (tail padding),
/// rusticl refuses the argument size ILGPU passes (CL_INVALID_ARG_SIZE), as a strict driver may.
/// </summary>
/// <typeparam name="TY">Element type of Y.</typeparam>
/// <typeparam name="TW">Element type of the factors.</typeparam>
public struct ExpandArgs<TY, TW>
    where TY : unmanaged
    where TW : unmanaged
{
    /// <summary>Y, row-major <c>[Tokens, OutputDim]</c>, holding the base output; the mixture is added in place.</summary>
    public ArrayView<TY> Y;

    /// <summary>T.</summary>
    public int Tokens;

    /// <summary>d_out.</summary>
    public int OutputDim;

    /// <summary>k.</summary>
    public int TopK;

    /// <summary>Row stride of V.</summary>
    public int VStride;

    /// <summary>Expert id of every (token, slot).</summary>
    public ArrayView<int> Ids;

    /// <summary>Pair of every (token, slot), or -1.</summary>
    public ArrayView<int> SlotPair;

    /// <summary>1 for parameter mixing (see the kernel); 0 for output mixing.</summary>
    public int ParameterMixing;

    /// <summary>Weight of every (token, slot); read only for parameter mixing.</summary>
    public ArrayView<float> Weights;

    /// <summary>Scaling of each expert; read only for parameter mixing.</summary>
    public ArrayView<float> Scaling;

    /// <summary>Every expert's Bᵀ, row-major <c>[r_e, d_out]</c>, back to back.</summary>
    public ArrayView<TW> BTransposed;

    /// <summary>Where each expert's Bᵀ starts.</summary>
    public ArrayView<long> BOffset;

    /// <summary>Rank of each expert.</summary>
    public ArrayView<int> Rank;

    /// <summary>V from the shrink, row-major <c>[pairs, VStride]</c>.</summary>
    public ArrayView<float> V;
}

/// <summary>
/// Expand with the weighted sum fused in: y[t, j] += Σ_slots Σ_k V[pair, k] · Bᵀ_e[k, j], one thread per
/// output element, slots and rank terms summed in a fixed order in float32 and added to y once (rounded
/// once for F16). No atomics: results repeat exactly from run to run. Bᵀ rows are read along j, so a
/// group's loads are coalesced; V is broadcast.
/// For parameter mixing the dispatch left V[pair] = w · A_e x, so u = Σ_slots V[pair] is A_tok x, and
/// y[t, j] += Σ_k u_k Σ_slots w · s_e · Bᵀ_e[k, j] = s · B_tok (A_tok x) (one rank across the slots).
/// </summary>
public sealed class ExpandKernel
{
    private readonly int _groupSize;
    private readonly Action<AcceleratorStream, KernelConfig, ExpandArgs<float, float>> _f32f32;
    private readonly Action<AcceleratorStream, KernelConfig, ExpandArgs<float, ushort>> _f32f16;
    private readonly Action<AcceleratorStream, KernelConfig, ExpandArgs<ushort, float>> _f16f32;
    private readonly Action<AcceleratorStream, KernelConfig, ExpandArgs<ushort, ushort>> _f16f16;

    /// <summary>Compiles the four storage variants for an accelerator.</summary>
    internal ExpandKernel(Accelerator accelerator)
    {
        _f32f32 = KernelLoader.Load<ExpandArgs<float, float>>(accelerator, Kernel<float, F32, float, F32>, out int a);
        _f32f16 = KernelLoader.Load<ExpandArgs<float, ushort>>(accelerator, Kernel<float, F32, ushort, F16>, out int b);
        _f16f32 = KernelLoader.Load<ExpandArgs<ushort, float>>(accelerator, Kernel<ushort, F16, float, F32>, out int c);
        _f16f16 = KernelLoader.Load<ExpandArgs<ushort, ushort>>(accelerator, Kernel<ushort, F16, ushort, F16>, out int d);
        _groupSize = Math.Min(128, Math.Min(Math.Min(a, b), Math.Min(c, d)));
    }

    /// <summary>The entry points every accelerator loads (the expand needs no reductions).</summary>
    internal static IEnumerable<MethodInfo> EntryPoints() =>
    [
        ((Action<ExpandArgs<float, float>>)Kernel<float, F32, float, F32>).Method,
        ((Action<ExpandArgs<float, ushort>>)Kernel<float, F32, ushort, F16>).Method,
        ((Action<ExpandArgs<ushort, float>>)Kernel<ushort, F16, float, F32>).Method,
        ((Action<ExpandArgs<ushort, ushort>>)Kernel<ushort, F16, ushort, F16>).Method,
    ];

    /// <summary>Threads per group.</summary>
    public int GroupSize => _groupSize;

    /// <summary>Launches the expand for any combination of F32 (float) and F16 (ushort) storage.</summary>
    public void Launch<TY, TW>(AcceleratorStream stream, in ExpandArgs<TY, TW> args)
        where TY : unmanaged
        where TW : unmanaged
    {
        ref ExpandArgs<TY, TW> a = ref Unsafe.AsRef(in args);
        KernelConfig config = Config(args.Tokens, args.OutputDim);
        if (typeof(TY) == typeof(float) && typeof(TW) == typeof(float))
        {
            _f32f32(stream, config, Unsafe.As<ExpandArgs<TY, TW>, ExpandArgs<float, float>>(ref a));
        }
        else if (typeof(TY) == typeof(float) && typeof(TW) == typeof(ushort))
        {
            _f32f16(stream, config, Unsafe.As<ExpandArgs<TY, TW>, ExpandArgs<float, ushort>>(ref a));
        }
        else if (typeof(TY) == typeof(ushort) && typeof(TW) == typeof(float))
        {
            _f16f32(stream, config, Unsafe.As<ExpandArgs<TY, TW>, ExpandArgs<ushort, float>>(ref a));
        }
        else if (typeof(TY) == typeof(ushort) && typeof(TW) == typeof(ushort))
        {
            _f16f16(stream, config, Unsafe.As<ExpandArgs<TY, TW>, ExpandArgs<ushort, ushort>>(ref a));
        }
        else
        {
            throw new NotSupportedException($"storage {typeof(TY).Name} × {typeof(TW).Name}: only float (F32) and ushort (F16 bits)");
        }
    }

    private KernelConfig Config(int tokens, int outputDim) =>
        new(tokens * ((outputDim + _groupSize - 1) / _groupSize), _groupSize);

    internal static void Kernel<TY, SY, TW, SW>(ExpandArgs<TY, TW> a)
        where TY : unmanaged
        where SY : struct, IStorage<TY>
        where TW : unmanaged
        where SW : struct, IStorage<TW>
    {
        SY sy = default;
        SW sw = default;
        int tiles = (a.OutputDim + Group.DimX - 1) / Group.DimX;
        int t = Grid.IdxX / tiles;
        int j = Grid.IdxX % tiles * Group.DimX + Group.IdxX;
        if (j >= a.OutputDim)
        {
            return;
        }
        float sum = 0f;
        long slots = (long)t * a.TopK;
        if (a.ParameterMixing != 0)
        {
            int rank = 0;
            for (int s = 0; s < a.TopK; s++)
            {
                rank = a.SlotPair[slots + s] >= 0 ? a.Rank[a.Ids[slots + s]] : rank;
            }
            for (int k = 0; k < rank; k++)
            {
                float u = 0f;
                for (int s = 0; s < a.TopK; s++)
                {
                    int pair = a.SlotPair[slots + s];
                    u += pair >= 0 ? a.V[(long)pair * a.VStride + k] : 0f;
                }
                for (int s = 0; s < a.TopK; s++)
                {
                    if (a.SlotPair[slots + s] >= 0)
                    {
                        int e = a.Ids[slots + s];
                        sum += u * a.Weights[slots + s] * a.Scaling[e] * sw.Load(a.BTransposed[a.BOffset[e] + j + (long)k * a.OutputDim]);
                    }
                }
            }
        }
        else
        {
            for (int s = 0; s < a.TopK; s++)
            {
                int pair = a.SlotPair[slots + s];
                if (pair < 0)
                {
                    continue;
                }
                int e = a.Ids[slots + s];
                long b = a.BOffset[e] + j, v = (long)pair * a.VStride;
                for (int k = 0; k < a.Rank[e]; k++)
                {
                    sum += a.V[v + k] * sw.Load(a.BTransposed[b + (long)k * a.OutputDim]);
                }
            }
        }
        long y = (long)t * a.OutputDim + j;
        a.Y[y] = sy.Store(sy.Load(a.Y[y]) + sum);
    }
}
