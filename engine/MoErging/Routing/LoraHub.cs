using MoErging.Experts;

namespace MoErging.Routing;

/// <summary>The loss of a composition with the given weights (one per expert), evaluated by the caller on a few examples.</summary>
public delegate double LoraHubLoss(ReadOnlySpan<float> weights);

/// <summary>
/// LoraHub (Huang et al. 2023; task-level routing with target-task data): one weight per expert, found by
/// a gradient-free search in [-1.5, 1.5]^E from w = 0, minimising loss(w) + 0.05 · mean|w| within a budget of
/// loss evaluations; the experts are then composed factor by factor, A = Σ w_i A_i and B = Σ w_i B_i
/// (<see cref="Compose"/>), and applied or merged as one adapter.
/// </summary>
/// <remarks>
/// The reference implementation searches with nevergrad's NGOpt, which picks an algorithm by budget and
/// dimension. This engine uses one fixed, seeded optimiser so a result repeats exactly: a (1+1) evolution
/// strategy (nevergrad's <c>OnePlusOne</c>). From the incumbent, a candidate is drawn with an isotropic
/// Gaussian step of size σ (initially 0.5, a third of the half-width) and clipped to the box; it replaces the
/// incumbent only if its objective is strictly lower. σ doubles after a success and shrinks by 2^(-1/4) after
/// a failure (the one-fifth success rule), within [1e-3, 3]. A non-finite loss counts as worse than any other.
/// </remarks>
public static class LoraHub
{
    /// <summary>Weights are searched in [-Bound, Bound].</summary>
    public const float Bound = 1.5f;

    /// <summary>The coefficient of the L1 penalty: objective = loss + 0.05 · mean|w|.</summary>
    public const double L1Coefficient = 0.05;

    private const double InitialStep = 0.5, MinStep = 1e-3, MaxStep = 3;

    /// <summary>Searches the weights: <paramref name="options"/>.Budget loss evaluations, the first at w = 0.</summary>
    /// <param name="expertCount">E, the number of weights.</param>
    /// <param name="loss">The caller's loss of a composition; called once per evaluation, in order.</param>
    /// <param name="options">Budget and seed; null for LoraHub's budget of 40 and seed 42.</param>
    /// <exception cref="ArgumentException">The loss at w = 0 is not finite.</exception>
    public static LoraHubResult Search(int expertCount, LoraHubLoss loss, LoraHubOptions? options = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(expertCount, 1);
        ArgumentNullException.ThrowIfNull(loss);
        options ??= new LoraHubOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(options.Budget, 1, nameof(options.Budget));
        var rng = new Random(options.Seed);
        var best = new float[expertCount];
        double bestLoss = loss(best), bestObjective = bestLoss;
        if (!double.IsFinite(bestLoss))
        {
            throw new ArgumentException($"the loss at the starting point (every weight 0) is {bestLoss}; it must be finite", nameof(loss));
        }
        var history = new List<double>(options.Budget) { bestObjective };
        var candidate = new float[expertCount];
        double sigma = InitialStep;
        for (int evaluation = 1; evaluation < options.Budget; evaluation++)
        {
            for (int e = 0; e < expertCount; e++)
            {
                candidate[e] = (float)Math.Clamp(best[e] + sigma * Gaussian(rng), -Bound, Bound);
            }
            double candidateLoss = loss(candidate);
            double objective = candidateLoss + Penalty(candidate);
            history.Add(objective);
            if (double.IsFinite(objective) && objective < bestObjective)
            {
                candidate.CopyTo(best, 0);
                (bestLoss, bestObjective) = (candidateLoss, objective);
                sigma = Math.Min(MaxStep, sigma * 2);
            }
            else
            {
                sigma = Math.Max(MinStep, sigma * Math.Pow(2, -0.25));
            }
        }
        return new LoraHubResult(best, bestLoss, bestObjective, history);
    }

