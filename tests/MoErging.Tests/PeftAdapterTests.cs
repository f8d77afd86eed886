using System.Text.Json;
using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Tests;

/// <summary>
/// PEFT adapter directories written for real in a temporary folder: loading (names, shapes, scaling,
/// exact values in every storage type), every rejection, and the writer's round trip.
/// </summary>
public sealed class PeftAdapterTests
{
    private const string Prefix = "base_model.model.";
    private const string Q0 = Prefix + "model.layers.0.self_attn.q_proj";
    private const string V0 = Prefix + "model.layers.0.self_attn.v_proj";
    private const string Q1 = Prefix + "model.layers.1.self_attn.q_proj";
    private const string V1 = Prefix + "model.layers.1.self_attn.v_proj";
    private const string BasicConfig = "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"]}";

    /// <summary>Writes adapter_config.json (unless null) and adapter_model.safetensors (unless <paramref name="fill"/> is null).</summary>
    internal static string WriteAdapter(string directory, string? config, Action<SafeTensorsWriter>? fill)
    {
        Directory.CreateDirectory(directory);
        if (config is not null)
        {
            File.WriteAllText(Path.Combine(directory, "adapter_config.json"), config);
        }
        if (fill is not null)
        {
            var writer = new SafeTensorsWriter();
            fill(writer);
            writer.WriteTo(Path.Combine(directory, "adapter_model.safetensors"));
        }
        return directory;
    }

    /// <summary>A and B in PEFT's layout: A [r, dIn], B [dOut, r].</summary>
    private static (float[] A, float[] B) AddFactors(SafeTensorsWriter w, TestData data, string module, int r, int dIn, int dOut, TensorDType storage = TensorDType.F32)
    {
        float[] a = data.Normal(r * dIn), b = data.Normal(dOut * r);
        w.Add(module + ".lora_A.weight", a, [r, dIn], storage);
        w.Add(module + ".lora_B.weight", b, [dOut, r], storage);
        return (a, b);
    }

    private static void AssertBitsEqual(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToUInt32Bits(expected[i]) != BitConverter.SingleToUInt32Bits(actual[i]))
            {
                Assert.Fail($"{what}[{i}]: expected {expected[i]:R}, got {actual[i]:R}");
            }
        }
    }

    private static float[] B(LoraFactors f)
    {
        var b = new float[f.OutputDim * f.Rank];
        f.CopyB(b);
        return b;
    }

    [Fact]
    public void LoadsNamesShapesScalingAndExactValues()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        // r 4, alpha 8; layer 1's v_proj has rank 2 (rank_pattern) and every v_proj alpha 6 (alpha_pattern).
        string config = "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"]," +
            "\"rank_pattern\":{\"layers.1.self_attn.v_proj\":2},\"alpha_pattern\":{\"v_proj\":6}}";
        var written = new Dictionary<string, (float[] A, float[] B, int R, int DIn, int DOut, float S, float Alpha)>();
        string dir = WriteAdapter(tmp.Sub("expert-alpha"), config, w =>
        {
            void Add(string m, int r, int dIn, int dOut, float s, float alpha)
            {
                var (a, b) = AddFactors(w, data, m, r, dIn, dOut);
                written[m] = (a, b, r, dIn, dOut, s, alpha);
            }
            Add(Q0, 4, 24, 24, 2f, 8f);
            Add(V0, 4, 24, 8, 1.5f, 6f);
            Add(Q1, 4, 24, 24, 2f, 8f);
            Add(V1, 2, 24, 8, 3f, 6f);
        });

        Expert expert = PeftAdapter.Load(dir);
        Assert.Equal("expert-alpha", expert.Name);
        Assert.Equal(written.Keys.Order(StringComparer.Ordinal), expert.Modules.Keys.Order(StringComparer.Ordinal));
        foreach (var (module, w) in written)
        {
            LoraFactors f = expert.Modules[module];
            string what = $"{data}: {module}";
            Assert.True(f.Rank == w.R && f.InputDim == w.DIn && f.OutputDim == w.DOut,
                $"{what}: rank {f.Rank}, {f.InputDim} -> {f.OutputDim}; expected {w.R}, {w.DIn} -> {w.DOut}");
            Assert.Equal(w.S, f.Scaling);
            Assert.Equal(w.Alpha, f.Alpha);
            Assert.Equal(TensorDType.F32, f.StorageType);
            AssertBitsEqual(w.A, f.A, what + " A");
            AssertBitsEqual(w.B, B(f), what + " B");
            // Bᵀ is B transposed: row k of Bᵀ is column k of B.
            for (int k = 0; k < w.R; k++)
            {
                for (int o = 0; o < w.DOut; o++)
                {
                    Assert.True(f.BTransposed[k * w.DOut + o] == w.B[o * w.R + k], $"{what}: Bᵀ[{k}, {o}]");
                }
            }
        }

        // Expert.Load is the same loader; a trailing separator does not change the name.
        Assert.Equal("expert-alpha", Expert.Load(dir + Path.DirectorySeparatorChar).Name);
    }

    [Fact]
    public void RsLoraAndKeysWithoutThePrefixLoad()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        // Keys without base_model.model. are matched as they are.
        string dir = WriteAdapter(tmp.Sub("rs"), "{\"r\":16,\"lora_alpha\":8,\"use_rslora\":true,\"target_modules\":[\"down_proj\"]}",
            w => AddFactors(w, data, "model.layers.3.mlp.down_proj", 16, 5, 7));
        LoraFactors f = Assert.Single(PeftAdapter.Load(dir).Modules, p => p.Key == "model.layers.3.mlp.down_proj").Value;
        Assert.Equal(2f, f.Scaling); // 8 / sqrt(16)
        Assert.Equal(8f, f.Alpha);
    }

    [Fact]
    public void F16AndBF16FactorsDecodeExactly()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        const int r = 3, dIn = 11, dOut = 5;
        ushort[] RandomFinite(int n, Func<ushort, double> decode)
        {
            var bits = new ushort[n];
            for (int i = 0; i < n; i++)
            {
                do
                {
                    bits[i] = (ushort)data.Rng.Next(65536);
                }
                while (!double.IsFinite(decode(bits[i])));
            }
            return bits;
        }
        ushort[] aBits = RandomFinite(r * dIn, Narrow.HalfValue);
        ushort[] bBits = RandomFinite(dOut * r, Narrow.BFloat16Value);
        string dir = WriteAdapter(tmp.Sub("mixed"), "{\"r\":3,\"lora_alpha\":6,\"target_modules\":[\"q_proj\"]}", w =>
        {
            w.Add(Q0 + ".lora_A.weight", TensorDType.F16, [r, dIn], StBytes.U16(aBits));
            w.Add(Q0 + ".lora_B.weight", TensorDType.BF16, [dOut, r], StBytes.U16(bBits));
        });
        LoraFactors f = PeftAdapter.Load(dir).Modules[Q0];
        Assert.Equal(TensorDType.F16, f.StorageType);
        AssertBitsEqual([.. aBits.Select(b => (float)Narrow.HalfValue(b))], f.A, $"{data}: F16 A");
        AssertBitsEqual([.. bBits.Select(b => (float)Narrow.BFloat16Value(b))], B(f), $"{data}: BF16 B");
        Assert.Equal(2f, f.Scaling);
    }

    [Fact]
    public void MissingFilesAndWrongPathsAreRejected()
    {
        var data = new TestData();
        using var tmp = new TempDir();

        Assert.Throws<DirectoryNotFoundException>(() => PeftAdapter.Load(tmp.Sub("absent")));

        string file = tmp.Sub("a-file");
        File.WriteAllText(file, "{}");
        var e0 = Assert.Throws<DirectoryNotFoundException>(() => PeftAdapter.Load(file));
        Assert.Contains("is a file", e0.Message);

        string noConfig = WriteAdapter(tmp.Sub("no-config"), null, w => AddFactors(w, data, Q0, 4, 4, 4));
        var e1 = Assert.Throws<FileNotFoundException>(() => PeftAdapter.Load(noConfig));
        Assert.Contains("adapter_config.json", e1.Message);
        Assert.Contains("no-config", e1.Message);

        string noWeights = WriteAdapter(tmp.Sub("no-weights"), BasicConfig, null);
        var e2 = Assert.Throws<FileNotFoundException>(() => PeftAdapter.Load(noWeights));
        Assert.Contains("adapter_model.safetensors", e2.Message);

        string pickle = WriteAdapter(tmp.Sub("pickle"), BasicConfig, null);
        File.WriteAllBytes(Path.Combine(pickle, "adapter_model.bin"), [0x80, 0x02]);
        var e3 = Assert.Throws<NotSupportedException>(() => PeftAdapter.Load(pickle));
        Assert.Contains("pickle", e3.Message);
        Assert.Contains("adapter_model.bin", e3.Message);
    }

    [Fact]
    public void MalformedFilesInTheDirectoryAreRejectedNamingThem()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string badConfig = WriteAdapter(tmp.Sub("bad-config"), "{\"r\":\"four\"}", w => AddFactors(w, data, Q0, 4, 4, 4));
        var e1 = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(badConfig));
        Assert.Contains("adapter_config.json", e1.Message);
        Assert.Contains("r must be an integer", e1.Message);

        string dora = WriteAdapter(tmp.Sub("dora-config"), "{\"r\":4,\"use_dora\":true}", w => AddFactors(w, data, Q0, 4, 4, 4));
        Assert.Contains("use_dora", Assert.Throws<NotSupportedException>(() => PeftAdapter.Load(dora)).Message);

        string badWeights = WriteAdapter(tmp.Sub("bad-weights"), BasicConfig, null);
        File.WriteAllBytes(Path.Combine(badWeights, "adapter_model.safetensors"), StBytes.File("{\"a\":1}"));
        var e2 = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(badWeights));
        Assert.Contains("adapter_model.safetensors", e2.Message);

        string empty = WriteAdapter(tmp.Sub("empty"), BasicConfig, _ => { });
        Assert.Contains("no LoRA factors", Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(empty)).Message);
    }

    [Theory]
    [InlineData(3, 4, 4)] // A has rank 3, config says 4
    [InlineData(4, 3, 3)] // B has rank 3
    [InlineData(5, 4, 5)] // both 5
    public void ShapeThatDisagreesWithRIsRejectedNamingTheModule(int aRank, int bRank, int expectedMention)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = WriteAdapter(tmp.Sub("rank"), BasicConfig, w =>
        {
            AddFactors(w, data, Q0, 4, 6, 6);
            w.Add(V0 + ".lora_A.weight", data.Normal(aRank * 6), [aRank, 6]);
            w.Add(V0 + ".lora_B.weight", data.Normal(8 * bRank), [8, bRank]);
        });
        var e = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(dir));
        Assert.Contains($"module '{V0}'", e.Message);
        Assert.Contains("rank 4", e.Message);
        Assert.Contains($"{expectedMention}", e.Message);
    }

    [Fact]
    public void RankPatternRankIsRequired()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        // rank_pattern gives v_proj rank 2; a file with rank 4 there (the default r) must be rejected.
        string dir = WriteAdapter(tmp.Sub("rp"), "{\"r\":4,\"target_modules\":[\"q_proj\",\"v_proj\"],\"rank_pattern\":{\"v_proj\":2}}", w =>
        {
            AddFactors(w, data, Q0, 4, 6, 6);
            AddFactors(w, data, V0, 4, 6, 6);
        });
        var e = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(dir));
        Assert.Contains($"module '{V0}'", e.Message);
        Assert.Contains("rank 2", e.Message);
    }

    [Fact]
    public void UnpairedFactorsAreRejected()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string aOnly = WriteAdapter(tmp.Sub("a-only"), BasicConfig, w =>
        {
            AddFactors(w, data, Q0, 4, 6, 6);
            w.Add(V0 + ".lora_A.weight", data.Normal(24), [4, 6]);
        });
        var e1 = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(aOnly));
        Assert.Contains($"module '{V0}' has lora_A but no lora_B", e1.Message);

        string bOnly = WriteAdapter(tmp.Sub("b-only"), BasicConfig, w =>
        {
            AddFactors(w, data, Q0, 4, 6, 6);
            w.Add(V0 + ".lora_B.weight", data.Normal(24), [6, 4]);
        });
        var e2 = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(bOnly));
        Assert.Contains($"module '{V0}' has lora_B but no lora_A", e2.Message);
    }

    public static TheoryData<string, string> UnsupportedKeys() => new()
    {
        { Q0 + ".lora_magnitude_vector", "DoRA" },
        { Q0 + ".lora_magnitude_vector.weight", "DoRA" },
        { Prefix + "model.embed_tokens.lora_embedding_A", "embedding LoRA" },
        { Prefix + "model.embed_tokens.lora_embedding_B", "embedding LoRA" },
        { Q0 + ".lora_B.bias", "lora_bias" },
        { Prefix + "score.weight", "modules_to_save (none)" }, // a head, but this config is no classifier and lists none
        { Q0 + ".bias", "neither a LoRA factor" },
    };

    [Theory]
    [MemberData(nameof(UnsupportedKeys))]
    public void KeysOfUnsupportedFeaturesThrowNotSupported(string key, string phrase)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = WriteAdapter(tmp.Sub("unsupported"), BasicConfig, w =>
        {
            AddFactors(w, data, Q0, 4, 6, 6);
            w.Add(key, data.Normal(6), [6]);
        });
        var e = Assert.Throws<NotSupportedException>(() => PeftAdapter.Load(dir));
        Assert.Contains($"'{key}'", e.Message);
        Assert.Contains(phrase, e.Message);
    }

    [Theory]
    [InlineData(Q0 + ".lora_A.default.weight")] // adapter name left in the key
    [InlineData(Q0 + ".lora_A.weight_extra")]
    public void MisnamedFactorKeysAreInvalidData(string key)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = WriteAdapter(tmp.Sub("misnamed"), BasicConfig, w =>
        {
            AddFactors(w, data, Q0, 4, 6, 6);
            w.Add(key, data.Normal(24), [4, 6]);
        });
        var e = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(dir));
        Assert.Contains($"'{key}'", e.Message);
    }

    [Theory]
    [InlineData(new long[] { 4, 6, 3 }, new long[] { 6, 4, 1 })] // Conv1d
    [InlineData(new long[] { 4, 6, 3, 3 }, new long[] { 6, 4, 1, 1 })] // Conv2d
    [InlineData(new long[] { 4, 6 }, new long[] { 6, 4, 1, 1 })]
    public void ConvolutionFactorsThrowNotSupported(long[] aShape, long[] bShape)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = WriteAdapter(tmp.Sub("conv"), BasicConfig, w =>
        {
            w.Add(Q0 + ".lora_A.weight", data.Normal((int)aShape.Aggregate(1L, (x, y) => x * y)), aShape);
            w.Add(Q0 + ".lora_B.weight", data.Normal((int)bShape.Aggregate(1L, (x, y) => x * y)), bShape);
        });
        var e = Assert.Throws<NotSupportedException>(() => PeftAdapter.Load(dir));
        Assert.Contains("convolution", e.Message);
        Assert.Contains($"'{Q0}'", e.Message);
    }

    [Fact]
    public void VectorFactorsAndNonFloatFactorsAreInvalidData()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string vector = WriteAdapter(tmp.Sub("vector"), BasicConfig, w =>
        {
            w.Add(Q0 + ".lora_A.weight", data.Normal(6), [6]);
            w.Add(Q0 + ".lora_B.weight", data.Normal(24), [6, 4]);
        });
        Assert.Contains("must both be matrices", Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(vector)).Message);

        string ints = WriteAdapter(tmp.Sub("ints"), BasicConfig, w =>
        {
            w.Add(Q0 + ".lora_A.weight", new int[24], [4, 6]);
            w.Add(Q0 + ".lora_B.weight", data.Normal(24), [6, 4]);
        });
        Assert.Contains("dtype I32", Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(ints)).Message);

        string emptyDim = WriteAdapter(tmp.Sub("empty-dim"), BasicConfig, w =>
        {
            w.Add(Q0 + ".lora_A.weight", TensorDType.F32, [4, 0], []);
            w.Add(Q0 + ".lora_B.weight", data.Normal(24), [6, 4]);
        });
        Assert.Contains("empty or oversized", Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(emptyDim)).Message);
    }

    [Theory]
    [InlineData("{\"r\":4,\"target_modules\":[\"q_proj\"]}", V0, "not covered by target_modules")]
    [InlineData("{\"r\":4,\"target_modules\":[\"q_proj\",\"v_proj\"],\"exclude_modules\":[\"model.layers.0.self_attn.v_proj\"]}", V0, "listed in exclude_modules")]
    [InlineData("{\"r\":4,\"target_modules\":[\"q_proj\",\"v_proj\"],\"layers_to_transform\":[1]}", Q0, "not in layers_to_transform [1]")]
    [InlineData("{\"r\":4,\"target_modules\":\".*\\\\.q_proj\"}", V0, "does not match the target_modules pattern")]
    public void ModuleNotCoveredByTargetModulesIsInvalidData(string config, string uncovered, string why)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = WriteAdapter(tmp.Sub("untargeted"), config, w =>
        {
            AddFactors(w, data, Q0, 4, 6, 6);
            AddFactors(w, data, V0, 4, 6, 6);
        });
        var e = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(dir));
        Assert.Contains($"module '{uncovered}'", e.Message);
        Assert.Contains("PEFT would not adapt it", e.Message);
        Assert.Contains(why, e.Message);
    }

    private static Expert MakeExpert(TestData data, string name, params (string Module, int R, int DIn, int DOut, float S)[] modules) =>
        new(name, modules.Select(m =>
        {
            RawFactors f = data.Factors(m.R, m.DIn, m.DOut, m.S);
            return new KeyValuePair<string, LoraFactors>(m.Module, new LoraFactors(f.A, f.B, f.Rank, f.InputDim, f.OutputDim, f.Scaling));
        }));

    private static void AssertSameExpert(Expert expected, Expert actual, string what, bool exactScaling = true)
    {
        Assert.Equal(expected.Modules.Keys.Order(StringComparer.Ordinal), actual.Modules.Keys.Order(StringComparer.Ordinal));
        foreach (var (module, e) in expected.Modules)
        {
            LoraFactors a = actual.Modules[module];
            Assert.True(a.Rank == e.Rank && a.InputDim == e.InputDim && a.OutputDim == e.OutputDim, $"{what}: {module} shape");
            if (exactScaling)
            {
                Assert.True(BitConverter.SingleToUInt32Bits(a.Scaling) == BitConverter.SingleToUInt32Bits(e.Scaling),
                    $"{what}: {module} (rank {e.Rank}) scaling {e.Scaling:R} came back as {a.Scaling:R}");
            }
            AssertBitsEqual(e.A, a.A, $"{what}: {module} A");
            AssertBitsEqual(B(e), B(a), $"{what}: {module} B");
        }
    }

    [Fact]
    public void WriteThenLoadRoundTripsMixedRanksAndScalings()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        // Most modules rank 8, scaling 2 (alpha 16); v_proj rank 4 (alpha 8, scaling 2); o_proj scaling 0.5 (alpha 4);
        // layer 1's v_proj rank 16 scaling 0.25 (alpha 4).
        Expert expert = MakeExpert(data, "ignored-name",
            (Q0, 8, 32, 32, 2f),
            (Q1, 8, 32, 32, 2f),
            (Prefix + "model.layers.0.self_attn.k_proj", 8, 32, 16, 2f),
            (Prefix + "model.layers.0.self_attn.o_proj", 8, 32, 32, 0.5f),
            (V0, 4, 32, 16, 2f),
            (V1, 16, 32, 16, 0.25f));
        string dir = tmp.Sub("round-trip");
        PeftAdapter.Write(dir, expert);
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors"], Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal));

        Expert back = PeftAdapter.Load(dir);
        Assert.Equal("round-trip", back.Name);
        AssertSameExpert(expert, back, data.ToString());

        using JsonDocument config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")));
        JsonElement root = config.RootElement;
        Assert.Equal("LORA", root.GetProperty("peft_type").GetString());
        Assert.Equal(8, root.GetProperty("r").GetInt32());
        Assert.Equal(16.0, root.GetProperty("lora_alpha").GetDouble());
        Assert.False(root.GetProperty("use_rslora").GetBoolean());
        // r and lora_alpha are the most common rank (8) and alpha (16); the others get a pattern key that
        // matches exactly their module (PEFT's rule) and no other.
        var baseNames = expert.Modules.Keys.Select(k => k[Prefix.Length..]).ToArray();
        Dictionary<string, double> ByModule(string field)
        {
            var byModule = new Dictionary<string, double>();
            foreach (JsonProperty p in root.GetProperty(field).EnumerateObject())
            {
                string matched = Assert.Single(baseNames, n => System.Text.RegularExpressions.Regex.IsMatch(n, $@"^(.*\.)?({p.Name})$"));
                byModule.Add(matched, p.Value.GetDouble());
            }
            return byModule;
        }
        string BaseName(string full) => full[Prefix.Length..];
        var expectedRanks = new Dictionary<string, double> { [BaseName(V0)] = 4, [BaseName(V1)] = 16 };
        var expectedAlphas = new Dictionary<string, double> { [BaseName(V0)] = 8, [BaseName(V1)] = 4, ["model.layers.0.self_attn.o_proj"] = 4 };
        Assert.Equal(expectedRanks.OrderBy(p => p.Key), ByModule("rank_pattern").OrderBy(p => p.Key));
        Assert.Equal(expectedAlphas.OrderBy(p => p.Key), ByModule("alpha_pattern").OrderBy(p => p.Key));
        PeftLoraConfig parsed = PeftLoraConfig.Load(Path.Combine(dir, "adapter_config.json"));
        var targets = root.GetProperty("target_modules").EnumerateArray().Select(x => x.GetString()).ToArray();
        Assert.Equal(baseNames.Order(StringComparer.Ordinal), targets);
        Assert.All(baseNames, n => Assert.True(parsed.Targets(n)));
    }

    [Theory]
    [InlineData(TensorDType.F16)]
    [InlineData(TensorDType.BF16)]
    public void WriteInSixteenBitsStoresCorrectlyRoundedValues(TensorDType storage)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        Expert expert = MakeExpert(data, "x", (Q0, 4, 9, 7, 2f), (V0, 2, 9, 5, 3f));
        string dir = tmp.Sub("sixteen");
        PeftAdapter.Write(dir, expert, storage);
        Expert back = PeftAdapter.Load(dir);
        Func<float, float> narrow = storage == TensorDType.F16
            ? v => (float)Narrow.HalfValue(Narrow.ToHalfBits(v))
            : v => (float)Narrow.BFloat16Value(Narrow.ToBFloat16Bits(v));
        foreach (var (module, e) in expert.Modules)
        {
            LoraFactors a = back.Modules[module];
            Assert.Equal(storage, a.StorageType);
            Assert.Equal(e.Scaling, a.Scaling);
            AssertBitsEqual([.. e.A.ToArray().Select(narrow)], a.A, $"{data}: {module} A");
            AssertBitsEqual([.. B(e).Select(narrow)], B(a), $"{data}: {module} B");
        }
    }

    // Storing lora_alpha = s · r rounded to float32 and dividing by r again in float32 can move s by one ulp for
    // ranks that are not powers of two (s = 0.9f at r = 3 would come back as 0.89999992f), so alpha is kept in
    // float64 and the scaling rounded once. Powers of two (r = 8, 16) round-trip either way; they show the test is sound.
    [Theory]
    [InlineData(0.9f, 3)]
    [InlineData(1.7f, 6)]
    [InlineData(0.9f, 8)]
    [InlineData(1.7f, 16)]
    public void WriteThenLoadKeepsTheScaling(float scaling, int rank)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        Expert expert = MakeExpert(data, "x", (Q0, rank, 4, 4, scaling));
        string dir = tmp.Sub("fixed-scaling");
        PeftAdapter.Write(dir, expert);
        float back = PeftAdapter.Load(dir).Modules[Q0].Scaling;
        Assert.True(BitConverter.SingleToUInt32Bits(back) == BitConverter.SingleToUInt32Bits(scaling),
            $"scaling {scaling:R} at rank {rank} came back as {back:R}");
    }

    [Fact]
    public void WriteThenLoadRoundTripsArbitraryScalingsExactly()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        var modules = new List<(string, int, int, int, float)>();
        for (int i = 0; i < 40; i++)
        {
            int r = 1 + data.Rng.Next(24);
            float s = (float)(0.05 + 4 * data.Rng.NextDouble());
            modules.Add(($"{Prefix}model.layers.{i}.mlp.down_proj", r, 3, 2, s));
        }
        Expert expert = MakeExpert(data, "x", [.. modules]);
        string dir = tmp.Sub("arbitrary");
        PeftAdapter.Write(dir, expert);
        Expert back = PeftAdapter.Load(dir);
        AssertSameExpert(expert, back, data.ToString());
    }

    [Fact]
    public void WriteOverwritesAtomicallyAndCreatesTheDirectory()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = Path.Combine(tmp.Path, "nested", "expert");
        PeftAdapter.Write(dir, MakeExpert(data, "first", (Q0, 2, 4, 4, 1f)));
        Expert second = MakeExpert(data, "second", (V0, 3, 4, 6, 0.5f));
        PeftAdapter.Write(dir, second, baseModelName: "org/base-model");
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors"], Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Expert back = PeftAdapter.Load(dir);
        AssertSameExpert(second, back, data.ToString());
        using JsonDocument config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")));
        Assert.Equal("org/base-model", config.RootElement.GetProperty("base_model_name_or_path").GetString());
    }

    [Fact]
    public void WriteUsesPeftsKeyPrefixForModulesNamedWithoutIt()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        const string bare = "model.layers.0.self_attn.k_proj";
        Expert expert = MakeExpert(data, "x", (bare, 3, 8, 6, 2f), (Q0, 2, 8, 8, 1f));
        string dir = tmp.Sub("bare");
        PeftAdapter.Write(dir, expert);
        using (SafeTensorsFile weights = SafeTensorsFile.Open(Path.Combine(dir, PeftAdapter.WeightsFileName)))
        {
            Assert.Equal([Prefix + bare + ".lora_A.weight", Prefix + bare + ".lora_B.weight", Q0 + ".lora_A.weight", Q0 + ".lora_B.weight"],
                weights.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
        }
        Expert back = PeftAdapter.Load(dir);
        AssertSameExpert(new Expert("x", [new(Prefix + bare, expert.Modules[bare]), new(Q0, expert.Modules[Q0])]), back, data.ToString());

        // The same module under both spellings cannot be written as two.
        Expert twice = MakeExpert(data, "twice", (bare, 3, 8, 6, 2f), (Prefix + bare, 3, 8, 6, 2f));
        var e = Assert.Throws<ArgumentException>(() => PeftAdapter.Write(tmp.Sub("twice"), twice));
        Assert.Contains($"modules '{bare}' and '{Prefix}{bare}'", e.Message);
        Assert.False(Directory.Exists(tmp.Sub("twice")));
    }
}

