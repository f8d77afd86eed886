using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>Every public entry point given bad input throws an exception whose message names the problem.</summary>
public sealed class BadInputTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    private static (TestLibrary Lib, AdaptedModule Module, Engine Engine, Session Session) Setup()
    {
        TestLibrary lib = new TestData().Library(experts: 4, dIn: 10, dOut: 6, ranks: [2, 3]);
        Engine engine = Engine.Create(new EngineOptions { CpuThreads = 2 });
        return (lib, lib.Module(Module), engine, engine.CreateSession());
    }

    [Fact]
    public void ForwardRejectsWrongLengthsAndOverlap()
    {
        var (_, module, engine, session) = Setup();
        using Engine ownedEngine = engine;
        var decision = new RoutingDecision();
        var router = new UniformRouter(4);
        Assert.Contains("not whole rows of d_in = 10", Assert.Throws<ArgumentException>(() => session.Forward(module, router, new float[25], decision, new float[12])).Message);
        Assert.Contains("y holds 13 values", Assert.Throws<ArgumentException>(() => session.Forward(module, router, new float[20], decision, new float[13])).Message);
        session.Route(module, router, new float[20], decision);
        Assert.Contains("the decision routes 2 tokens", Assert.Throws<ArgumentException>(() => session.Forward(module, decision, new float[30], new float[18])).Message);
        float[] shared = new float[40];
        Assert.Contains("overlap", Assert.Throws<ArgumentException>(() => session.Forward(module, decision, shared.AsSpan(0, 20), shared.AsSpan(14, 12))).Message);
        Half[] sharedHalf = new Half[40];
        Assert.Contains("overlap", Assert.Throws<ArgumentException>(() => session.Forward(module, decision, sharedHalf.AsSpan(0, 20), sharedHalf.AsSpan(10, 12))).Message);
    }

    [Fact]
    public void RoutersThatDoNotFitTheModuleAreRejected()
    {
        var (lib, module, engine, session) = Setup();
        using Engine ownedEngine = engine;
        var decision = new RoutingDecision();
        Assert.Contains("chooses among 5 experts", Assert.Throws<ArgumentException>(() => session.Route(module, new UniformRouter(5), new float[10], decision)).Message);
        var wide = new LinearRouter(new float[4 * 11], 11, new RoutingOptions(1));
        Assert.Contains("rows of 11 values", Assert.Throws<ArgumentException>(() => session.Route(module, wide, new float[10], decision)).Message);
        TestLibrary twoModules = new TestData().Library(experts: 4, dIn: 10, dOut: 6, ranks: [2], modules: [Module, "base_model.model.layers.0.mlp.up_proj"]);
        var arrow = new ArrowRouter(twoModules.Module("up_proj"), new RoutingOptions(2));
        Assert.Contains("built for module 'base_model.model.layers.0.mlp.up_proj'",
            Assert.Throws<ArgumentException>(() => session.Route(twoModules.Module("down_proj"), arrow, new float[10], decision)).Message);
        var phatgoose = new PhatgooseRouter(twoModules.Module("up_proj"), new TestData().Normal(40), new RoutingOptions(2));
        Assert.Contains("the PhatgooseRouter was built for module 'base_model.model.layers.0.mlp.up_proj', not 'base_model.model.layers.0.mlp.down_proj'",
            Assert.Throws<ArgumentException>(() => session.Route(twoModules.Module("down_proj"), phatgoose, new float[10], decision)).Message);
        _ = lib;
    }

    [Theory]
    [InlineData(0, 1f, "top-k must be in [1, 4]")]
    [InlineData(5, 1f, "top-k must be in [1, 4]")]
    [InlineData(2, float.NaN, "temperature must be positive and finite")]
    [InlineData(2, 0f, "temperature must be positive and finite")]
    [InlineData(2, -1f, "temperature must be positive and finite")]
    [InlineData(2, float.PositiveInfinity, "temperature must be positive and finite")]
    public void RoutingOptionsOutOfRange(int k, float temperature, string message)
    {
        var (_, module, engine, _) = Setup();
        using Engine ownedEngine = engine;
        Assert.Contains(message, Assert.Throws<ArgumentOutOfRangeException>(() => new ArrowRouter(module, new RoutingOptions(k, temperature))).Message);
        Assert.Contains(message, Assert.Throws<ArgumentOutOfRangeException>(() => new LinearRouter(new float[40], 10, new RoutingOptions(k, temperature))).Message);
    }

    [Fact]
    public void UnknownAndAmbiguousModulesListCandidates()
    {
        TestLibrary lib = new TestData().Library(experts: 2, dIn: 4, dOut: 4, ranks: [1],
            modules: ["base_model.model.layers.0.q_proj", "base_model.model.layers.1.q_proj"]);
        var missing = Assert.Throws<KeyNotFoundException>(() => lib.Library.Module("k_proj"));
        Assert.Contains("no module matches 'k_proj'", missing.Message);
        Assert.Contains("base_model.model.layers.1.q_proj", missing.Message);
        var ambiguous = Assert.Throws<ArgumentException>(() => lib.Library.Module("q_proj"));
        Assert.Contains("ambiguous", ambiguous.Message);
        Assert.Contains("base_model.model.layers.0.q_proj", ambiguous.Message);
        Assert.Equal("base_model.model.layers.1.q_proj", lib.Library.Module("1.q_proj").Name);
        Assert.Throws<KeyNotFoundException>(() => lib.Library.Module("_proj")); // suffixes end at a dot boundary
    }

    [Fact]
    public void AssignmentsAreValidated()
    {
        var decision = new RoutingDecision();
        Assert.Contains("must be in [0, 4) or -1", Assert.Throws<ArgumentOutOfRangeException>(() => decision.Assign([0, 4], [1f, 1f], 2, 4)).Message);
        Assert.Contains("must be in [0, 4) or -1", Assert.Throws<ArgumentOutOfRangeException>(() => decision.Assign([-2, 1], [1f, 1f], 2, 4)).Message);
        Assert.Contains("must be finite", Assert.Throws<ArgumentOutOfRangeException>(() => decision.Assign([0, 1], [1f, float.NaN], 2, 4)).Message);
        Assert.Contains("same length", Assert.Throws<ArgumentException>(() => decision.Assign([0, 1], [1f], 2, 4)).Message);
        Assert.Contains("whole rows of k = 2", Assert.Throws<ArgumentException>(() => decision.Assign([0, 1, 2], [1f, 1f, 1f], 2, 4)).Message);
        Assert.Equal(0, decision.TokenCount); // a rejected assignment leaves the decision as it was
    }

    [Fact]
    public void FactorsAndRoutersRejectBadParameters()
    {
        Assert.Contains("A must hold rank × d_in = 2 × 3", Assert.Throws<ArgumentException>(() => new LoraFactors(new float[5], new float[8], 2, 3, 4, 1f)).Message);
        Assert.Contains("B must hold d_out × rank = 4 × 2", Assert.Throws<ArgumentException>(() => new LoraFactors(new float[6], new float[7], 2, 3, 4, 1f)).Message);
        Assert.Contains("scaling must be finite", Assert.Throws<ArgumentOutOfRangeException>(() => new LoraFactors(new float[6], new float[8], 2, 3, 4, float.NaN)).Message);
        Assert.Contains("weight of expert 1 must be finite", Assert.Throws<ArgumentOutOfRangeException>(() => new FixedRouter([1f, float.PositiveInfinity])).Message);
        Assert.Contains("prototypes[3] is NaN", Assert.Throws<ArgumentException>(() => new LinearRouter([0, 0, 0, float.NaN], 2, new RoutingOptions(1))).Message);
        Assert.Contains("one value per expert (2)", Assert.Throws<ArgumentException>(() => new LinearRouter(new float[4], 2, new RoutingOptions(1), bias: new float[3])).Message);
        Assert.Contains("prototypes must hold E × d_in values", Assert.Throws<ArgumentException>(() => new LinearRouter(new float[5], 2, new RoutingOptions(1))).Message);
        Assert.Contains("needs at least one expert", Assert.Throws<ArgumentException>(() => new ExpertLibrary([])).Message);
        var f = new LoraFactors(new float[6], new float[8], 2, 3, 4, 1f);
        Assert.Contains("both named 'x'", Assert.Throws<ArgumentException>(() => new ExpertLibrary([new Expert("x", [new("m", f)]), new Expert("x", [new("m", f)])])).Message);
        var g = new LoraFactors(new float[10], new float[8], 2, 5, 4, 1f);
        var mismatch = Assert.Throws<ArgumentException>(() => new ExpertLibrary([new Expert("a", [new("m", f)]), new Expert("b", [new("m", g)])]));
        Assert.Contains("module 'm': expert 'b' maps 5 → 4 but expert 'a' maps 3 → 4", mismatch.Message);
    }

    [Fact]
    public void DisposedSessionsAndEnginesRefuseWork()
    {
        var (_, module, engine, session) = Setup();
        session.Dispose();
        Assert.Throws<ObjectDisposedException>(() => session.Route(module, new UniformRouter(4), new float[10], new RoutingDecision()));
        engine.Dispose();
        Assert.Throws<ObjectDisposedException>(() => engine.CreateSession());
        Assert.Contains("CpuThreads", Assert.Throws<ArgumentOutOfRangeException>(() => Engine.Create(new EngineOptions { CpuThreads = -1 })).Message);
    }

    [Fact]
    public void CpuThreadsAreAtMostFourPerProcessor()
    {
        int bound = 4 * Environment.ProcessorCount;
        using (Engine most = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = bound }))
        {
            Assert.Equal(bound, most.CpuThreads);
        }
        // 20000 once aborted the process while its threads were being created; none is started now.
        foreach (int threads in new[] { bound + 1, 20000, int.MaxValue, int.MinValue })
        {
            string message = Assert.Throws<ArgumentOutOfRangeException>(() => Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = threads })).Message;
            Assert.Contains($"CpuThreads is {threads}; it must be 0 (every processor) to {bound} (4 × {Environment.ProcessorCount} processors)", message);
        }
    }
}
