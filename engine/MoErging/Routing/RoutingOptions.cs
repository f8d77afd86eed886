using System.Globalization;

namespace MoErging.Routing;

/// <summary>
/// Expert selection and weighting shared by the score-based routers: keep the <see cref="TopK"/> highest
/// scores (ties: the lower expert index wins; k = E is dense routing), then weight them by a softmax of
/// score / <see cref="Temperature"/>.
/// </summary>
/// <param name="TopK">Experts kept per token, in [1, E].</param>
/// <param name="Temperature">τ: positive, finite and at least <see cref="MinTemperature"/>; higher spreads the weights.</param>
public readonly record struct RoutingOptions(int TopK, float Temperature = 1f)
{
    /// <summary>
    /// The smallest temperature: routers scale scores by 1/τ in float32, and 1/float.MaxValue rounds to 2^-128,
    /// whose reciprocal 2^128 overflows to +∞ (every weight would be NaN); the next float up is the first whose reciprocal is finite.
    /// </summary>
    public static readonly float MinTemperature = float.BitIncrement(1f / float.MaxValue);

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the bad field for a library of <paramref name="expertCount"/> experts.</summary>
    public void Validate(int expertCount)
    {
        if (TopK < 1 || TopK > expertCount)
        {
            throw new ArgumentOutOfRangeException(nameof(TopK), TopK, $"top-k must be in [1, {expertCount}] (the number of experts)");
        }
        ValidateTemperature(Temperature);
    }

    /// <summary>The check <see cref="Validate"/> makes of the temperature, for callers that take one before the experts are known.</summary>
    /// <exception cref="ArgumentOutOfRangeException">τ is not positive and finite, or below <see cref="MinTemperature"/>.</exception>
    public static void ValidateTemperature(float temperature)
    {
        if (!float.IsFinite(temperature) || temperature <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Temperature), temperature, "temperature must be positive and finite");
        }
        if (!float.IsFinite(1f / temperature))
        {
            throw new ArgumentOutOfRangeException(nameof(Temperature), temperature,
                string.Create(CultureInfo.InvariantCulture, $"temperature is too small: 1/temperature overflows float32; the smallest allowed is {MinTemperature:R}"));
        }
    }
}