/// <summary>Expert libraries: loading several directories, shape agreement, module lookup.</summary>
public sealed class ExpertLibraryTests
{
    private const string Prefix = "base_model.model.";

    private static Expert MakeExpert(TestData data, string name, params (string Module, int R, int DIn, int DOut)[] modules) =>
        new(name, modules.Select(m =>
        {
            RawFactors f = data.Factors(m.R, m.DIn, m.DOut);
            return new KeyValuePair<string, LoraFactors>(m.Module, new LoraFactors(f.A, f.B, f.Rank, f.InputDim, f.OutputDim, f.Scaling));
        }));

    [Fact]
    public void LoadOfSeveralDirectoriesIsAllOrNothing()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string q = Prefix + "model.layers.0.self_attn.q_proj";
        var dirs = new List<string>();
        for (int e = 0; e < 3; e++)
        {
            string dir = tmp.Sub($"expert{e}");
            PeftAdapter.Write(dir, MakeExpert(data, "x", (q, 2 + e, 8, 8)));
            dirs.Add(dir);
        }
        ExpertLibrary good = ExpertLibrary.Load(dirs);
        Assert.Equal(["expert0", "expert1", "expert2"], good.Experts.Select(x => x.Name));
        Assert.Equal(1, good.IndexOf("expert1"));
        Assert.Equal(-1, good.IndexOf("expert9"));
        AdaptedModule m = Assert.Single(good.Modules);
        Assert.Equal(4, m.MaxRank);
        Assert.Equal(3, m.ExpertCount);

