using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>Arguments of the gating kernel (one struct: launchers take at most 14 parameters).</summary>
/// <typeparam name="TX">Element type of X.</typeparam>
public struct GatingArgs<TX> where TX : unmanaged
{
    /// <summary>X, row-major <c>[Tokens, InputDim]</c>.</summary>
    public ArrayView<TX> X;

    /// <summary>T.</summary>
    public int Tokens;

    /// <summary>d_in.</summary>
    public int InputDim;

    /// <summary>P, row-major <c>[Experts, InputDim]</c>, float32.</summary>
    public ArrayView<float> Prototypes;

    /// <summary>b <c>[Experts]</c>; read only when <see cref="HasBias"/> is 1.</summary>
    public ArrayView<float> Bias;

    /// <summary>1 when <see cref="Bias"/> holds a bias.</summary>
    public int HasBias;

    /// <summary>E.</summary>
    public int Experts;

    /// <summary>0: none, 1: LayerNorm (no affine), 2: L2.</summary>
    public int Normalization;

    /// <summary>1: score with |x · p| (Arrow).</summary>
    public int Absolute;

    /// <summary>1 / τ.</summary>
    public float InverseTemperature;

    /// <summary>k.</summary>
    public int TopK;

    /// <summary>Out: expert ids, row-major <c>[Tokens, TopK]</c>, in decision order.</summary>
    public ArrayView<int> Ids;

    /// <summary>Out: weights, row-major <c>[Tokens, TopK]</c>.</summary>
    public ArrayView<float> Weights;
}

/// <summary>
/// Gating for every score-based router: one warp per token computes norm(x) (none, LayerNorm without
/// affine, eps 1e-5, or L2 floored at 1e-12), the scores f(norm(x) · p_e) / τ + b_e for every expert
/// (lanes stride d_in, so prototype reads are coalesced; a butterfly sums them), keeps the top k with
/// <see cref="SlotKeys"/> (ties to the lower index), and writes softmax weights over the kept scores.
/// The keys of a warp's token live in shared memory: <c>E</c> 64-bit words per warp.
/// </summary>
public sealed class GatingKernel
{

    private readonly Accelerator _accelerator;
    private readonly Action<AcceleratorStream, KernelConfig, GatingArgs<float>> _f32;
    private readonly Action<AcceleratorStream, KernelConfig, GatingArgs<ushort>> _f16;

    /// <summary>Compiles both variants (F32 and F16 activations) for an accelerator.</summary>
    public GatingKernel(Accelerator accelerator)
    {
        _accelerator = accelerator;
        WarpsPerGroup = Math.Clamp(accelerator.MaxNumThreadsPerGroup / accelerator.WarpSize, 1, 4);
        _f32 = accelerator.LoadKernel<GatingArgs<float>>(Kernel<float, F32>);
        _f16 = accelerator.LoadKernel<GatingArgs<ushort>>(Kernel<ushort, F16>);
    }

    /// <summary>Warps (tokens) per group: four, or fewer where groups are smaller.</summary>
    public int WarpsPerGroup { get; }

    /// <summary>Launches gating for F32 (float) or F16 (ushort) activations.</summary>
    public void Launch<TX>(AcceleratorStream stream, in GatingArgs<TX> args)
        where TX : unmanaged
    {
        ref GatingArgs<TX> a = ref Unsafe.AsRef(in args);
        KernelConfig config = Config(args.Tokens, args.Experts);
        if (typeof(TX) == typeof(float))
        {
            _f32(stream, config, Unsafe.As<GatingArgs<TX>, GatingArgs<float>>(ref a));
        }
        else if (typeof(TX) == typeof(ushort))
        {
            _f16(stream, config, Unsafe.As<GatingArgs<TX>, GatingArgs<ushort>>(ref a));
        }
        else
        {
            throw new NotSupportedException($"storage {typeof(TX).Name}: only float (F32) and ushort (F16 bits)");
        }
    }

    private KernelConfig Config(int tokens, int experts)
    {
        int warp = _accelerator.WarpSize;
        return new KernelConfig(
            (tokens + WarpsPerGroup - 1) / WarpsPerGroup,
            WarpsPerGroup * warp,
            SharedMemoryConfig.RequestDynamic<ulong>(WarpsPerGroup * experts));
    }

    internal static void Kernel<TX, SX>(GatingArgs<TX> a)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
    {
        SX sx = default;
        int warp = Warp.WarpIdx, lane = Warp.LaneIdx, width = Warp.WarpSize;
        int t = Grid.IdxX * (Group.DimX / width) + warp;
        ArrayView<ulong> keys = SharedMemory.GetDynamic<ulong>().SubView((long)warp * a.Experts, a.Experts);
        if (t >= a.Tokens)
        {
            return; // the whole warp leaves together
        }
        int n = a.InputDim;
        long row = (long)t * n;

        // norm(x) = (x - mean) · scale, applied on the fly.
        float mean = 0f, scale = 1f;
        if (a.Normalization == 1)
        {
            float sum = 0f;
            for (int i = lane; i < n; i += width)
            {
                sum += sx.Load(a.X[row + i]);
            }
            mean = WarpReduce.Sum(sum) / n;
            float squares = 0f;
            for (int i = lane; i < n; i += width)
            {
                float d = sx.Load(a.X[row + i]) - mean;
                squares += d * d;
            }
            scale = XMath.Rsqrt(WarpReduce.Sum(squares) / n + 1e-5f);
        }
        else if (a.Normalization == 2)
        {
            float squares = 0f;
            for (int i = lane; i < n; i += width)
            {
                float v = sx.Load(a.X[row + i]);
                squares += v * v;
            }
            scale = 1f / XMath.Max(XMath.Sqrt(WarpReduce.Sum(squares)), 1e-12f);
        }

        for (int e = 0; e < a.Experts; e++)
        {
            long p = (long)e * n;
            float dot = 0f;
            for (int i = lane; i < n; i += width)
            {
                dot += (sx.Load(a.X[row + i]) - mean) * a.Prototypes[p + i];
            }
            dot = WarpReduce.Sum(dot) * scale;
            float score = (a.Absolute != 0 ? XMath.Abs(dot) : dot) * a.InverseTemperature;
            if (a.HasBias != 0)
            {
                score += a.Bias[e];
            }
            if (lane == 0)
            {
                keys[e] = SlotKeys.Key(score, e);
            }
        }
        Warp.Barrier();

        // Top-k: k rounds of a warp-wide minimum over the keys; the winner is struck out.
        long slots = (long)t * a.TopK;
        for (int s = 0; s < a.TopK; s++)
        {
            ulong best = SlotKeys.Empty;
            for (int e = lane; e < a.Experts; e += width)
            {
                ulong key = keys[e];
                best = key < best ? key : best;
            }
            best = WarpReduce.Min(best);
            if (lane == 0)
            {
                a.Ids[slots + s] = SlotKeys.Expert(best);
                a.Weights[slots + s] = SlotKeys.Value(best);
                keys[SlotKeys.Expert(best)] = SlotKeys.Empty;
            }
            Warp.Barrier();
        }

        // Softmax over the kept scores; the first is the largest.
        float top = a.Weights[slots];
        float total = 0f;
        for (int s = lane; s < a.TopK; s += width)
        {
            total += XMath.Exp(a.Weights[slots + s] - top);
        }
        total = WarpReduce.Sum(total);
        Warp.Barrier(); // every lane has read the scores before any is overwritten
        for (int s = lane; s < a.TopK; s += width)
        {
            a.Weights[slots + s] = XMath.Exp(a.Weights[slots + s] - top) / total;
        }
    }
}
