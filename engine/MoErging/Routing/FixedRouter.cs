using System.Diagnostics.CodeAnalysis;
namespace MoErging.Routing;

/// <summary>
/// Task-level routing with given weights: every token uses every expert (dense, k = E) with the same
/// weights. Weights may be any finite values, negative included (LoraHub's compositions are).
/// Experts with weight exactly 0 are listed in decisions but never read.
/// </summary>
public class FixedRouter : Router
{
    private readonly float[] _weights;

    /// <summary>Creates a router with one weight per expert.</summary>
    [SuppressMessage("ApiDesign", "RS0022:Constructor make noninheritable base class inheritable", Justification = "Router's private protected constructor keeps its two families closed; a subclass of this one can add members but neither overrides nor sees anything protected, since Router has no protected or public virtual members.")]
    public FixedRouter(ReadOnlySpan<float> weights) : base(weights.Length, weights.Length)
    {
        for (int e = 0; e < weights.Length; e++)
        {
            if (!float.IsFinite(weights[e]))
            {
                throw new ArgumentOutOfRangeException(nameof(weights), weights[e], $"weight of expert {e} must be finite");
            }
        }
        _weights = weights.ToArray();
        SortedIds = new int[_weights.Length];
        SortedWeights = (float[])_weights.Clone();
        for (int e = 0; e < SortedIds.Length; e++)
        {
            SortedIds[e] = e;
        }
        SlotOrder.Sort(SortedIds, SortedWeights);
    }

    /// <summary>The weight of each expert, by expert id.</summary>
    public ReadOnlySpan<float> Weights => _weights;

    /// <summary>Expert ids in decision order (descending weight, ties to the lower index).</summary>
    private int[] SortedIds { get; }

    /// <summary>Weights in decision order.</summary>
    private float[] SortedWeights { get; }

    /// <summary>Writes the decision for <paramref name="tokens"/> tokens: the same slots for each. Every backend routes a fixed router so, on the host.</summary>
    internal void Decide(int tokens, RoutingDecision destination)
    {
        destination.Reset(tokens, TopK, ExpertCount);
        for (int t = 0; t < tokens; t++)
        {
            SortedIds.CopyTo(destination.MutableIds(t));
            SortedWeights.CopyTo(destination.MutableWeights(t));
        }
    }
}
