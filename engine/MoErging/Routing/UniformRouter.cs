namespace MoErging.Routing;

/// <summary>Dense uniform routing: every token uses every expert with weight 1/E.</summary>
public sealed class UniformRouter : FixedRouter
{
    /// <summary>Creates a uniform router over <paramref name="expertCount"/> experts.</summary>
    public UniformRouter(int expertCount) : base(UniformWeights(expertCount))
    {
    }

    private static float[] UniformWeights(int expertCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(expertCount, 1);
        var weights = new float[expertCount];
        Array.Fill(weights, 1f / expertCount);
        return weights;
    }
}
