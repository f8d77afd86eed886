using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>
/// Top-k selection against the routing contract's ordering written plainly here (value descending, -0 equal to +0,
/// ties to the lower expert, NaN after every number), on fresh seeded scores drawn from a few values so that ties,
/// signed zeros and infinities are common, for every expert count from 1 to 70 (whole vectors and tails) and every k
/// from 1 to 12 (the vector passes and the key path); then with NaNs among the scores, which the key path orders.
/// </summary>
public sealed class SlotOrderTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SelectTopKTakesTheBestInTheContractsOrder(bool withNaN)
    {
        var data = new TestData();
        float[] pool = [-0f, 0f, 1f, -1f, 0.5f, 2f, float.PositiveInfinity, float.NegativeInfinity, 3.25f, -7f];
        for (int round = 0; round < 20; round++)
        {
            for (int count = 1; count <= 70; count++)
            {
                float[] scores = new float[count];
                for (int e = 0; e < count; e++)
                {
                    scores[e] = data.Rng.Next(3) == 0 ? (float)data.Rng.NextDouble() : pool[data.Rng.Next(pool.Length)];
                    if (withNaN && data.Rng.Next(8) == 0)
                    {
                        scores[e] = float.NaN;
                    }
                }
                int[] order = [.. Enumerable.Range(0, count).Order(Comparer<int>.Create((a, b) => Compare(scores, a, b)))];
                for (int k = 1; k <= Math.Min(count, 12); k++)
                {
                    var experts = new int[k];
                    var selected = new float[k];
                    SlotOrder.SelectTopK(scores, experts, selected);
                    for (int slot = 0; slot < k; slot++)
                    {
                        float expected = scores[order[slot]] + 0f;
                        string what = $"{data}: round {round}, {count} scores [{string.Join(", ", scores)}], k = {k}, slot {slot}";
                        Assert.True(experts[slot] == order[slot], $"{what}: expert {experts[slot]}, expected {order[slot]}");
                        Assert.True(BitConverter.SingleToInt32Bits(selected[slot]) == BitConverter.SingleToInt32Bits(expected),
                            $"{what}: value {selected[slot]:R}, expected {expected:R}");
                    }
                }
            }
        }
    }

    /// <summary>The contract's order of experts a and b: NaN last, larger value first (-0 = +0), then lower index.</summary>
    private static int Compare(float[] scores, int a, int b)
    {
        double x = scores[a], y = scores[b];
        if (double.IsNaN(x) || double.IsNaN(y))
        {
            return double.IsNaN(x) == double.IsNaN(y) ? a.CompareTo(b) : double.IsNaN(x) ? 1 : -1;
        }
        return x != y ? y.CompareTo(x) : a.CompareTo(b);
    }
}
