using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;
using MoErging.Samples;

namespace MoErging.Tests;

/// <summary>
/// The files routers read beside the adapters (PHATGOOSE gates, centroids) and the classifier router's
/// own file: what is written is read back exactly, and every bad file is an error naming the expert,
/// file and tensor.
/// </summary>
public sealed class RouterFileTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";
    private const int InputDim = 7;

    private static (TestLibrary Lib, string[] Dirs, float[] Vectors) WriteGates(TestData data, TempDir dir)
    {
        TestLibrary lib = data.Library(experts: 3, InputDim, 4, ranks: [2]);
        string[] dirs = lib.WriteTo(dir.Path);
        float[] gates = data.Normal(3 * InputDim);
        for (int e = 0; e < 3; e++)
        {
            PhatgooseRouter.SaveGates(dirs[e], new Dictionary<string, float[]> { [Module] = gates[(e * InputDim)..((e + 1) * InputDim)] });
        }
        return (lib, dirs, gates);
    }

    /// <summary>Default top-k is min(the router's default, E): PHATGOOSE's top-2 and Arrow's top-3 for smaller libraries.</summary>
    [Fact]
    public void DefaultTopKIsAtMostTheExpertCount()
    {
        Assert.Equal([1, 2, 2], new[] { 1, 2, 7 }.Select(e => PhatgooseRouter.DefaultOptionsFor(e).TopK));
        Assert.Equal(PhatgooseRouter.DefaultOptions.Temperature, PhatgooseRouter.DefaultOptionsFor(1).Temperature);
        var data = new TestData();
        foreach (int experts in new[] { 1, 2, 4 })
        {
            TestLibrary lib = data.Library(experts, InputDim, 5, [2]);
            AdaptedModule module = lib.Module(Module);
            RoutingOptions arrow = ArrowRouter.DefaultOptionsFor(module.Library);
            Assert.Equal(Math.Min(3, experts), arrow.TopK);
            Assert.Equal(Math.Min(2, experts), new PhatgooseRouter(module, data.Normal(experts * InputDim), PhatgooseRouter.DefaultOptionsFor(experts)).TopK);
            Assert.Equal(arrow.TopK, new ArrowRouter(module, arrow).TopK);
        }
    }

    [Fact]
    public void GatesAndCentroidsReadBackExactly()
    {
        var data = new TestData();
        using var dir = new TempDir();
        var (lib, dirs, gates) = WriteGates(data, dir);
        AdaptedModule module = lib.Module(Module);
        var loaded = PhatgooseRouter.Load(module, dirs, PhatgooseRouter.DefaultOptions);
        Assert.Equal(new PhatgooseRouter(module, gates, PhatgooseRouter.DefaultOptions).Prototypes.ToArray(), loaded.Prototypes.ToArray());

        float[] centroids = data.Normal(3 * InputDim);
        for (int e = 0; e < 3; e++)
        {
            CentroidRouter.SaveCentroids(dirs[e], new Dictionary<string, float[]> { [Module] = centroids[(e * InputDim)..((e + 1) * InputDim)] });
        }
        Assert.Equal(new CentroidRouter(module, centroids).Prototypes.ToArray(), CentroidRouter.Load(module, dirs).Prototypes.ToArray());
    }

    [Fact]
    public void GatesAndCentroidsReadFromTheDirectoriesTheLibraryLoaded()
    {
        var data = new TestData();
        using var dir = new TempDir();
        var (lib, dirs, _) = WriteGates(data, dir);
        for (int e = 0; e < 3; e++)
        {
            CentroidRouter.SaveCentroids(dirs[e], new Dictionary<string, float[]> { [Module] = data.Normal(InputDim) });
        }
        // Loaded from disk, each expert knows its directory; named experts too, whose names are not their directories'.
        AdaptedModule loaded = ExpertLibrary.Load(dirs).Module(Module);
        var options = new RoutingOptions(2, 0.5f);
        Assert.Equal(PhatgooseRouter.Load(loaded, dirs, options).Prototypes.ToArray(), PhatgooseRouter.Load(loaded, options).Prototypes.ToArray());
        Assert.Equal(CentroidRouter.Load(loaded, dirs).Prototypes.ToArray(), CentroidRouter.Load(loaded).Prototypes.ToArray());
        AdaptedModule named = ExpertLibrary.Load(dirs, new ExpertLibraryOptions { Names = ["x", "y", "z"] }).Module(Module);
        Assert.Equal(PhatgooseRouter.Load(loaded, dirs, options).Prototypes.ToArray(), PhatgooseRouter.Load(named, options).Prototypes.ToArray());
        Assert.Equal(2, PhatgooseRouter.Load(named, options).TopK);

        // Experts built in memory have no directory: the error says so and names the expert.
        AdaptedModule inMemory = lib.Module(Module);
        Assert.Contains("expert 'e0' was built in memory, not loaded from a directory, so it has no PHATGOOSE gate file",
            Assert.Throws<ArgumentException>(() => PhatgooseRouter.Load(inMemory, options)).Message);
        Assert.Contains("expert 'e0' was built in memory, not loaded from a directory, so it has no centroid file",
            Assert.Throws<ArgumentException>(() => CentroidRouter.Load(inMemory)).Message);
    }

    [Fact]
    public void BadGateFilesAreErrorsNamingExpertFileAndTensor()
    {
        var data = new TestData();
        using var dir = new TempDir();
        var (lib, dirs, _) = WriteGates(data, dir);
        AdaptedModule module = lib.Module(Module);
        string tensor = Module + PhatgooseRouter.GateSuffix;
        string e1Gates = Path.Combine(dirs[1], PhatgooseRouter.GateFileName);

        File.Delete(e1Gates);
        var missing = Assert.Throws<FileNotFoundException>(() => PhatgooseRouter.Load(module, dirs, PhatgooseRouter.DefaultOptions));
        Assert.Contains("expert 'e1' has no PHATGOOSE gate file", missing.Message);
        Assert.Contains(e1Gates, missing.Message);

        new SafeTensorsWriter().Add("other.phatgoose_gate", new float[InputDim], [InputDim]).WriteTo(e1Gates);
        var absent = Assert.Throws<InvalidDataException>(() => PhatgooseRouter.Load(module, dirs, PhatgooseRouter.DefaultOptions));
        Assert.Contains($"expert 'e1' has no PHATGOOSE gate for module '{Module}' (no tensor '{tensor}')", absent.Message);
        Assert.Contains(e1Gates, absent.Message);

        new SafeTensorsWriter().Add(tensor, new float[InputDim + 1], [InputDim + 1]).WriteTo(e1Gates);
        var shape = Assert.Throws<InvalidDataException>(() => PhatgooseRouter.Load(module, dirs, PhatgooseRouter.DefaultOptions));
        Assert.Contains($"tensor '{tensor}' has shape [8]; module '{Module}' has d_in = 7, so it must be [7]", shape.Message);

        float[] nan = new float[InputDim];
        nan[4] = float.NaN;
        new SafeTensorsWriter().Add(tensor, nan, [InputDim]).WriteTo(e1Gates);
        Assert.Contains($"tensor '{tensor}' element 4 is NaN", Assert.Throws<InvalidDataException>(() => PhatgooseRouter.Load(module, dirs, PhatgooseRouter.DefaultOptions)).Message);

        var swapped = Assert.Throws<ArgumentException>(() => PhatgooseRouter.Load(module, [dirs[1], dirs[0], dirs[2]], PhatgooseRouter.DefaultOptions));
        Assert.Contains("is not expert 0 ('e0')", swapped.Message);
        Assert.Contains("3 directories", Assert.Throws<ArgumentException>(() => PhatgooseRouter.Load(module, dirs[..2], PhatgooseRouter.DefaultOptions)).Message);
    }

    [Fact]
    public void MissingOrZeroCentroidsAreErrors()
    {
        var data = new TestData();
        using var dir = new TempDir();
        TestLibrary lib = data.Library(experts: 2, InputDim, 4, ranks: [2]);
        string[] dirs = lib.WriteTo(dir.Path);
        AdaptedModule module = lib.Module(Module);
        Assert.Contains("expert 'e0' has no centroid file", Assert.Throws<FileNotFoundException>(() => CentroidRouter.Load(module, dirs)).Message);
        float[] centroids = data.Normal(2 * InputDim);
        Array.Clear(centroids, InputDim, InputDim);
        var zero = Assert.Throws<ArgumentException>(() => new CentroidRouter(module, centroids));
        Assert.Contains($"the centroid of expert 'e1' for module '{Module}' is zero", zero.Message);
    }

    [Fact]
    public void CentroidIsTheMeanOfTheSampleRows()
    {
        var data = new TestData();
        float[] rows = data.Normal(5 * InputDim, 3);
        float[] centroid = CentroidRouter.Centroid(rows, InputDim);
        for (int i = 0; i < InputDim; i++)
        {
            double mean = Enumerable.Range(0, 5).Average(t => (double)rows[t * InputDim + i]);
            Assert.True(Math.Abs(centroid[i] - mean) <= 1e-6 * (1 + Math.Abs(mean)), $"{data}: column {i}: {centroid[i]} vs {mean}");
        }
        Assert.Contains("not one or more whole rows", Assert.Throws<ArgumentException>(() => CentroidRouter.Centroid(rows.AsSpan(1), InputDim)).Message);
        rows[9] = float.PositiveInfinity;
        Assert.Contains("row 1, column 2 is Infinity", Assert.Throws<ArgumentException>(() => CentroidRouter.Centroid(rows, InputDim)).Message);
    }

    [Fact]
    public void ClassifierRoutersSaveAndLoadExactly()
    {
        var data = new TestData();
        using var dir = new TempDir();
        float[] w = data.Normal(3 * InputDim), b = data.Normal(3);
        var router = new ClassifierRouter(w, b, InputDim, expertNames: ["a", "b", "c"]);
        string path = dir.Sub("router.safetensors");
        router.Save(path);
        ClassifierRouter loaded = ClassifierRouter.Load(path, new RoutingOptions(2));
        Assert.Equal(w, loaded.Prototypes.ToArray());
        Assert.Equal(b, loaded.Bias.ToArray());
        Assert.Equal(["a", "b", "c"], loaded.ExpertNames!);
        Assert.Equal(2, loaded.TopK);

        new SafeTensorsWriter().Add("weight", w, [3, InputDim]).WriteTo(path);
        Assert.Contains("needs tensors 'weight' [E, d_in] and 'bias' [E]", Assert.Throws<InvalidDataException>(() => ClassifierRouter.Load(path)).Message);
        new SafeTensorsWriter().Add("weight", w, [3, InputDim]).Add("bias", b[..2], [2]).WriteTo(path);
        Assert.Contains("must be [E, d_in] and [E]", Assert.Throws<InvalidDataException>(() => ClassifierRouter.Load(path)).Message);
        var named = new SafeTensorsWriter().Add("weight", w, [3, InputDim]).Add("bias", b, [3]);
        named.Metadata["experts"] = "[\"a\"]";
        named.WriteTo(path);
        Assert.Contains("must list 3 non-empty expert names", Assert.Throws<InvalidDataException>(() => ClassifierRouter.Load(path)).Message);
    }

    [Fact]
    public void ClassifiersAreCheckedAgainstTheLibrary()
    {
        var data = new TestData();
        using var dir = new TempDir();
        TestLibrary lib = data.Library(experts: 3, InputDim, 4, ranks: [2]);
        AdaptedModule module = lib.Module(Module);
        string path = dir.Sub("router.safetensors");
        var options = new RoutingOptions(2);
        new ClassifierRouter(data.Normal(3 * InputDim), data.Normal(3), InputDim, expertNames: ["e0", "e1", "e2"]).Save(path);
        ClassifierRouter fits = ClassifierRouter.Load(path, module, options);
        Assert.Equal(ClassifierRouter.Load(path).Prototypes.ToArray(), fits.Prototypes.ToArray());
        Assert.Equal(2, fits.TopK);

        new ClassifierRouter(data.Normal(3 * InputDim), data.Normal(3), InputDim, expertNames: ["e1", "e0", "e2"]).Save(path);
        Assert.Equal($"{path}: the classifier was trained for experts e1, e0, e2, not e0, e1, e2 (in this order)",
            Assert.Throws<InvalidDataException>(() => ClassifierRouter.Load(path, module, options)).Message);
        new ClassifierRouter(data.Normal(2 * (InputDim + 1)), data.Normal(2), InputDim + 1).Save(path);
        Assert.Equal($"{path}: the classifier routes rows of 8 among 2 experts; module '{Module}' has d_in = 7 and the library 3 experts",
            Assert.Throws<InvalidDataException>(() => ClassifierRouter.Load(path, module, options)).Message);
        var thrown = Assert.Throws<ArgumentException>(() => ClassifierRouter.Load(path).CheckFits(module));
        Assert.StartsWith("the classifier routes rows of 8 among 2 experts", thrown.Message);
        Assert.Equal("module", thrown.ParamName);
        // Without names, only the counts are checked.
        new ClassifierRouter(data.Normal(3 * InputDim), data.Normal(3), InputDim).Save(path);
        ClassifierRouter.Load(path).CheckFits(module);
    }

    [Fact]
    public void RoutingSetsSaveAndLoadExactly()
    {
        var data = new TestData();
        using var dir = new TempDir();
        float[] rows = data.Normal(4 * InputDim);
        var set = new RoutingDataset(rows, InputDim, [2, 0, 1, 2], [0, 1, 1, 0], ["t0", "t1"]);
        string path = dir.Sub("set.safetensors");
        set.Save(path);
        RoutingDataset loaded = RoutingDataset.Load(path);
        Assert.Equal(rows, loaded.Rows.ToArray());
        Assert.Equal([2, 0, 1, 2], loaded.Experts.ToArray());
        Assert.Equal([0, 1, 1, 0], loaded.Tasks.ToArray());
        Assert.Equal(["t0", "t1"], loaded.TaskNames);

        new SafeTensorsWriter().Add("x", rows, [4, InputDim]).Add("expert", [0, 1, -1, 0], [4]).WriteTo(path);
        Assert.Contains("the expert of row 2 must not be negative", Assert.Throws<InvalidDataException>(() => RoutingDataset.Load(path)).Message);
        new SafeTensorsWriter().Add("x", rows, [4, InputDim]).Add("expert", [0, 1], [2]).WriteTo(path);
        Assert.Contains("must be [N, d_in] and [N]", Assert.Throws<InvalidDataException>(() => RoutingDataset.Load(path)).Message);
        new SafeTensorsWriter().Add("x", rows, [4, InputDim]).WriteTo(path);
        Assert.Contains("needs tensors 'x' [N, d_in] and 'expert' [N]", Assert.Throws<InvalidDataException>(() => RoutingDataset.Load(path)).Message);
    }
}