        // One bad directory in the middle: the whole load throws, naming it.
        string bad = PeftAdapterTests.WriteAdapter(tmp.Sub("bad-expert"), "{\"r\":2,\"target_modules\":[\"k_proj\"]}", w =>
        {
            w.Add(q + ".lora_A.weight", data.Normal(16), [2, 8]);
            w.Add(q + ".lora_B.weight", data.Normal(16), [8, 2]);
        });
        ExpertLibrary? library = null;
        var ex = Assert.Throws<InvalidDataException>(() => library = ExpertLibrary.Load([dirs[0], bad, dirs[1]]));
        Assert.Contains("bad-expert", ex.Message);
        Assert.Null(library);

        Assert.Throws<DirectoryNotFoundException>(() => library = ExpertLibrary.Load([dirs[0], tmp.Sub("missing")]));
        Assert.Null(library);

        // Two directories of the same name (in different parents) are named by their parents too.
        string twin = Path.Combine(tmp.Path, "other", "expert0");
        PeftAdapter.Write(twin, MakeExpert(data, "x", (q, 2, 8, 8)));
        Assert.Equal([$"{Path.GetFileName(tmp.Path)}/expert0", "other/expert0"], ExpertLibrary.Load([dirs[0], twin]).Experts.Select(x => x.Name));
        Assert.Throws<ArgumentException>(() => ExpertLibrary.Load([]));
    }

    [Fact]
    public void MismatchedDimensionsThrowNamingExpertAndModule()
    {
        var data = new TestData();
        string q = Prefix + "model.layers.0.self_attn.q_proj";
        string v = Prefix + "model.layers.0.self_attn.v_proj";
        Expert a = MakeExpert(data, "alpha", (q, 4, 16, 16), (v, 4, 16, 8));
        Expert b = MakeExpert(data, "beta", (q, 2, 16, 16), (v, 8, 12, 8)); // v_proj d_in 12, not 16
        var e = Assert.Throws<ArgumentException>(() => new ExpertLibrary([a, b]));
        Assert.Contains($"module '{v}'", e.Message);
        Assert.Contains("'beta'", e.Message);
        Assert.Contains("'alpha'", e.Message);
        Assert.Contains("12", e.Message);

        Expert c = MakeExpert(data, "gamma", (q, 2, 16, 17)); // d_out differs
        var e2 = Assert.Throws<ArgumentException>(() => new ExpertLibrary([a, c]));
        Assert.Contains($"module '{q}'", e2.Message);
        Assert.Contains("'gamma'", e2.Message);

        // Different ranks are fine.
        var ok = new ExpertLibrary([a, MakeExpert(data, "delta", (q, 7, 16, 16))]);
        AdaptedModule mq = ok.Module(q);
        Assert.Equal(7, mq.MaxRank);
        Assert.Equal(16, mq.InputDim);
        Assert.Null(ok.Module(v).Factors(1)); // delta does not adapt v_proj
        Assert.NotNull(ok.Module(v).Factors(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => ok.Module(v).Factors(2));
    }

    [Fact]
    public void ModuleLookupBySuffixAtADotBoundary()
    {
        var data = new TestData();
        string q0 = Prefix + "model.layers.0.self_attn.q_proj";
        string q1 = Prefix + "model.layers.1.self_attn.q_proj";
        string xq0 = Prefix + "model.layers.0.self_attn.xq_proj";
        string down = Prefix + "model.layers.0.mlp.down_proj";
        var library = new ExpertLibrary([
            MakeExpert(data, "e0", (q0, 2, 8, 8), (xq0, 2, 8, 8)),
            MakeExpert(data, "e1", (q1, 2, 8, 8), (down, 2, 16, 8)),
        ]);
        Assert.Equal([down, q0, xq0, q1], library.Modules.Select(m => m.Name)); // ordinal order ("mlp" < "self_attn")
        Assert.Equal(down, library.Module("down_proj").Name);
        Assert.Equal(down, library.Module(down).Name);
        Assert.Equal(q0, library.Module("layers.0.self_attn.q_proj").Name); // not xq_proj
        Assert.Equal(q1, library.Module("1.self_attn.q_proj").Name);
        Assert.Equal(xq0, library.Module("xq_proj").Name);
        Assert.Same(library.Modules[library.Module("down_proj").Index], library.Module("down_proj"));
        Assert.Same(library, library.Module("down_proj").Library);

        var ambiguous = Assert.Throws<ArgumentException>(() => library.Module("q_proj"));
        Assert.Contains("ambiguous", ambiguous.Message);
        Assert.Contains(q0, ambiguous.Message);
        Assert.Contains(q1, ambiguous.Message);
        Assert.DoesNotContain(xq0, ambiguous.Message);

        foreach (string missing in new[] { "proj", "_proj", "q", "layers.2.self_attn.q_proj", "model.layers.0.self_attn.q_proj.lora_A" })
        {
            var e = Assert.Throws<KeyNotFoundException>(() => library.Module(missing));
            Assert.Contains($"'{missing}'", e.Message);
            Assert.Contains(down, e.Message); // lists the library's modules
            Assert.Contains(xq0, e.Message);
        }
    }
}
