using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace MoErging.Kernels;

/// <summary>
/// Arguments of the gating scores. The last field is a view: for a struct that ends in a lone int (tail padding),
/// rusticl refuses the argument size ILGPU passes (CL_INVALID_ARG_SIZE), as a strict driver may.
/// </summary>
/// <typeparam name="TX">Element type of X.</typeparam>
/// <typeparam name="TP">Element type of the prototypes.</typeparam>
internal struct ScoresArgs<TX, TP>
    where TX : unmanaged
    where TP : unmanaged
{
    /// <summary>X, row-major <c>[Tokens, InputDim]</c>.</summary>
    public ArrayView<TX> X;

    /// <summary>T.</summary>
    public int Tokens;

    /// <summary>d_in.</summary>
    public int InputDim;

    /// <summary>1 when X starts 16-byte aligned and d_in is a multiple of 8, so its rows take 16-byte loads.</summary>
    public int XVector;

    /// <summary>E.</summary>
    public int Experts;

    /// <summary>P, row-major <c>[Experts, PrototypePitch]</c>, F32, F16 or BF16, zero past d_in; 16-byte aligned.</summary>
    public ArrayView<TP> Prototypes;

    /// <summary>Row pitch of <see cref="Prototypes"/>: d_in rounded up to a multiple of 8.</summary>
    public int PrototypePitch;

    /// <summary>0: none, 1: LayerNorm (no affine), 2: L2; with <see cref="RoutingContract"/>'s epsilons.</summary>
    public int Normalization;

    /// <summary>1: score with |x · p| (Arrow).</summary>
    public int Absolute;

    /// <summary>1 / τ.</summary>
    public float InverseTemperature;

    /// <summary>1 when <see cref="Bias"/> holds a bias.</summary>
    public int HasBias;

    /// <summary>b <c>[Experts]</c>; read only when <see cref="HasBias"/> is 1.</summary>
    public ArrayView<float> Bias;

    /// <summary>Out: the scores, expert-major <c>[Experts, Tokens]</c> (a token's selection reads them coalesced).</summary>
    public ArrayView<float> Scores;
}

/// <summary>Arguments of the gating selection.</summary>
internal struct SelectArgs
{
    /// <summary>The scores, expert-major <c>[Experts, Tokens]</c>.</summary>
    public ArrayView<float> Scores;

    /// <summary>T.</summary>
    public int Tokens;

    /// <summary>E.</summary>
    public int Experts;

    /// <summary>k.</summary>
    public int TopK;

    /// <summary>Out: expert ids, row-major <c>[Tokens, TopK]</c>, in decision order.</summary>
    public ArrayView<int> Ids;

    /// <summary>Out: weights, row-major <c>[Tokens, TopK]</c>.</summary>
    public ArrayView<float> Weights;
}

/// <summary>
/// Gating for every score-based router, in two steps. <b>Scores</b> is a small tiled GEMM: each group takes a
/// tile of <see cref="TileTokens"/> tokens × <see cref="TileExperts"/> experts over the whole input dimension,
/// its threads striding d_in eight elements at a time with 16-byte loads, each loaded slice of x used against
/// all the tile's prototypes and each slice of a prototype against all its tokens (in registers), then one
/// fixed-order reduction through shared memory; norm(x) (none; LayerNorm without affine; L2) is a pass of
/// the same shape first. A score is f(norm(x) · p_e) / τ + b_e. Small tiles give enough groups to fill a
/// device at decode sizes. <b>Select</b> keeps each token's top k with <see cref="SlotKeys"/> (value
/// descending, ties to the lower expert) and writes softmax weights over the kept scores: one thread per
/// token, k passes over its scores, no shared memory and no limit on E. At decode sizes the shrink runs the
/// same selection itself (<see cref="Choose"/>) and this launch is skipped.
/// </summary>
public sealed class GatingKernel
{
    /// <summary>Tokens per scores tile.</summary>
    public const int TileTokens = 4;

    /// <summary>Experts per scores tile.</summary>
    public const int TileExperts = 4;

    /// <summary>Shared memory the scores kernel declares (its reduction tree); the selection declares none.</summary>
    public const int ScoresSharedBytes = 8 * GroupTeam.MaxWidth * sizeof(float);

    private const int SelectGroup = 128;

