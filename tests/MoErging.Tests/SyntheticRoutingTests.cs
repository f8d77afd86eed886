using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;
using MoErging.Samples;

namespace MoErging.Tests;

/// <summary>
/// On the seeded synthetic generator, each data-driven router finds the expert whose task a row came from far
/// more often than uniform routing does (which always puts expert 0 first: 1/E of the rows).
/// </summary>
public sealed class SyntheticRoutingTests
{
    private const string Module = "base_model.model.model.layers.0.self_attn.q_proj";

    [Fact]
    public void DataDrivenRoutersBeatUniformByAWideMargin()
    {
        // 6 experts, d_in 48, rows 3 along the task direction plus unit noise. Over seeds 1-12 the top-1 accuracy
        // on the experts' own tasks was 82-95% for every router and held-out tasks (45° from their expert) were
        // at worst 47% per task; uniform gives 1/6. The test asks for 50% and 1/3 (3× and 2× uniform): a margin
        // of over twenty standard deviations of a 600-row estimate.
        var data = new TestData();
        const int experts = 6, dim = 48, rows = 100, heldOut = 6;
        int seed = data.Rng.Next(1 << 20);
        SyntheticExperts synthetic = SyntheticExperts.Create(experts, dim, rank: 4, [Module], seed);
        AdaptedModule module = synthetic.Library.Module(Module);
        RoutingDataset expertData = synthetic.RoutingSet(rows, 0, 3f, seed + 1);
        var centroids = new float[experts * dim];
        for (int e = 0; e < experts; e++)
        {
            CentroidRouter.Centroid(expertData.Rows.Slice(e * rows * dim, rows * dim), dim).CopyTo(centroids, e * dim);
        }
        RoutingDataset training = synthetic.RoutingSet(rows, 0, 3f, seed + 2);
        RoutingDataset test = synthetic.RoutingSet(rows, heldOut, 3f, seed + 3);
        Assert.Equal(experts + heldOut, test.TaskNames.Count);
        Assert.Equal("held-out-0 (near expert-000)", test.TaskNames[experts]);

        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 2 });
        using Session session = engine.CreateSession();
        var routers = new (string Name, Router Router)[]
        {
            ("arrow", new ArrowRouter(module, new RoutingOptions(3))),
            ("phatgoose", new PhatgooseRouter(module, synthetic.Gates(seed + 4), PhatgooseRouter.DefaultOptions)),
            ("centroid", new CentroidRouter(module, centroids)),
            ("classifier", ClassifierRouter.Train(training.Rows, training.Experts, dim, experts)),
        };
        var decision = new RoutingDecision();
        foreach (var (name, router) in routers)
        {
            session.Route(module, router, test.Rows, decision);
            int own = 0, ownHits = 0, held = 0, heldHits = 0;
            for (int t = 0; t < test.RowCount; t++)
            {
                bool hit = decision.ExpertIdsOf(t)[0] == test.Experts[t];
                if (test.Tasks[t] < experts)
                {
                    (own, ownHits) = (own + 1, ownHits + (hit ? 1 : 0));
                }
                else
                {
                    (held, heldHits) = (held + 1, heldHits + (hit ? 1 : 0));
                }
            }
            Assert.True(ownHits >= 0.5 * own, $"{data}, generator seed {seed}: {name} top-1 {ownHits} of {own} rows of the experts' own tasks");
            Assert.True(heldHits >= held / 3.0, $"{data}, generator seed {seed}: {name} top-1 {heldHits} of {held} held-out rows");
        }
    }
}
