namespace MoErging.Merging;

/// <summary>
/// How experts are merged into one adapter (parameter aggregation). The names are PEFT's
/// <c>combination_type</c> values; each method states the space it works in (see <see cref="MergeSpace"/>).
/// c_i = w_i · s_i is expert i's weight times its scaling; every merge yields scaling 1 (lora_alpha = r).
/// </summary>
public enum MergeMethod
{
    /// <summary>
    /// <c>cat</c>, factor space, exact: A = vstack(c_i A_i), B = hstack(B_i), so B A = Σ c_i B_i A_i; rank Σ r_i.
    /// </summary>
    Cat,

    /// <summary>
    /// <c>linear</c>, factor space, PEFT's semantics: A = Σ sgn(c_i) √|c_i| A_i and B = Σ √|c_i| B_i, merged
    /// separately, so B A has cross terms B_i A_j and is not Σ c_i B_i A_i. Equal ranks only.
    /// </summary>
    Linear,

    /// <summary>
    /// <c>svd</c>, ΔW space: ΔW = Σ c_i B_i A_i (each expert's scaling applied once), truncated to rank k by
    /// SVD: B = U_k Σ_k, A = V_kᵀ. Computed from the stacked factors without forming ΔW (see
    /// <see cref="Numerics.LowRank.TruncatedSvdOfProduct"/>): exact while Σ r_i ≤ <see cref="Numerics.LowRank.ExactRankLimit"/>,
    /// a seeded randomized SVD (near-optimal) beyond.
    /// </summary>
    Svd,

    /// <summary>
    /// <c>ties</c>: per task tensor keep the top <c>density</c> fraction by magnitude; elect each entry's sign
    /// (<see cref="SignElection"/>) from the pruned, unweighted tensors; average the weighted entries that agree
    /// with it (disjoint mean: divided by how many agree, at least 1). ΔW or factor space.
    /// </summary>
    Ties,

    /// <summary>
    /// <c>dare_linear</c>: per task tensor keep each entry with probability <c>density</c> (seeded, see
    /// <see cref="MergeOptions.Seed"/>) and divide the survivors by <c>density</c>; then the weighted sum. ΔW or factor space.
    /// </summary>
    DareLinear,

    /// <summary><c>dare_ties</c>: DARE's random pruning and rescaling, then TIES's sign election and disjoint mean. ΔW or factor space.</summary>
    DareTies,

    /// <summary><c>magnitude_prune</c>: per task tensor keep the top <c>density</c> fraction by magnitude; then the weighted sum. ΔW or factor space.</summary>
    MagnitudePrune,
}

/// <summary>Where a pruning merge (TIES, DARE, magnitude pruning) acts.</summary>
public enum MergeSpace
{
    /// <summary>
    /// On each expert's dense ΔW_i = s_i B_i A_i (the task tensor), weighted by w_i: exact, as the papers define it;
    /// the merged ΔW is then factored to rank k by a truncated SVD. PEFT's <c>*_svd</c> variants, without their
    /// second application of the scaling.
    /// </summary>
    Delta,

    /// <summary>
    /// On A and B separately (task tensors A_i and B_i, weighted by sgn(c_i) √|c_i| and √|c_i|), as PEFT's
    /// <c>ties</c>, <c>dare_linear</c>, <c>dare_ties</c> and <c>magnitude_prune</c> do: PEFT-compatible, but B A
    /// has cross terms. Equal ranks only; the rank is kept.
    /// </summary>
    Factors,
}

/// <summary>How TIES elects each entry's sign (PEFT's <c>majority_sign_method</c>).</summary>
public enum SignElection
{
    /// <summary>The sign of the sum of the pruned tensors (≥ 0 counts as positive).</summary>
    Total,

    /// <summary>The sign of the sum of the entries' signs (≥ 0 counts as positive).</summary>
    Frequency,
}

/// <summary>Where a merge has got to: module <see cref="Module"/> of <see cref="ModuleCount"/>, a fraction of the way through it.</summary>
public readonly record struct MergeProgress(int Module, int ModuleCount, string ModuleName, double ModuleFraction)
{
    /// <summary>The fraction of the whole merge done, in [0, 1].</summary>
    public double Fraction => (Module + ModuleFraction) / ModuleCount;
}