    private readonly Delegate[] _scores; // in StorageVariant's order
    private readonly Action<AcceleratorStream, KernelConfig, SelectArgs> _select;

    /// <summary>
    /// Compiles the six scores variants (F32 and F16 activations, F32, F16 and BF16 prototypes; hardware F16 conversions with
    /// warps) and the selection for an accelerator.
    /// </summary>
    internal GatingKernel(Accelerator accelerator, bool warps)
    {
        var (f32f32, f32f16, f32bf16, f16f32, f16f16, f16bf16) = Variants(warps);
        int limit = int.MaxValue;
        _scores =
        [
            KernelLoader.LoadVariant(accelerator, f32f32, ref limit), KernelLoader.LoadVariant(accelerator, f32f16, ref limit), KernelLoader.LoadVariant(accelerator, f32bf16, ref limit),
            KernelLoader.LoadVariant(accelerator, f16f32, ref limit), KernelLoader.LoadVariant(accelerator, f16f16, ref limit), KernelLoader.LoadVariant(accelerator, f16bf16, ref limit),
        ];
        _select = KernelLoader.Load<SelectArgs>(accelerator, Select, out int c);
        ScoresGroupSize = ScoresGroupFor(limit);
        SelectGroupSize = SelectGroupFor(c);
    }

    /// <summary>Threads per scores group for a kernel limit: one reduction tree.</summary>
    internal static int ScoresGroupFor(int kernelLimit) => TeamShape.GroupWidth(kernelLimit);

    /// <summary>Threads per selection group for a kernel limit.</summary>
    internal static int SelectGroupFor(int kernelLimit) => Math.Min(SelectGroup, kernelLimit);

    /// <summary>
    /// Whether the shrink runs the selection itself (saving a launch): when every shrink group choosing for
    /// every token is cheap, at most <see cref="FusedSelectionLimit"/> scores read per group.
    /// </summary>
    public static bool SelectsInShrink(int tokens, int experts, int topK) => (long)tokens * experts * topK <= FusedSelectionLimit;

    /// <summary>Scores one shrink group may read to choose every token's experts itself (decode sizes: T = 64, E = 64, k = 2).</summary>
    public const int FusedSelectionLimit = 8192;

    /// <summary>Threads per scores group (one reduction tree, at most <see cref="GroupTeam.MaxWidth"/>).</summary>
    public int ScoresGroupSize { get; }

    /// <summary>Threads per selection group.</summary>
    public int SelectGroupSize { get; }

    /// <summary>The entry points an accelerator with (or without) warps loads.</summary>
    internal static IEnumerable<MethodInfo> EntryPoints(bool warps)
    {
        var (f32f32, f32f16, f32bf16, f16f32, f16f16, f16bf16) = Variants(warps);
        return [f32f32.Method, f32f16.Method, f32bf16.Method, f16f32.Method, f16f16.Method, f16bf16.Method, ((Action<SelectArgs>)Select).Method];
    }

    /// <summary>The scores for F32 and F16 activations, each against F32, F16 and BF16 prototypes.</summary>
    private static (Action<ScoresArgs<float, float>>, Action<ScoresArgs<float, ushort>>, Action<ScoresArgs<float, BFloat16Bits>>,
        Action<ScoresArgs<ushort, float>>, Action<ScoresArgs<ushort, ushort>>, Action<ScoresArgs<ushort, BFloat16Bits>>) Variants(bool warps) => warps
        ? (Scores<float, F32, float, F32>, Scores<float, F32, ushort, F16Cuda>, Scores<float, F32, BFloat16Bits, BF16>,
            Scores<ushort, F16Cuda, float, F32>, Scores<ushort, F16Cuda, ushort, F16Cuda>, Scores<ushort, F16Cuda, BFloat16Bits, BF16>)
        : (Scores<float, F32, float, F32>, Scores<float, F32, ushort, F16>, Scores<float, F32, BFloat16Bits, BF16>,
            Scores<ushort, F16, float, F32>, Scores<ushort, F16, ushort, F16>, Scores<ushort, F16, BFloat16Bits, BF16>);

    /// <summary>Groups of the scores launch: one per tile.</summary>
    public static int ScoresGroups(int tokens, int experts) =>
        Math.Max(1, (tokens + TileTokens - 1) / TileTokens * ((experts + TileExperts - 1) / TileExperts));

