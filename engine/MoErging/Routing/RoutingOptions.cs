namespace MoErging.Routing;

/// <summary>
/// Expert selection and weighting shared by the score-based routers: keep the <see cref="TopK"/> highest
/// scores (ties: the lower expert index wins; k = E is dense routing), then weight them by a softmax of
/// score / <see cref="Temperature"/>.
/// </summary>
/// <param name="TopK">Experts kept per token, in [1, E].</param>
/// <param name="Temperature">τ: positive and finite; higher spreads the weights.</param>
public readonly record struct RoutingOptions(int TopK, float Temperature = 1f)
{
    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the bad field for a library of <paramref name="expertCount"/> experts.</summary>
    public void Validate(int expertCount)
    {
        if (TopK < 1 || TopK > expertCount)
        {
            throw new ArgumentOutOfRangeException(nameof(TopK), TopK, $"top-k must be in [1, {expertCount}] (the number of experts)");
        }
        if (!float.IsFinite(Temperature) || Temperature <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "temperature must be positive and finite");
        }
    }
}
