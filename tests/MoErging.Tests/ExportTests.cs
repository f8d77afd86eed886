using MoErging.Experts;
using MoErging.Formats;
using MoErging.Merging;

namespace MoErging.Tests;

/// <summary>Merging into base weights (W + ΔW) and the all-or-nothing adapter directory write.</summary>
public sealed class ExportTests
{
    private const string Q = "base_model.model.model.layers.0.self_attn.q_proj";
    private const string V = "base_model.model.model.layers.0.self_attn.v_proj";

    private static LoraFactors Make(RawFactors f) => new(f.A, f.B, f.Rank, f.InputDim, f.OutputDim, f.Scaling);

    /// <summary>|actual - (W + ΔW)| ≤ 2⁻²⁴ |W + ΔW| (one float32 rounding) plus 1e-12 of the largest entry.</summary>
    private static void CheckSum(float[] actual, float[] w, double[] delta, int m, int n, bool transposed, string where)
    {
        for (int o = 0; o < m; o++)
        {
            for (int i = 0; i < n; i++)
            {
                long at = transposed ? (long)i * m + o : (long)o * n + i;
                double expected = w[at] + delta[o * n + i];
                double error = Math.Abs(actual[at] - expected);
                Assert.True(error <= Math.Pow(2, -24) * Math.Abs(expected) + 1e-12, $"{where}: W'[{o}, {i}] = {actual[at]}, expected {expected}");
            }
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AddDeltaAddsTheScaledProductRoundedOnce(bool fanInFanOut)
    {
        var data = new TestData();
        RawFactors raw = data.Factors(3, 11, 7);
        float[] w = data.Normal(7 * 11), merged = (float[])w.Clone();
        BaseWeights.AddDelta(Make(raw), merged, fanInFanOut);
        CheckSum(merged, w, MergeReference.Delta(raw, raw.Scaling), 7, 11, fanInFanOut, $"{data}, fan_in_fan_out {fanInFanOut}");
        Assert.Throws<ArgumentException>(() => BaseWeights.AddDelta(Make(raw), new float[76]));
    }

    [Fact]
    public void MergeIntoRewritesTheAdaptedWeightsAndCopiesEverythingElse()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        RawFactors q = data.Factors(2, 8, 8), v = data.Factors(3, 8, 4);
        var expert = new Expert("e", [new(Q, Make(q)), new(V, Make(v))]);
        float[] wq = data.Normal(64), wv = data.Normal(32), embed = data.Normal(40);
        int[] ids = [1, 2, 3];
        var input = new SafeTensorsWriter();
        input.Metadata["note"] = "base";
        input.Add("model.layers.0.self_attn.q_proj.weight", wq, [8, 8])
            .Add("model.layers.0.self_attn.v_proj.weight", wv, [4, 8], TensorDType.BF16)
            .Add("model.embed_tokens.weight", embed, [5, 8], TensorDType.F16)
            .Add("position_ids", ids, [3])
            .WriteTo(tmp.Sub("base.safetensors"));

        IReadOnlyList<string> changed = BaseWeights.MergeInto(expert, tmp.Sub("base.safetensors"), tmp.Sub("merged.safetensors"));
        Assert.Equal(["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"], changed.Order(StringComparer.Ordinal));
        using (SafeTensorsFile before = SafeTensorsFile.Open(tmp.Sub("base.safetensors")))
        using (SafeTensorsFile after = SafeTensorsFile.Open(tmp.Sub("merged.safetensors")))
        {
            Assert.Equal("base", after.Metadata["note"]);
            Assert.Equal("pt", after.Metadata["format"]);
            foreach (string copied in new[] { "model.embed_tokens.weight", "position_ids" })
            {
                TensorInfo x = before.GetTensor(copied), y = after.GetTensor(copied);
                var bx = new byte[x.ByteCount];
                var by = new byte[y.ByteCount];
                before.ReadBytes(x, bx);
                after.ReadBytes(y, by);
                Assert.True(x.DType == y.DType && x.Shape.SequenceEqual(y.Shape) && bx.SequenceEqual(by), $"{copied} changed");
            }
            CheckSum(after.ReadSingles(after.GetTensor("model.layers.0.self_attn.q_proj.weight")), wq, MergeReference.Delta(q, q.Scaling), 8, 8, false, $"{data}: q_proj");
            // v_proj is BF16: the result is W + ΔW rounded to BF16 (W itself was rounded to BF16 when written).
            TensorInfo vInfo = after.GetTensor("model.layers.0.self_attn.v_proj.weight");
            Assert.Equal(TensorDType.BF16, vInfo.DType);
            float[] wvStored = before.ReadSingles(before.GetTensor("model.layers.0.self_attn.v_proj.weight"));
            float[] vMerged = after.ReadSingles(vInfo);
            double[] dv = MergeReference.Delta(v, v.Scaling);
            for (int i = 0; i < 32; i++)
            {
                double expected = wvStored[i] + dv[i];
                Assert.True(Math.Abs(vMerged[i] - expected) <= Math.Pow(2, -8) * Math.Abs(expected) + 1e-30, $"{data}: v_proj[{i}] = {vMerged[i]}, expected {expected}");
            }
        }

        // One module only, by suffix.
        Assert.Equal(["model.layers.0.self_attn.v_proj.weight"], BaseWeights.MergeInto(expert, tmp.Sub("base.safetensors"), tmp.Sub("v.safetensors"), "v_proj"));
        using (SafeTensorsFile onlyV = SafeTensorsFile.Open(tmp.Sub("v.safetensors")))
        {
            Assert.Equal(wq, onlyV.ReadSingles(onlyV.GetTensor("model.layers.0.self_attn.q_proj.weight")));
        }
    }

    [Fact]
    public void MergeIntoRejectsMissingOrMisshapenWeightsWithoutWriting()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        RawFactors q = data.Factors(2, 8, 6);
        var expert = new Expert("e", [new(Q, Make(q))]);
        new SafeTensorsWriter().Add("model.layers.0.self_attn.k_proj.weight", data.Normal(48), [6, 8]).WriteTo(tmp.Sub("missing.safetensors"));
        var missing = Assert.Throws<KeyNotFoundException>(() => BaseWeights.MergeInto(expert, tmp.Sub("missing.safetensors"), tmp.Sub("out.safetensors")));
        Assert.Contains("no tensor 'model.layers.0.self_attn.q_proj.weight'", missing.Message);

        new SafeTensorsWriter().Add("model.layers.0.self_attn.q_proj.weight", data.Normal(48), [8, 6]).WriteTo(tmp.Sub("transposed.safetensors"));
        var shape = Assert.Throws<InvalidDataException>(() => BaseWeights.MergeInto(expert, tmp.Sub("transposed.safetensors"), tmp.Sub("out.safetensors")));
        Assert.Contains("F32 [8, 6]; module", shape.Message);
        Assert.Contains("needs F32, F16 or BF16 [6, 8]", shape.Message);
        // The same file is right for a Conv1D base (fan_in_fan_out).
        BaseWeights.MergeInto(expert, tmp.Sub("transposed.safetensors"), tmp.Sub("conv1d.safetensors"), fanInFanOut: true);
        Assert.False(File.Exists(tmp.Sub("out.safetensors")));
        Assert.Throws<KeyNotFoundException>(() => BaseWeights.MergeInto(expert, tmp.Sub("transposed.safetensors"), tmp.Sub("out.safetensors"), "k_proj"));
    }