    /// <summary>Groups of the selection launch.</summary>
    public static int SelectGroups(int tokens, int groupSize) => Math.Max(1, (tokens + groupSize - 1) / groupSize);

    /// <summary>Launches the scores for F32 (float) or F16 (ushort) activations against F32 (float), F16 (ushort) or BF16 (<see cref="BFloat16Bits"/>) prototypes.</summary>
    internal void LaunchScores<TX, TP>(AcceleratorStream stream, in ScoresArgs<TX, TP> args)
        where TX : unmanaged
        where TP : unmanaged
    {
        var config = new KernelConfig(ScoresGroups(args.Tokens, args.Experts), ScoresGroupSize);
        ((Action<AcceleratorStream, KernelConfig, ScoresArgs<TX, TP>>)_scores[StorageVariant.Of<TX, TP>()])(stream, config, args);
    }

    /// <summary>Launches the selection.</summary>
    internal void LaunchSelect(AcceleratorStream stream, in SelectArgs args) =>
        _select(stream, new KernelConfig(SelectGroups(args.Tokens, SelectGroupSize), SelectGroupSize), args);

    internal static void Scores<TX, SX, TP, SP>(ScoresArgs<TX, TP> a)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TP : unmanaged
        where SP : struct, IStorage<TP>
    {
        GroupTeam team = default;
        ArrayView<float> scratch = SharedMemory.Allocate<float>(8 * GroupTeam.MaxWidth);
        int expertTiles = (a.Experts + TileExperts - 1) / TileExperts;
        int t0 = Grid.IdxX / expertTiles * TileTokens, e0 = Grid.IdxX % expertTiles * TileExperts;
        long n = a.InputDim, step = 8L * team.Width, first = 8L * team.Lane;
        // The tile's rows; a token or expert past the end repeats the tile's first and is never written.
        long x0 = Row(t0, 0, a.Tokens, n), x1 = Row(t0, 1, a.Tokens, n), x2 = Row(t0, 2, a.Tokens, n), x3 = Row(t0, 3, a.Tokens, n);
        long p0 = Row(e0, 0, a.Experts, a.PrototypePitch), p1 = Row(e0, 1, a.Experts, a.PrototypePitch);
        long p2 = Row(e0, 2, a.Experts, a.PrototypePitch), p3 = Row(e0, 3, a.Experts, a.PrototypePitch);

        // norm(x) = (x - mean) · scale per token, applied on the fly: LayerNorm in two passes (the mean,
        // then the squares about it, as the CPU backend computes it), L2 in one.
        Sums8 mean = default, scale = default;
        scale.S0 = scale.S1 = scale.S2 = scale.S3 = 1f;
        if (a.Normalization == 1)
        {
            Sums8 sums = default;
            for (long i = first; i < n; i += step)
            {
                sums.S0 += Total(LoadX<TX, SX, TP>(a, x0, i));
                sums.S1 += Total(LoadX<TX, SX, TP>(a, x1, i));
                sums.S2 += Total(LoadX<TX, SX, TP>(a, x2, i));
                sums.S3 += Total(LoadX<TX, SX, TP>(a, x3, i));
            }
            team.Sum(ref sums, scratch);
            mean.S0 = sums.S0 / n;
            mean.S1 = sums.S1 / n;
            mean.S2 = sums.S2 / n;
            mean.S3 = sums.S3 / n;
        }
        if (a.Normalization != 0)
        {
            Sums8 squares = default;
            for (long i = first; i < n; i += step)
            {
                squares.S0 += Squares(LoadX<TX, SX, TP>(a, x0, i), mean.S0, i, n);
                squares.S1 += Squares(LoadX<TX, SX, TP>(a, x1, i), mean.S1, i, n);
                squares.S2 += Squares(LoadX<TX, SX, TP>(a, x2, i), mean.S2, i, n);
                squares.S3 += Squares(LoadX<TX, SX, TP>(a, x3, i), mean.S3, i, n);
            }
            team.Sum(ref squares, scratch);
            scale.S0 = Scale(a, squares.S0, n);
            scale.S1 = Scale(a, squares.S1, n);
            scale.S2 = Scale(a, squares.S2, n);
            scale.S3 = Scale(a, squares.S3, n);
        }

        // Dot products: lo holds experts 0 and 1 (tokens 0-3 each), hi experts 2 and 3. Lanes past d_in read
        // zeros from the prototypes' padding, so subtracting the mean there adds nothing.
        Sums8 lo = default, hi = default;
        if (a.XVector != 0)
        {
            Dots<TX, SX, TP, SP, VectorAccess>(a, ref lo, ref hi, x0, x1, x2, x3, p0, p1, p2, p3, mean, first, step);
        }
        else
        {
            Dots<TX, SX, TP, SP, BoundedAccess>(a, ref lo, ref hi, x0, x1, x2, x3, p0, p1, p2, p3, mean, first, step);
        }
        team.Sum(ref lo, scratch);
        team.Sum(ref hi, scratch);
        if (team.Lane == 0)
        {
            Write(a, t0, e0, scale, lo.S0, lo.S1, lo.S2, lo.S3);
            Write(a, t0, e0 + 1, scale, lo.S4, lo.S5, lo.S6, lo.S7);
            Write(a, t0, e0 + 2, scale, hi.S0, hi.S1, hi.S2, hi.S3);
            Write(a, t0, e0 + 3, scale, hi.S4, hi.S5, hi.S6, hi.S7);
        }
    }