/// <summary>
/// A merge: the method and its parameters. Options that the method does not use must be left unset, so a
/// mistaken option is an error rather than silently ignored.
/// </summary>
/// <param name="Method">The merge method.</param>
public sealed record MergeOptions(MergeMethod Method)
{
    /// <summary>
    /// For TIES, DARE and magnitude pruning: <see cref="MergeSpace.Delta"/> (the default) or
    /// <see cref="MergeSpace.Factors"/>. Cat and linear work on factors and svd on ΔW; setting another space for them is an error.
    /// </summary>
    public MergeSpace? Space { get; init; }

    /// <summary>For TIES, DARE and magnitude pruning (required): the fraction of entries kept, in (0, 1].</summary>
    public double? Density { get; init; }

    /// <summary>
    /// For svd and ΔW-space pruning: the rank k of the result (default: the largest rank among the experts, as PEFT).
    /// A module whose min(d_in, d_out) is smaller gets that rank instead (its ΔW has no more).
    /// </summary>
    public int? Rank { get; init; }

    /// <summary>For TIES and DARE-TIES: how signs are elected (default <see cref="Merging.SignElection.Total"/>).</summary>
    public SignElection? SignElection { get; init; }

    /// <summary>
    /// Seeds DARE's random pruning and the randomized SVD used for large ΔW (see <see cref="Numerics.LowRank"/>).
    /// Every draw comes from <see cref="Numerics.SeededRandom"/>: the stream for task tensor X of expert e at module M is
    /// <c>Derive(Derive(Derive((ulong)(uint)Seed, Hash(M)), e), X)</c> with X = 0 for ΔW, 1 for A, 2 for B
    /// (e is the expert's index in the library, M the module's full name); entry j of the tensor (row-major in
    /// PEFT's layout: ΔW <c>[d_out, d_in]</c>, A <c>[r, d_in]</c>, B <c>[d_out, r]</c>) is kept when draw j of
    /// its stream, as a uniform double, is below the density. The SVD sketch of module M uses stream X = 3 with e = 0.
    /// </summary>
    public int Seed { get; init; }

    /// <summary>Receives progress reports, synchronously, on the merging thread.</summary>
    public IProgress<MergeProgress>? Progress { get; init; }

    /// <summary>Checks that the options fit the method: the options it needs are set, those it does not take are not, and values are in range.</summary>
    /// <exception cref="ArgumentException">A missing, misplaced or out-of-range option, named.</exception>
    public void Validate()
    {
        MergeMethod method = Method;
        if (!Enum.IsDefined(method))
        {
            throw new ArgumentException($"unknown merge method {(int)method}");
        }
        bool prunes = method is MergeMethod.Ties or MergeMethod.DareLinear or MergeMethod.DareTies or MergeMethod.MagnitudePrune;
        if (Space is MergeSpace space && !prunes && space != ExpertMerge.SpaceOf(this))
        {
            throw new ArgumentException($"{method} works in {ExpertMerge.SpaceOf(this)} space only; space {space} was given");
        }
        if (prunes != Density.HasValue)
        {
            throw new ArgumentException(prunes ? $"{method} needs a density" : $"density applies only to TIES, DARE and magnitude pruning, not {method}");
        }
        if (Density is double density && !(density > 0 && density <= 1))
        {
            throw new ArgumentException($"density must be in (0, 1], got {density}");
        }
        bool ranked = method == MergeMethod.Svd || (prunes && ExpertMerge.SpaceOf(this) == MergeSpace.Delta);
        if (Rank.HasValue && !ranked)
        {
            throw new ArgumentException($"a rank applies only to svd and to merges in ΔW space; {method} in {ExpertMerge.SpaceOf(this)} space keeps its rank");
        }
        if (Rank is int rank && rank < 1)
        {
            throw new ArgumentException($"rank must be at least 1, got {rank}");
        }
        if (SignElection.HasValue && method is not (MergeMethod.Ties or MergeMethod.DareTies))
        {
            throw new ArgumentException($"sign election applies only to TIES and DARE-TIES, not {method}");
        }
    }
}
