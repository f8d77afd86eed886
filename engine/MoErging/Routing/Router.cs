using MoErging.Experts;

namespace MoErging.Routing;

/// <summary>
/// Decides, for each token, which experts to use and with what weight. A router holds only its
/// parameters (prototypes, weights, options); a <see cref="Execution.Session"/> runs it on a backend and
/// writes a <see cref="RoutingDecision"/>. The families are <see cref="LinearRouter"/> (score-based:
/// Arrow and its kin share one scoring path) and <see cref="FixedRouter"/> (the same weights for every token).
/// </summary>
public abstract class Router
{
    private protected Router(int expertCount, int topK)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(expertCount, 1);
        ExpertCount = expertCount;
        TopK = topK;
    }

    /// <summary>E: the number of experts the router chooses among.</summary>
    public int ExpertCount { get; }

    /// <summary>Slots per token in the decisions this router makes (E for dense routers).</summary>
    public int TopK { get; }

    /// <summary>
    /// The module whose experts' own data (factors, gates, centroids) built this router, or null when it
    /// is not tied to one; a session refuses to route another module with it.
    /// </summary>
    internal virtual AdaptedModule? BuiltFor => null;
}