    /// <summary>The tile's 16 dot products over d_in, two steps of eight elements per lane at a time.</summary>
    private static void Dots<TX, SX, TP, SP, TA>(in ScoresArgs<TX, TP> a, ref Sums8 lo, ref Sums8 hi, long x0, long x1, long x2, long x3,
        long p0, long p1, long p2, long p3, in Sums8 mean, long first, long step)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TP : unmanaged
        where SP : struct, IStorage<TP>
        where TA : struct, IRowAccess
    {
        long i = first, n = a.InputDim;
        for (; i + step < n; i += 2 * step)
        {
            // Two steps' loads in flight per lane: the chain of dependent loads is d_in / (16 · group size) long.
            Accumulate<TX, SX, TP, SP, TA>(a, ref lo, ref hi, x0, x1, x2, x3, p0, p1, p2, p3, mean, i, i + step);
        }
        if (i < n)
        {
            Accumulate<TX, SX, TP, SP, TA>(a, ref lo, ref hi, x0, x1, x2, x3, p0, p1, p2, p3, mean, i, -1);
        }
    }

    /// <summary>The tile's 16 dot products over elements i..i+7, and j..j+7 too unless j is -1 (loads first, then arithmetic).</summary>
    private static void Accumulate<TX, SX, TP, SP, TA>(in ScoresArgs<TX, TP> a, ref Sums8 lo, ref Sums8 hi, long x0, long x1, long x2, long x3,
        long p0, long p1, long p2, long p3, in Sums8 mean, long i, long j)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TP : unmanaged
        where SP : struct, IStorage<TP>
        where TA : struct, IRowAccess
    {
        SP sp = default;
        TA access = default;
        bool two = j >= 0;
        long n = a.InputDim;
        Float8 v0 = Centred(access.Load<TX, SX>(a.X, x0, i, n), mean.S0), v1 = Centred(access.Load<TX, SX>(a.X, x1, i, n), mean.S1);
        Float8 v2 = Centred(access.Load<TX, SX>(a.X, x2, i, n), mean.S2), v3 = Centred(access.Load<TX, SX>(a.X, x3, i, n), mean.S3);
        Float8 w0 = default, w1 = default, w2 = default, w3 = default;
        if (two)
        {
            w0 = Centred(access.Load<TX, SX>(a.X, x0, j, n), mean.S0);
            w1 = Centred(access.Load<TX, SX>(a.X, x1, j, n), mean.S1);
            w2 = Centred(access.Load<TX, SX>(a.X, x2, j, n), mean.S2);
            w3 = Centred(access.Load<TX, SX>(a.X, x3, j, n), mean.S3);
        }
        Float8 p = sp.Load8(a.Prototypes, p0 + i), q = two ? sp.Load8(a.Prototypes, p0 + j) : default;
        lo.S0 += v0.Dot(p) + w0.Dot(q); lo.S1 += v1.Dot(p) + w1.Dot(q); lo.S2 += v2.Dot(p) + w2.Dot(q); lo.S3 += v3.Dot(p) + w3.Dot(q);
        p = sp.Load8(a.Prototypes, p1 + i);
        q = two ? sp.Load8(a.Prototypes, p1 + j) : default;
        lo.S4 += v0.Dot(p) + w0.Dot(q); lo.S5 += v1.Dot(p) + w1.Dot(q); lo.S6 += v2.Dot(p) + w2.Dot(q); lo.S7 += v3.Dot(p) + w3.Dot(q);
        p = sp.Load8(a.Prototypes, p2 + i);
        q = two ? sp.Load8(a.Prototypes, p2 + j) : default;
        hi.S0 += v0.Dot(p) + w0.Dot(q); hi.S1 += v1.Dot(p) + w1.Dot(q); hi.S2 += v2.Dot(p) + w2.Dot(q); hi.S3 += v3.Dot(p) + w3.Dot(q);
        p = sp.Load8(a.Prototypes, p3 + i);
        q = two ? sp.Load8(a.Prototypes, p3 + j) : default;
        hi.S4 += v0.Dot(p) + w0.Dot(q); hi.S5 += v1.Dot(p) + w1.Dot(q); hi.S6 += v2.Dot(p) + w2.Dot(q); hi.S7 += v3.Dot(p) + w3.Dot(q);
    }

