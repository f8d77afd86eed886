using System.Reflection;
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
/// Gating for every score-based router: one team per token (a group of one team, striding over the tokens)
/// computes norm(x) (none, LayerNorm without affine, eps 1e-5, or L2 floored at 1e-12), the scores
/// f(norm(x) · p_e) / τ + b_e for every expert (lanes stride d_in, so prototype reads are coalesced; the
/// team's reduction sums them), keeps the top k with <see cref="SlotKeys"/> (ties to the lower index), and
/// writes softmax weights over the kept scores. The keys of a token live in static shared memory, which
/// bounds the experts per call (<see cref="MaxExperts"/>).
/// </summary>
public sealed class GatingKernel
{
    /// <summary>The most experts one gating call scores: its keys fill 8 KiB of shared memory.</summary>
    public const int MaxExperts = 1024;

    private readonly TeamShape _shape;
    private readonly Action<AcceleratorStream, KernelConfig, GatingArgs<float>> _f32;
    private readonly Action<AcceleratorStream, KernelConfig, GatingArgs<ushort>> _f16;

    /// <summary>Compiles both variants (F32 and F16 activations) for an accelerator; a group is one team.</summary>
    internal GatingKernel(Accelerator accelerator, bool warps)
    {
        var (f32, f16) = Variants(warps);
        _f32 = KernelLoader.Load(accelerator, f32, out int a);
        _f16 = KernelLoader.Load(accelerator, f16, out int b);
        _shape = TeamShape.For(accelerator, maxTeamsPerGroup: 1, Math.Min(a, b));
    }

    /// <summary>Threads per group (one token's team).</summary>
    public int GroupSize => _shape.Width;

    /// <summary>The entry points an accelerator with (or without) warp reductions loads.</summary>
    internal static IEnumerable<MethodInfo> EntryPoints(bool warps)
    {
        var (f32, f16) = Variants(warps);
        return [f32.Method, f16.Method];
    }

    private static (Action<GatingArgs<float>> F32, Action<GatingArgs<ushort>> F16) Variants(bool warps) => warps
        ? (Kernel<float, F32, WarpTeam>, Kernel<ushort, F16, WarpTeam>)
        : (Kernel<float, F32, GroupTeam>, Kernel<ushort, F16, GroupTeam>);

    /// <summary>Launches gating for F32 (float) or F16 (ushort) activations.</summary>
    /// <exception cref="NotSupportedException">More than <see cref="MaxExperts"/> experts.</exception>
    public void Launch<TX>(AcceleratorStream stream, in GatingArgs<TX> args)
        where TX : unmanaged
    {
        EnsureFits(args.Experts);
        ref GatingArgs<TX> a = ref Unsafe.AsRef(in args);
        var config = new KernelConfig(Math.Max(1, args.Tokens), _shape.Width);
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

    /// <summary>Throws unless one gating call can score <paramref name="experts"/> experts (callers check before any other work).</summary>
    /// <exception cref="NotSupportedException">More than <see cref="MaxExperts"/>.</exception>
    public static void EnsureFits(int experts)
    {
        if (experts > MaxExperts)
        {
            throw new NotSupportedException($"the GPU gating kernel scores up to {MaxExperts} experts per call; this router has {experts}");
        }
    }

    internal static void Kernel<TX, SX, TT>(GatingArgs<TX> a)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TT : struct, ITeam
    {
        SX sx = default;
        TT team = default;
        ArrayView<ulong> keys = SharedMemory.Allocate<ulong>(MaxExperts);
        ArrayView<float> sums = SharedMemory.Allocate<float>(GroupTeam.MaxWidth);
        ArrayView<ulong> minima = SharedMemory.Allocate<ulong>(GroupTeam.MaxWidth);
        int lane = team.Lane, width = team.Width, n = a.InputDim;
        for (int t = Grid.IdxX; t < a.Tokens; t += Grid.DimX)
        {
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
                mean = team.Sum(sum, sums) / n;
                float squares = 0f;
                for (int i = lane; i < n; i += width)
                {
                    float d = sx.Load(a.X[row + i]) - mean;
                    squares += d * d;
                }
                scale = XMath.Rsqrt(team.Sum(squares, sums) / n + 1e-5f);
            }
            else if (a.Normalization == 2)
            {
                float squares = 0f;
                for (int i = lane; i < n; i += width)
                {
                    float v = sx.Load(a.X[row + i]);
                    squares += v * v;
                }
                scale = 1f / XMath.Max(XMath.Sqrt(team.Sum(squares, sums)), 1e-12f);
            }

            for (int e = 0; e < a.Experts; e++)
            {
                long p = (long)e * n;
                float dot = 0f;
                for (int i = lane; i < n; i += width)
                {
                    dot += (sx.Load(a.X[row + i]) - mean) * a.Prototypes[p + i];
                }
                dot = team.Sum(dot, sums) * scale;
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
            team.Barrier();

            // Top-k: k rounds of a team-wide minimum over the keys; the winner is struck out. Every lane
            // sees each winner, so every lane sums the softmax denominator itself, in slot order.
            long slots = (long)t * a.TopK;
            float top = 0f, total = 0f;
            for (int s = 0; s < a.TopK; s++)
            {
                ulong best = SlotKeys.Empty;
                for (int e = lane; e < a.Experts; e += width)
                {
                    ulong key = keys[e];
                    best = key < best ? key : best;
                }
                best = team.Min(best, minima);
                float score = SlotKeys.Value(best);
                top = s == 0 ? score : top; // the first is the largest
                total += XMath.Exp(score - top);
                int winner = SlotKeys.Expert(best);
                if (lane == 0)
                {
                    a.Ids[slots + s] = winner;
                    a.Weights[slots + s] = score;
                    if (winner >= 0)
                    {
                        keys[winner] = SlotKeys.Empty;
                    }
                }
                team.Barrier();
            }

            // Softmax over the kept scores (lane 0 wrote them; the barrier above made them visible).
            for (int s = lane; s < a.TopK; s += width)
            {
                a.Weights[slots + s] = XMath.Exp(a.Weights[slots + s] - top) / total;
            }
            team.Barrier(); // the keys are rewritten for the group's next token
        }
    }
}