    /// <summary>
    /// Composes the experts with the given weights, factor by factor as LoraHub does: for every module,
    /// A = Σ w_i A_i and B = Σ w_i B_i (accumulated in float64), with the experts' common scaling. This has
    /// cross terms: ΔW = s (Σ w_i B_i)(Σ w_i A_i), not Σ w_i s B_i A_i.
    /// </summary>
    /// <param name="library">The experts.</param>
    /// <param name="weights">One weight per expert.</param>
    /// <param name="name">The composed expert's name.</param>
    /// <exception cref="ArgumentException">An expert misses a module, or ranks or scalings differ at a module; the message names both experts.</exception>
    public static Expert Compose(ExpertLibrary library, ReadOnlySpan<float> weights, string name)
    {
        ArgumentNullException.ThrowIfNull(library);
        if (weights.Length != library.ExpertCount)
        {
            throw new ArgumentException($"{library.ExpertCount} experts need {library.ExpertCount} weights, got {weights.Length}", nameof(weights));
        }
        var modules = new List<KeyValuePair<string, LoraFactors>>(library.Modules.Count);
        foreach (AdaptedModule module in library.Modules)
        {
            LoraFactors first = module.Factors(0) ?? throw Missing(library, module, 0);
            var a = new double[first.Rank * first.InputDim];
            var bT = new double[first.Rank * first.OutputDim];
            for (int e = 0; e < library.ExpertCount; e++)
            {
                LoraFactors f = module.Factors(e) ?? throw Missing(library, module, e);
                if (f.Rank != first.Rank || f.Scaling != first.Scaling)
                {
                    throw new ArgumentException(
                        $"LoraHub composes factors, so every expert needs one rank and one scaling at module '{module.Name}': expert '{library.Experts[0].Name}' has rank {first.Rank}, scaling {first.Scaling} but expert '{library.Experts[e].Name}' has rank {f.Rank}, scaling {f.Scaling}",
                        nameof(library));
                }
                Accumulate(a, f.A, weights[e]);
                Accumulate(bT, f.BTransposed, weights[e]);
            }
            modules.Add(new(module.Name, new LoraFactors(Pinned(a), Pinned(bT), first.Rank, first.InputDim, first.OutputDim, first.Scaling, first.Alpha, first.StorageType)));
        }
        return new Expert(name, modules);
    }

    private static double Penalty(ReadOnlySpan<float> weights)
    {
        double sum = 0;
        foreach (float w in weights)
        {
            sum += Math.Abs(w);
        }
        return L1Coefficient * sum / weights.Length;
    }

    private static double Gaussian(Random rng)
    {
        double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    private static void Accumulate(double[] sum, ReadOnlySpan<float> values, float weight)
    {
        for (int i = 0; i < sum.Length; i++)
        {
            sum[i] += (double)weight * values[i];
        }
    }

    private static float[] Pinned(double[] values)
    {
        float[] result = LoraFactors.AllocatePinned(values.Length);
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = (float)values[i];
        }
        return result;
    }

    private static ArgumentException Missing(ExpertLibrary library, AdaptedModule module, int expert) =>
        new($"LoraHub composes every module, but expert '{library.Experts[expert].Name}' does not adapt module '{module.Name}'", nameof(library));
}

/// <summary>How <see cref="LoraHub.Search"/> runs.</summary>
/// <param name="Budget">Loss evaluations in all, the start (w = 0) included; LoraHub's default is 40.</param>
/// <param name="Seed">Seed of the optimiser's random steps.</param>
public sealed record LoraHubOptions(int Budget = 40, int Seed = 42);

/// <summary>The outcome of a LoraHub search.</summary>
/// <param name="Weights">The best weights found, one per expert, in [-1.5, 1.5].</param>
/// <param name="Loss">The caller's loss at those weights.</param>
/// <param name="Objective">Loss + 0.05 · mean|w| at those weights.</param>
/// <param name="History">The objective of every evaluation, in order (the first at w = 0).</param>
public sealed record LoraHubResult(float[] Weights, double Loss, double Objective, IReadOnlyList<double> History);