    private static long Row(int first, int q, int count, long pitch) => (first + q < count ? first + q : first) * pitch;

    /// <summary>An x slice for the normalisation passes (not the hot loop): the access is chosen per load there.</summary>
    private static Float8 LoadX<TX, SX, TP>(in ScoresArgs<TX, TP> a, long row, long i)
        where TX : unmanaged
        where SX : struct, IStorage<TX>
        where TP : unmanaged =>
        a.XVector != 0 ? default(VectorAccess).Load<TX, SX>(a.X, row, i, a.InputDim) : default(BoundedAccess).Load<TX, SX>(a.X, row, i, a.InputDim);

    private static float Total(in Float8 v) => v.F0 + v.F1 + v.F2 + v.F3 + v.F4 + v.F5 + v.F6 + v.F7;

    private static Float8 Centred(in Float8 v, float mean) => new()
    {
        F0 = v.F0 - mean, F1 = v.F1 - mean, F2 = v.F2 - mean, F3 = v.F3 - mean,
        F4 = v.F4 - mean, F5 = v.F5 - mean, F6 = v.F6 - mean, F7 = v.F7 - mean,
    };

    /// <summary>Σ (x - mean)² over the lanes below d_in (a bounded load leaves zeros past it, which must not count).</summary>
    private static float Squares(in Float8 v, float mean, long i, long n)
    {
        Float8 c = Centred(v, mean);
        return (i < n ? c.F0 * c.F0 : 0f) + (i + 1 < n ? c.F1 * c.F1 : 0f) + (i + 2 < n ? c.F2 * c.F2 : 0f) + (i + 3 < n ? c.F3 * c.F3 : 0f)
            + (i + 4 < n ? c.F4 * c.F4 : 0f) + (i + 5 < n ? c.F5 * c.F5 : 0f) + (i + 6 < n ? c.F6 * c.F6 : 0f) + (i + 7 < n ? c.F7 * c.F7 : 0f);
    }

    private static float Scale<TX, TP>(in ScoresArgs<TX, TP> a, float squares, long n)
        where TX : unmanaged
        where TP : unmanaged =>
        a.Normalization == 1
            ? 1f / XMath.Sqrt(squares / n + RoutingContract.LayerNormEpsilon)
            : 1f / XMath.Max(XMath.Sqrt(squares), RoutingContract.L2Epsilon);

    private static void Write<TX, TP>(in ScoresArgs<TX, TP> a, int t0, int e, in Sums8 scale, float d0, float d1, float d2, float d3)
        where TX : unmanaged
        where TP : unmanaged
    {
        if (e >= a.Experts)
        {
            return;
        }
        float bias = a.HasBias != 0 ? a.Bias[e] : 0f;
        long row = (long)e * a.Tokens + t0;
        if (t0 < a.Tokens) a.Scores[row] = Score(a, d0 * scale.S0, bias);
        if (t0 + 1 < a.Tokens) a.Scores[row + 1] = Score(a, d1 * scale.S1, bias);
        if (t0 + 2 < a.Tokens) a.Scores[row + 2] = Score(a, d2 * scale.S2, bias);
        if (t0 + 3 < a.Tokens) a.Scores[row + 3] = Score(a, d3 * scale.S3, bias);
    }

