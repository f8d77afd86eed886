using System.Reflection;
using ILGPU;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>
/// Arguments of the expand kernel. The last field is a view: for a struct that ends in a lone int (tail padding),
/// rusticl refuses the argument size ILGPU passes (CL_INVALID_ARG_SIZE), as a strict driver may.
/// </summary>
/// <typeparam name="TY">Element type of Y.</typeparam>
/// <typeparam name="TW">Element type of the factors.</typeparam>
internal struct ExpandArgs<TY, TW>
    where TY : unmanaged
    where TW : unmanaged
{
    /// <summary>Y, row-major <c>[Tokens, OutputDim]</c>, holding the base output; the mixture is added in place.</summary>
    public ArrayView<TY> Y;

    /// <summary>T.</summary>
    public int Tokens;

    /// <summary>d_out.</summary>
    public int OutputDim;

    /// <summary>1 when Y starts 16-byte aligned and d_out is a multiple of 8, so its rows take 16-byte loads and stores.</summary>
    public int YVector;

    /// <summary>k.</summary>
    public int TopK;

    /// <summary>Expert id of every (token, slot); -1 is an empty slot.</summary>
    public ArrayView<int> Ids;

    /// <summary>Weight of every (token, slot).</summary>
    public ArrayView<float> Weights;

    /// <summary>1 for parameter mixing (see the kernel); 0 for output mixing.</summary>
    public int ParameterMixing;

    /// <summary>Row stride of V.</summary>
    public int VStride;

    /// <summary>Scaling of each expert; read only for parameter mixing.</summary>
    public ArrayView<float> Scaling;

    /// <summary>Every expert's Bᵀ, row-major <c>[r_e, BPitch]</c>, back to back, zero past d_out; 16-byte aligned.</summary>
    public ArrayView<TW> BTransposed;

    /// <summary>Row pitch of <see cref="BTransposed"/>: d_out rounded up to a multiple of 8.</summary>
    public int BPitch;

    /// <summary>Where each expert's Bᵀ starts (a multiple of 8).</summary>
    public ArrayView<long> BOffset;

    /// <summary>Rank of each expert.</summary>
    public ArrayView<int> Rank;

    /// <summary>V from the shrink, row-major <c>[Tokens · TopK, VStride]</c>, indexed by slot.</summary>
    public ArrayView<float> V;
}

/// <summary>
/// Expand with the weighted sum fused in: y[t, j..j+7] += Σ_slots Σ_k V[slot, k] · Bᵀ_e[k, j..j+7], each thread
/// eight consecutive outputs of one token (one 16-byte load of a Bᵀ row per rank term for F16 and BF16, two for F32,
/// eight rank terms loaded before they are used),
/// slots and rank terms summed in a fixed order in float32 and added to y once (rounded once for F16). No
/// atomics: results repeat exactly from run to run. Bᵀ rows are read along j, so a group's loads are
/// coalesced; V, the rank and the offsets are read once per slot and broadcast.
/// For parameter mixing the shrink left V[slot] = w · A_e x, so u = Σ_slots V[slot] is A_tok x, and
/// y[t, j] += Σ_k u_k Σ_slots w · s_e · Bᵀ_e[k, j] = s · B_tok (A_tok x) (one rank across the slots).
/// </summary>
public sealed class ExpandKernel
{
    /// <summary>Outputs per thread.</summary>
    public const int OutputsPerThread = 8;

    private const int MaxGroup = 128;

    private readonly int _groupSize;
    private readonly Delegate[] _variants; // in StorageVariant's order

    /// <summary>
    /// Compiles the six storage variants (F32 and F16 activations, F32, F16 and BF16 factors) for an accelerator (hardware
    /// F16 conversions with warps).
    /// </summary>
    internal ExpandKernel(Accelerator accelerator, bool warps)
    {
        var (f32f32, f32f16, f32bf16, f16f32, f16f16, f16bf16) = Variants(warps);
        int limit = int.MaxValue;
        _variants =
        [
            KernelLoader.LoadVariant(accelerator, f32f32, ref limit), KernelLoader.LoadVariant(accelerator, f32f16, ref limit), KernelLoader.LoadVariant(accelerator, f32bf16, ref limit),
            KernelLoader.LoadVariant(accelerator, f16f32, ref limit), KernelLoader.LoadVariant(accelerator, f16f16, ref limit), KernelLoader.LoadVariant(accelerator, f16bf16, ref limit),
        ];
        _groupSize = GroupFor(limit);
    }

    /// <summary>Threads per group for a kernel limit.</summary>
    internal static int GroupFor(int kernelLimit) => Math.Min(MaxGroup, kernelLimit);

    /// <summary>The entry points an accelerator with (or without) warps loads (the expand itself needs no reductions).</summary>
    internal static IEnumerable<MethodInfo> EntryPoints(bool warps)
    {
        var (f32f32, f32f16, f32bf16, f16f32, f16f16, f16bf16) = Variants(warps);
        return [f32f32.Method, f32f16.Method, f32bf16.Method, f16f32.Method, f16f16.Method, f16bf16.Method];
    }

    private static (Action<ExpandArgs<float, float>>, Action<ExpandArgs<float, ushort>>, Action<ExpandArgs<float, BFloat16Bits>>,
        Action<ExpandArgs<ushort, float>>, Action<ExpandArgs<ushort, ushort>>, Action<ExpandArgs<ushort, BFloat16Bits>>) Variants(bool warps) => warps
        ? (Kernel<float, F32, float, F32>, Kernel<float, F32, ushort, F16Cuda>, Kernel<float, F32, BFloat16Bits, BF16>,
            Kernel<ushort, F16Cuda, float, F32>, Kernel<ushort, F16Cuda, ushort, F16Cuda>, Kernel<ushort, F16Cuda, BFloat16Bits, BF16>)
        : (Kernel<float, F32, float, F32>, Kernel<float, F32, ushort, F16>, Kernel<float, F32, BFloat16Bits, BF16>,
            Kernel<ushort, F16, float, F32>, Kernel<ushort, F16, ushort, F16>, Kernel<ushort, F16, BFloat16Bits, BF16>);

