using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Execution;

/// <summary>
/// How a token's selected experts are combined. The two are different functions (parameter mixing has
/// cross terms between experts); both appear in the literature, so both are offered.
/// </summary>
public enum Aggregation
{
    /// <summary>
    /// Output mixing (the default): <c>y += Σ_e w_e · s_e · B_e (A_e x)</c>. Any ranks and scalings.
    /// </summary>
    Output,

    /// <summary>
    /// Per-token parameter mixing (mttl's default for Arrow): <c>A_tok = Σ_e w_e A_e</c>,
    /// <c>B_tok = Σ_e w_e B_e</c>, then <c>y += s · B_tok (A_tok x)</c>. The experts a decision selects at the
    /// module must share one rank and one scaling s. Computed without forming A_tok:
    /// A_tok x = Σ_e w_e (A_e x), then y += Σ_e w_e s B_e (A_tok x).
    /// </summary>
    Parameter,
}

/// <summary>Checks for parameter mixing.</summary>
internal static class ParameterMixing
{
    /// <summary>
    /// Throws unless every expert the decision selects at the module (slots with a weight other than 0 and an
    /// expert that adapts the module) has the same rank and scaling; the message names two that differ.
    /// </summary>
    public static void Check(AdaptedModule module, RoutingDecision decision)
    {
        ReadOnlySpan<int> ids = decision.ExpertIds;
        ReadOnlySpan<float> weights = decision.Weights;
        int first = -1;
        for (int i = 0; i < ids.Length; i++)
        {
            if (module.Contributing(ids[i], weights[i]) is not LoraFactors f)
            {
                continue;
            }
            if (first < 0)
            {
                first = ids[i];
                continue;
            }
            LoraFactors g = module.Factors(first)!;
            if (f.Rank != g.Rank || f.Scaling != g.Scaling)
            {
                throw new ArgumentException(
                    $"parameter mixing needs one rank and one scaling across the chosen experts at module '{module.Name}', but expert '{module.Library.Experts[first].Name}' has rank {g.Rank}, scaling {g.Scaling} and expert '{module.Library.Experts[ids[i]].Name}' has rank {f.Rank}, scaling {f.Scaling}",
                    nameof(decision));
            }
        }
    }
}