    private static float Score<TX, TP>(in ScoresArgs<TX, TP> a, float dot, float bias)
        where TX : unmanaged
        where TP : unmanaged =>
        (a.Absolute != 0 ? XMath.Abs(dot) : dot) * a.InverseTemperature + bias;

    internal static void Select(SelectArgs a)
    {
        int t = Grid.GlobalIndex.X;
        if (t < a.Tokens)
        {
            Choose(a.Scores, a.Tokens, a.Experts, a.TopK, t, -1, true, a.Ids, a.Weights, out _);
        }
    }

    /// <summary>
    /// Token <paramref name="t"/>'s top k from expert-major scores: k passes, each taking the smallest key
    /// above the last one taken (keys are distinct, so none repeats), then softmax weights over the kept
    /// scores. When <paramref name="write"/>, the ids and weights go to the token's slots. Returns the slot
    /// that holds <paramref name="expert"/> (or -1) and its weight. A token with any score that is not finite,
    /// chosen or not, gets NaN weights: the one signal the host checks to refuse it, as the CPU backend does.
    /// </summary>
    internal static int Choose(ArrayView<float> scores, int tokens, int experts, int topK, int t, int expert, bool write,
        ArrayView<int> ids, ArrayView<float> weights, out float weight)
    {
        long slots = (long)t * topK;
        ulong taken = 0;
        float top = 0f, total = 0f, mine = 0f;
        int found = -1;
        bool finite = true;
        for (int s = 0; s < topK; s++)
        {
            ulong best = SlotKeys.Empty;
            int e = 0;
            for (; e + 8 <= experts; e += 8)
            {
                // Eight loads in flight before any is used: the chain of dependent loads is E / 8 long.
                long at = (long)e * tokens + t;
                float v0 = scores[at], v1 = scores[at + tokens], v2 = scores[at + 2 * tokens], v3 = scores[at + 3 * tokens];
                float v4 = scores[at + 4 * tokens], v5 = scores[at + 5 * tokens], v6 = scores[at + 6 * tokens], v7 = scores[at + 7 * tokens];
                // Every pass tests again: cheaper than a branch on the pass, and the loads are the cost here.
                finite &= float.IsFinite(v0) & float.IsFinite(v1) & float.IsFinite(v2) & float.IsFinite(v3)
                    & float.IsFinite(v4) & float.IsFinite(v5) & float.IsFinite(v6) & float.IsFinite(v7);
                best = Better(SlotKeys.Key(v0, e), best, s, taken);
                best = Better(SlotKeys.Key(v1, e + 1), best, s, taken);
                best = Better(SlotKeys.Key(v2, e + 2), best, s, taken);
                best = Better(SlotKeys.Key(v3, e + 3), best, s, taken);
                best = Better(SlotKeys.Key(v4, e + 4), best, s, taken);
                best = Better(SlotKeys.Key(v5, e + 5), best, s, taken);
                best = Better(SlotKeys.Key(v6, e + 6), best, s, taken);
                best = Better(SlotKeys.Key(v7, e + 7), best, s, taken);
            }
            for (; e < experts; e++)
            {
                float v = scores[(long)e * tokens + t];
                finite &= float.IsFinite(v);
                best = Better(SlotKeys.Key(v, e), best, s, taken);
            }
            taken = best;
            float score = SlotKeys.Value(best);
            top = s == 0 ? score : top; // the first is the largest
            total += XMath.Exp(score - top);
            int winner = SlotKeys.Expert(best);
            if (winner == expert && winner >= 0)
            {
                found = s;
                mine = score;
            }
            if (write)
            {
                ids[slots + s] = winner;
                weights[slots + s] = score;
            }
        }
        top = finite ? top : float.NaN;
        if (write)
        {
            for (int s = 0; s < topK; s++)
            {
                weights[slots + s] = XMath.Exp(weights[slots + s] - top) / total;
            }
        }
        weight = XMath.Exp(mine - top) / total;
        return found;
    }

    /// <summary>The better of a key and the best so far, among keys after the one pass <paramref name="s"/> - 1 took.</summary>
    private static ulong Better(ulong key, ulong best, int s, ulong taken) => key < best && (s == 0 || key > taken) ? key : best;
}
