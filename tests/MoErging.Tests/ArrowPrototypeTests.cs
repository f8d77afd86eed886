using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>
/// Arrow prototypes (computed by the engine from the QR-reduced r×r core) against the top eigenvector
/// of the full ΔWᵀΔW found by Jacobi rotations in the test. Sign-insensitive: |p · p_ref| ≥ 1 - 1e-6
/// (the engine rounds its float64 vector to float32).
/// </summary>
public sealed class ArrowPrototypeTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";

    [Theory]
    [InlineData(37, 53, new[] { 1, 3, 8, 16 })]
    [InlineData(53, 37, new[] { 16, 2, 5 })]
    [InlineData(9, 41, new[] { 16, 12 })]   // rank above d_in: QR of Aᵀ has only 9 columns
    [InlineData(40, 7, new[] { 11, 3 })]    // rank above d_out
    public void PrototypesMatchTheFullSvd(int dIn, int dOut, int[] ranks)
    {
        var data = new TestData();
        TestLibrary lib = data.Library(experts: ranks.Length, dIn, dOut, ranks);
        AdaptedModule module = lib.Module(Module);
        float[] prototypes = ArrowRouter.ComputePrototypes(module);
        for (int e = 0; e < ranks.Length; e++)
        {
            double[] expected = Reference.TopRightSingularVectorByJacobi(lib.Raw[Module][e]!);
            double dot = 0, norm = 0;
            int largest = 0;
            for (int i = 0; i < dIn; i++)
            {
                double p = prototypes[e * dIn + i];
                dot += p * expected[i];
                norm += p * p;
                largest = Math.Abs(p) > Math.Abs(prototypes[e * dIn + largest]) ? i : largest;
            }
            Assert.True(Math.Abs(Math.Abs(dot) - 1) < 1e-6, $"{data}: expert {e} (rank {ranks[e]}): |p · p_ref| = {Math.Abs(dot)}");
            Assert.True(Math.Abs(norm - 1) < 1e-6, $"{data}: expert {e}: |p|² = {norm}");
            Assert.True(prototypes[e * dIn + largest] > 0, $"{data}: expert {e}: the largest entry should be positive (sign convention)");
        }
    }

    [Fact]
    public void ScalingDoesNotChangeThePrototype()
    {
        var data = new TestData();
        RawFactors f = data.Factors(4, 30, 20);
        var one = new Expert("a", [new(Module, new LoraFactors(f.A, f.B, 4, 30, 20, 1f))]);
        var big = new Expert("b", [new(Module, new LoraFactors(f.A, f.B, 4, 30, 20, 37.5f))]);
        float[] p = ArrowRouter.ComputePrototypes(new ExpertLibrary([one, big]).Module(Module));
        Assert.True(p.AsSpan(0, 30).SequenceEqual(p.AsSpan(30, 30)), $"{data}: scaling changed the prototype");
    }

    [Fact]
    public void MissingModuleAndNaNFactorsAreNamedErrors()
    {
        var data = new TestData();
        RawFactors f = data.Factors(2, 10, 12);
        var good = new Expert("good", [new(Module, new LoraFactors(f.A, f.B, 2, 10, 12, 1f))]);
        var other = new Expert("elsewhere", [new("base_model.model.other", new LoraFactors(f.A, f.B, 2, 10, 12, 1f))]);

        var missing = Assert.Throws<ArgumentException>(() => new ArrowRouter(new ExpertLibrary([good, other]).Module(Module), new RoutingOptions(1)));
        Assert.Contains("expert 'elsewhere' does not", missing.Message);

        float[] poisoned = (float[])f.A.Clone();
        poisoned[data.Rng.Next(poisoned.Length)] = float.NaN;
        var nan = new Expert("diverged", [new(Module, new LoraFactors(poisoned, f.B, 2, 10, 12, 1f))]);
        var undefined = Assert.Throws<ArgumentException>(() => new ArrowRouter(new ExpertLibrary([good, nan]).Module(Module), new RoutingOptions(1)));
        Assert.Contains("expert 'diverged' has a NaN or infinite value in its factors for module", undefined.Message);
    }
}