    [Fact]
    public void AdapterWriteIsAllOrNothing()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        var expert = new Expert("e", [new(Q, Make(data.Factors(2, 8, 8)))]);

        // A failed write into an existing directory leaves the old files and no temporary ones.
        string dir = tmp.Sub("existing");
        Directory.CreateDirectory(Path.Combine(dir, PeftAdapter.WeightsFileName)); // a directory where the weights file should go
        File.WriteAllText(Path.Combine(dir, PeftAdapter.ConfigFileName), "old");
        Assert.ThrowsAny<IOException>(() => PeftAdapter.Write(dir, expert));
        Assert.Equal("old", File.ReadAllText(Path.Combine(dir, PeftAdapter.ConfigFileName)));
        Assert.Equal([PeftAdapter.ConfigFileName], Directory.GetFiles(dir).Select(Path.GetFileName));

        // A failed write of a new directory leaves nothing behind: its parent is a file here.
        File.WriteAllText(tmp.Sub("file"), "x");
        Assert.ThrowsAny<IOException>(() => PeftAdapter.Write(Path.Combine(tmp.Sub("file"), "adapter"), expert));
        Assert.Equal([tmp.Sub("existing")], Directory.GetDirectories(tmp.Path));

        // A new directory appears complete, with no temporary sibling left.
        PeftAdapter.Write(tmp.Sub("fresh"), expert);
        Assert.Equal([tmp.Sub("existing"), tmp.Sub("fresh")], Directory.GetDirectories(tmp.Path).Order(StringComparer.Ordinal));
        Assert.Equal([PeftAdapter.ConfigFileName, PeftAdapter.WeightsFileName], Directory.GetFiles(tmp.Sub("fresh")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }
}
