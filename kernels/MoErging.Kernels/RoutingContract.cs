namespace MoErging.Kernels;

/// <summary>
/// The routing contract the CPU backend and the GPU kernels both follow, defined once here (the engine references
/// the kernels, not the reverse). Scoring: <c>score_e = f(norm(x) · p_e) / τ + b_e</c> with the epsilons below.
/// Selection: the top k in <see cref="SlotKeys"/>' order (value descending, ties to the lower expert). Weights: the
/// softmax over the kept scores, <c>exp(s - s_top) / Σ exp(s_j - s_top)</c> with s_top the first (largest) kept
/// score. Dispatch: a slot adds <c>w · s_e · B_e (A_e x)</c> when it <see cref="Contributes"/>; each slot is its
/// own term, so an expert repeated within a token (host-given decisions may repeat one) is computed once per slot
/// and the terms add up, on every backend.
/// </summary>
public static class RoutingContract
{
    /// <summary>LayerNorm's epsilon (PHATGOOSE: no affine parameters).</summary>
    public const float LayerNormEpsilon = 1e-5f;

    /// <summary>The floor of the norm in L2 normalisation (as torch's normalize).</summary>
    public const float L2Epsilon = 1e-12f;

    /// <summary>
    /// Whether a slot counts at all: it names an expert and its weight is not 0 (what routing statistics count;
    /// a module's forward also needs the expert to adapt it, <see cref="Contributes"/>).
    /// </summary>
    public static bool Counts(int expert, float weight) => expert >= 0 && weight != 0f;

    /// <summary>
    /// Whether a (token, slot) adds anything at a module: it <see cref="Counts"/> and that expert has factors there
    /// (rank above 0). Slots that fail it are skipped, never computed as zeros.
    /// </summary>
    public static bool Contributes(int expert, float weight, int rank) => Counts(expert, weight) && rank > 0;

    /// <summary>A router's default top-k for E experts: its own default, or E when there are fewer experts.</summary>
    public static int DefaultTopK(int routerDefault, int experts) => Math.Min(routerDefault, experts);
}
