using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>The decision order: weight descending, ties to the lower expert index, empty slots last.</summary>
public sealed class RoutingDecisionTests
{
    [Fact]
    public void AssignSortsEachTokenLikeAnIndependentSort()
    {
        var data = new TestData();
        const int tokens = 50, k = 6, experts = 9;
        // Few distinct weights, so ties are common; some slots empty.
        int[] ids = Enumerable.Range(0, tokens * k).Select(_ => data.Rng.Next(-1, experts)).ToArray();
        float[] weights = Enumerable.Range(0, tokens * k).Select(_ => (float)(data.Rng.Next(-2, 3) * 0.25)).ToArray();
        var decision = new RoutingDecision();
        decision.Assign(ids, weights, k, experts);
        Assert.Equal(tokens, decision.TokenCount);
        for (int t = 0; t < tokens; t++)
        {
            var expected = Enumerable.Range(0, k)
                .Select(s => (Id: ids[t * k + s], Weight: ids[t * k + s] < 0 ? 0f : weights[t * k + s]))
                .OrderBy(p => p.Id < 0).ThenByDescending(p => p.Weight).ThenBy(p => p.Id).ToArray();
            Assert.Equal(expected.Select(p => p.Id), decision.ExpertIdsOf(t).ToArray());
            Assert.Equal(expected.Select(p => p.Weight), decision.WeightsOf(t).ToArray());
        }
    }

    [Fact]
    public void TiedScoresGoToTheLowerIndexAndNegativeZeroTiesZero()
    {
        var fixedRouter = new FixedRouter([0.5f, 0.25f, 0.5f, -0f, 0f, 0.25f]);
        using Engine engine = Engine.Create();
        using Session session = engine.CreateSession();
        TestLibrary lib = new TestData().Library(experts: 6, dIn: 3, dOut: 2, ranks: [1]);
        AdaptedModule module = lib.Module("base_model.model.layers.0.mlp.down_proj");
        var decision = new RoutingDecision();
        session.Route(module, fixedRouter, new float[6], decision);
        Assert.Equal([0, 2, 1, 5, 3, 4], decision.ExpertIdsOf(0).ToArray());

        // Experts 1 and 3 share a prototype, so they tie for every token.
        float[] p = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        var linear = new LinearRouter(p, 3, new RoutingOptions(2), scoreFunction: ScoreFunction.AbsoluteValue);
        session.Route(module, linear, [0.1f, 2f, 0.2f, 0.1f, -3f, 0.2f], decision);
        Assert.Equal([1, 3], decision.ExpertIdsOf(0).ToArray());
        Assert.Equal([1, 3], decision.ExpertIdsOf(1).ToArray());
        Assert.Equal(decision.WeightsOf(0)[0], decision.WeightsOf(0)[1]);
    }

    [Fact]
    public void NaNInputsAreAnErrorNamingTheTokenNotNaNWeights()
    {
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu });
        using Session session = engine.CreateSession();
        TestLibrary lib = new TestData().Library(experts: 4, dIn: 3, dOut: 2, ranks: [1]);
        AdaptedModule module = lib.Module("base_model.model.layers.0.mlp.down_proj");
        var linear = new LinearRouter(new float[12] { 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1 }, 3, new RoutingOptions(2));
        var e = Assert.Throws<ArgumentException>(() => session.Route(module, linear, [1, 1, 1, float.NaN, 1, 1], new RoutingDecision()));
        Assert.StartsWith("token 1: its router scores are not finite", e.Message);
    }

    [Fact]
    public void DecisionBuffersAreReusedOnceLargeEnough()
    {
        var decision = new RoutingDecision(tokens: 8, topK: 2);
        decision.Assign([0, 1, 1, 0], [1f, 2f, 3f, 4f], 2, 2);
        Assert.Equal(2, decision.TokenCount);
        Assert.Equal([1, 0, 0, 1], decision.ExpertIds.ToArray());
        decision.Assign([1, 0, 0], [0.5f, 0.5f, 1f], 1, 2);
        Assert.Equal(3, decision.TokenCount);
        Assert.Equal(1, decision.TopK);
        Assert.Equal([1, 0, 0], decision.ExpertIds.ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => decision.ExpertIdsOf(3));
    }

    [Fact]
    public void StatisticsCountLoadEntropyAndTopOne()
    {
        var decision = new RoutingDecision();
        // Token 0: experts 2 and 0 at 0.75 / 0.25; token 1: expert 2 alone (slot 1 empty); token 2: fixed weights
        // with a negative one (counted by magnitude); token 3: nothing.
        decision.Assign([2, 0, 2, -1, 1, 3, -1, -1], [0.75f, 0.25f, 1f, 0f, 1.5f, -0.5f, 0f, 0f], 2, 4);
        RoutingStatistics s = RoutingStatistics.Of(decision);
        Assert.Equal([1, 1, 2, 1], s.Load);
        Assert.Equal([0.25, 1.5, 1.75, -0.5], s.WeightMass);
        Assert.Equal([0, 1, 2, 0], s.TopOneCount);
        Assert.Equal(0, s.UnusedExperts);
        static double H(params double[] p) => -p.Sum(v => v * Math.Log(v));
        Assert.Equal((H(0.75, 0.25) + 0 + H(0.75, 0.25) + 0) / 4, s.MeanEntropy, 12);
        Assert.Equal((0.75 + 1 + 0.75 + 0) / 4, s.MeanTopOneWeight, 12);
        Assert.Equal(Math.Log(2), s.MaxEntropy, 12);
    }
}