    /// <summary>Threads per group.</summary>
    public int GroupSize => _groupSize;

    /// <summary>Groups of one launch: every token's blocks of <paramref name="groupSize"/> × 8 outputs.</summary>
    public static int Groups(int tokens, int outputDim, int groupSize) =>
        Math.Max(1, tokens * ((outputDim + groupSize * OutputsPerThread - 1) / (groupSize * OutputsPerThread)));

    /// <summary>Launches the expand for F32 (float) or F16 (ushort) activations and F32, F16 or BF16 (<see cref="BFloat16Bits"/>) factors.</summary>
    internal void Launch<TY, TW>(AcceleratorStream stream, in ExpandArgs<TY, TW> args)
        where TY : unmanaged
        where TW : unmanaged
    {
        var config = new KernelConfig(Groups(args.Tokens, args.OutputDim, _groupSize), _groupSize);
        ((Action<AcceleratorStream, KernelConfig, ExpandArgs<TY, TW>>)_variants[StorageVariant.Of<TY, TW>()])(stream, config, args);
    }

    internal static void Kernel<TY, SY, TW, SW>(ExpandArgs<TY, TW> a)
        where TY : unmanaged
        where SY : struct, IStorage<TY>
        where TW : unmanaged
        where SW : struct, IStorage<TW>
    {
        SY sy = default;
        SW sw = default;
        int span = Group.DimX * OutputsPerThread;
        int blocks = (a.OutputDim + span - 1) / span;
        int t = Grid.IdxX / blocks;
        int j = Grid.IdxX % blocks * span + Group.IdxX * OutputsPerThread;
        if (j >= a.OutputDim)
        {
            return; // no barriers here
        }
        Float8 sum = default;
        long slots = (long)t * a.TopK;
        if (a.ParameterMixing != 0)
        {
            int rank = 0;
            for (int s = 0; s < a.TopK; s++)
            {
                int e = a.Ids[slots + s];
                int r = e >= 0 ? a.Rank[e] : 0;
                rank = RoutingContract.Contributes(e, a.Weights[slots + s], r) ? r : rank;
            }
            for (int k = 0; k < rank; k++)
            {
                float u = 0f;
                for (int s = 0; s < a.TopK; s++)
                {
                    int e = a.Ids[slots + s];
                    u += e >= 0 && RoutingContract.Contributes(e, a.Weights[slots + s], a.Rank[e]) ? a.V[(slots + s) * a.VStride + k] : 0f;
                }
                for (int s = 0; s < a.TopK; s++)
                {
                    int e = a.Ids[slots + s];
                    float w = a.Weights[slots + s];
                    if (e >= 0 && RoutingContract.Contributes(e, w, a.Rank[e]))
                    {
                        sum.Add(u * w * a.Scaling[e], sw.Load8(a.BTransposed, a.BOffset[e] + j + (long)k * a.BPitch));
                    }
                }
            }
        }
        else
        {
            for (int s = 0; s < a.TopK; s++)
            {
                int e = a.Ids[slots + s];
                int rank = e >= 0 ? a.Rank[e] : 0;
                if (!RoutingContract.Contributes(e, a.Weights[slots + s], rank))
                {
                    continue;
                }
                long b = a.BOffset[e] + j, v = (slots + s) * a.VStride;
                int k = 0;
                for (; k + 8 <= rank; k += 8, b += 8L * a.BPitch)
                {
                    // Eight rows of Bᵀ in flight before any is used: the chain of dependent loads is r / 8 per slot.
                    Float8 b0 = sw.Load8(a.BTransposed, b), b1 = sw.Load8(a.BTransposed, b + a.BPitch);
                    Float8 b2 = sw.Load8(a.BTransposed, b + 2L * a.BPitch), b3 = sw.Load8(a.BTransposed, b + 3L * a.BPitch);
                    Float8 b4 = sw.Load8(a.BTransposed, b + 4L * a.BPitch), b5 = sw.Load8(a.BTransposed, b + 5L * a.BPitch);
                    Float8 b6 = sw.Load8(a.BTransposed, b + 6L * a.BPitch), b7 = sw.Load8(a.BTransposed, b + 7L * a.BPitch);
                    sum.Add(a.V[v + k], b0);
                    sum.Add(a.V[v + k + 1], b1);
                    sum.Add(a.V[v + k + 2], b2);
                    sum.Add(a.V[v + k + 3], b3);
                    sum.Add(a.V[v + k + 4], b4);
                    sum.Add(a.V[v + k + 5], b5);
                    sum.Add(a.V[v + k + 6], b6);
                    sum.Add(a.V[v + k + 7], b7);
                }
                for (; k < rank; k++, b += a.BPitch)
                {
                    sum.Add(a.V[v + k], sw.Load8(a.BTransposed, b));
                }
            }
        }
        long y = (long)t * a.OutputDim + j, end = (long)t * a.OutputDim + a.OutputDim;
        Float8 value = a.YVector != 0 ? sy.Load8(a.Y, y) : sy.Load8Within(a.Y, y, end);
        value.Add(sum);
        if (a.YVector != 0)
        {
            sy.Store8(a.Y, y, value);
        }
        else
        {
            sy.Store8Within(a.Y, y, end, value);
        }
    }
}
