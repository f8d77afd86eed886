using MoErging.Formats;

namespace MoErging.Tests;

/// <summary>
/// adapter_config.json rules as PEFT applies them. Module names here are names in the base model,
/// without PEFT's <c>base_model.model.</c> prefix (PEFT matches patterns against those).
/// </summary>
public sealed class PeftLoraConfigTests
{
    private const string Q0 = "model.layers.0.self_attn.q_proj";
    private const string Q1 = "model.layers.1.self_attn.q_proj";
    private const string Q11 = "model.layers.11.self_attn.q_proj";
    private const string XQ0 = "model.layers.0.self_attn.xq_proj";
    private const string K0 = "model.layers.0.self_attn.k_proj";
    private const string XK0 = "model.layers.0.self_attn.xk_proj";
    private const string V0 = "model.layers.0.self_attn.v_proj";
    private const string O0 = "model.layers.0.self_attn.o_proj";
    private const string Down1 = "model.layers.1.mlp.down_proj";

    private static PeftLoraConfig Parse(string json) => PeftLoraConfig.Parse(json, "adapter_config.json");

    [Fact]
    public void DefaultsArePefts()
    {
        PeftLoraConfig c = Parse("{}");
        Assert.Equal(8, c.R);
        Assert.Equal(8f, c.LoraAlpha);
        Assert.False(c.UseRsLora);
        Assert.Equal(1f, c.ScalingFor(Q0));
        Assert.True(c.Targets(Q0));
        Assert.Null(c.TargetModules);
        Assert.Null(c.TargetModulesRegex);
    }

    [Theory]
    [InlineData(8, 16.0, false, 2.0)]
    [InlineData(8, 16.0, true, 5.656854249492381)] // 16 / sqrt(8)
    [InlineData(16, 8.0, false, 0.5)]
    [InlineData(16, 8.0, true, 2.0)]
    [InlineData(4, 8.0, true, 4.0)]
    [InlineData(3, 1.0, false, 0.3333333333333333)]
    [InlineData(3, 1.0, true, 0.5773502691896258)] // 1 / sqrt(3)
    [InlineData(64, 128.0, true, 16.0)]
    public void ScalingIsAlphaOverROrOverSqrtR(int r, double alpha, bool rs, double expected)
    {
        PeftLoraConfig c = Parse($"{{\"r\":{r},\"lora_alpha\":{alpha:R},\"use_rslora\":{(rs ? "true" : "false")},\"target_modules\":[\"q_proj\"]}}");
        Assert.Equal(r, c.R);
        Assert.Equal(rs, c.UseRsLora);
        // The engine keeps scaling in float32: the float nearest to the exact value.
        Assert.Equal((float)expected, c.ScalingFor(Q0));
    }

    [Fact]
    public void PatternKeysMatchAtADotBoundary()
    {
        PeftLoraConfig c = Parse("{\"r\":8,\"lora_alpha\":16,\"rank_pattern\":{\"q_proj\":4},\"alpha_pattern\":{\"q_proj\":2}}");
        Assert.Equal(4, c.RankFor(Q0));
        Assert.Equal(4, c.RankFor(Q11));
        Assert.Equal(4, c.RankFor("q_proj")); // the key matching the whole name
        Assert.Equal(8, c.RankFor(XQ0)); // not at a dot boundary
        Assert.Equal(8, c.RankFor(Q0 + "_x")); // anchored at the end
        Assert.Equal(8, c.RankFor(Q0 + ".base_layer"));
        Assert.Equal(8, c.RankFor(K0));
        Assert.Equal(2f, c.AlphaFor(Q0));
        Assert.Equal(16f, c.AlphaFor(XQ0));
        Assert.Equal(0.5f, c.ScalingFor(Q0));
        Assert.Equal(2f, c.ScalingFor(XQ0));
    }

    [Fact]
    public void PatternKeysAreRegularExpressions()
    {
        // The key's dots are regex dots (as in PEFT, nothing is escaped), so "layers.1.self_attn.q_proj"
        // matches layer 1 but not layer 11 or 21, and not "xlayers.1".
        PeftLoraConfig c = Parse("{\"r\":8,\"rank_pattern\":{\"layers.1.self_attn.q_proj\":2,\"layers\\\\.[2-3]\\\\..*_proj\":3,\"q_proj|k_proj\":5}}");
        Assert.Equal(2, c.RankFor(Q1));
        Assert.Equal(5, c.RankFor(Q11)); // only the alternation matches
        Assert.Equal(5, c.RankFor("model.layers.21.self_attn.q_proj"));
        Assert.Equal(5, c.RankFor("model.xlayers.1.self_attn.q_proj"));
        Assert.Equal(3, c.RankFor("model.layers.2.mlp.up_proj"));
        Assert.Equal(3, c.RankFor("model.layers.3.self_attn.q_proj"));
        Assert.Equal(8, c.RankFor("model.layers.4.mlp.up_proj"));
        // The key is wrapped in a group: the alternation does not escape the dot-boundary anchor.
        Assert.Equal(5, c.RankFor(K0));
        Assert.Equal(8, c.RankFor(XK0));
        Assert.Equal(8, c.RankFor("model.layers.0.self_attn.k_proj_out"));
        Assert.Equal(8, c.RankFor(V0));
    }

    [Fact]
    public void FirstMatchingKeyInFileOrderWins()
    {
        PeftLoraConfig specificFirst = Parse("{\"r\":8,\"lora_alpha\":8,\"rank_pattern\":{\"layers.1.self_attn.q_proj\":2,\"q_proj\":4},\"alpha_pattern\":{\"layers.1.self_attn.q_proj\":32,\"q_proj\":1}}");
        Assert.Equal(2, specificFirst.RankFor(Q1));
        Assert.Equal(4, specificFirst.RankFor(Q0));
        Assert.Equal(32f, specificFirst.AlphaFor(Q1));
        Assert.Equal(1f, specificFirst.AlphaFor(Q0));
        Assert.Equal(16f, specificFirst.ScalingFor(Q1));
        Assert.Equal(0.25f, specificFirst.ScalingFor(Q0));

        PeftLoraConfig generalFirst = Parse("{\"r\":8,\"lora_alpha\":8,\"rank_pattern\":{\"q_proj\":4,\"layers.1.self_attn.q_proj\":2},\"alpha_pattern\":{\"q_proj\":1,\"layers.1.self_attn.q_proj\":32}}");
        Assert.Equal(4, generalFirst.RankFor(Q1));
        Assert.Equal(1f, generalFirst.AlphaFor(Q1));
        Assert.Equal(0.25f, generalFirst.ScalingFor(Q1));

        // Many keys: file order, not sorted order, decides.
        PeftLoraConfig many = Parse("{\"rank_pattern\":{\"z_never\":1,\"proj\":7,\"q_proj\":6,\"a_never\":2}}");
        Assert.Equal(6, many.RankFor(Q0)); // "proj" does not match at a dot boundary; "q_proj" does
        PeftLoraConfig many2 = Parse("{\"rank_pattern\":{\"z_never\":1,\".*proj\":7,\"q_proj\":6,\"a_never\":2}}");
        Assert.Equal(7, many2.RankFor(Q0));
    }

    [Fact]
    public void RankAndAlphaPatternsCombineInScaling()
    {
        PeftLoraConfig c = Parse("{\"r\":8,\"lora_alpha\":16,\"rank_pattern\":{\"v_proj\":4},\"alpha_pattern\":{\"o_proj\":4}}");
        Assert.Equal(2f, c.ScalingFor(Q0));
        Assert.Equal(4f, c.ScalingFor(V0));
        Assert.Equal(0.5f, c.ScalingFor(O0));
        PeftLoraConfig rs = Parse("{\"r\":16,\"lora_alpha\":16,\"use_rslora\":true,\"rank_pattern\":{\"v_proj\":4},\"alpha_pattern\":{\"o_proj\":8}}");
        Assert.Equal(4f, rs.ScalingFor(Q0));
        Assert.Equal(8f, rs.ScalingFor(V0));
        Assert.Equal(2f, rs.ScalingFor(O0));
    }

    [Fact]
    public void TargetModulesAsAList()
    {
        PeftLoraConfig c = Parse("{\"target_modules\":[\"q_proj\",\"v_proj\",\"model.layers.1.mlp.down_proj\"]}");
        Assert.Equal(["q_proj", "v_proj", "model.layers.1.mlp.down_proj"], c.TargetModules);
        Assert.True(c.Targets(Q0));
        Assert.True(c.Targets(V0));
        Assert.True(c.Targets("q_proj"));
        Assert.False(c.Targets(XQ0));
        Assert.False(c.Targets(K0));
        Assert.False(c.Targets(Q0 + ".lora_A"));
        Assert.True(c.Targets(Down1));
        Assert.False(c.Targets("model.layers.0.mlp.down_proj"));
        Assert.True(c.Targets("prefix." + Down1)); // a suffix at a dot boundary
        Assert.False(c.Targets("prefix_" + Down1));
    }

    [Fact]
    public void TargetModulesAsARegexMustMatchTheWholeName()
    {
        PeftLoraConfig c = Parse("{\"target_modules\":\".*\\\\.(q|v)_proj\"}");
        Assert.Null(c.TargetModules);
        Assert.Equal(".*\\.(q|v)_proj", c.TargetModulesRegex);
        Assert.True(c.Targets(Q0));
        Assert.True(c.Targets(V0));
        Assert.False(c.Targets(XQ0)); // the regex needs a dot right before "q_proj"
        Assert.False(c.Targets(K0));
        Assert.False(c.Targets(Q0 + ".base_layer"));
        Assert.False(c.Targets("q_proj"));

        PeftLoraConfig bare = Parse("{\"target_modules\":\"q_proj\"}");
        Assert.True(bare.Targets("q_proj"));
        Assert.False(bare.Targets(Q0)); // a string is a regex matched in full, not a suffix

        PeftLoraConfig alternation = Parse("{\"target_modules\":\"model\\\\.layers\\\\.0\\\\..*|x\"}");
        Assert.True(alternation.Targets(Q0));
        Assert.False(alternation.Targets(Q1));
        Assert.False(alternation.Targets("a.x")); // the alternation is inside the full-match group
    }

    [Fact]
    public void AllLinearAndAbsentTargetEverything()
    {
        PeftLoraConfig all = Parse("{\"target_modules\":\"all-linear\"}");
        Assert.True(all.Targets(Q0));
        Assert.True(all.Targets(Down1));
        PeftLoraConfig absent = Parse("{\"target_modules\":null}");
        Assert.True(absent.Targets(Q0));
        Assert.True(Parse("{}").Targets("anything.at.all"));
    }

    [Fact]
    public void ExcludeModulesWin()
    {
        PeftLoraConfig list = Parse("{\"target_modules\":[\"q_proj\",\"down_proj\"],\"exclude_modules\":[\"model.layers.0.self_attn.q_proj\",\"mlp.down_proj\"]}");
        Assert.False(list.Targets(Q0));
        Assert.True(list.Targets(Q1));
        Assert.False(list.Targets(Down1));
        PeftLoraConfig regex = Parse("{\"target_modules\":\"all-linear\",\"exclude_modules\":\".*\\\\.layers\\\\.1\\\\..*\"}");
        Assert.True(regex.Targets(Q0));
        Assert.False(regex.Targets(Q1));
        Assert.False(regex.Targets(Down1));
        Assert.True(regex.Targets(Q11));
        PeftLoraConfig onAbsent = Parse("{\"exclude_modules\":[\"k_proj\"]}");
        Assert.False(onAbsent.Targets(K0));
        Assert.True(onAbsent.Targets(XK0));
    }

    [Fact]
    public void LayersToTransformWithDefaultLayerPatterns()
    {
        PeftLoraConfig c = Parse("{\"target_modules\":[\"q_proj\",\"c_attn\"],\"layers_to_transform\":[1,3]}");
        Assert.Equal([1, 3], c.LayersToTransform);
        Assert.True(c.Targets(Q1));
        Assert.True(c.Targets("model.layers.3.self_attn.q_proj"));
        Assert.False(c.Targets(Q0));
        Assert.False(c.Targets(Q11));
        Assert.True(c.Targets("transformer.h.3.attn.c_attn")); // GPT-2
        Assert.False(c.Targets("transformer.h.2.attn.c_attn"));
        Assert.False(c.Targets(XQ0));

        PeftLoraConfig single = Parse("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":0}");
        Assert.True(single.Targets(Q0));
        Assert.False(single.Targets(Q1));

        // An exact name in target_modules is adapted whatever its layer (PEFT checks layers only for suffix matches).
        PeftLoraConfig exact = Parse("{\"target_modules\":[\"model.layers.0.self_attn.q_proj\"],\"layers_to_transform\":[5]}");
        Assert.True(exact.Targets(Q0));
    }

    [Fact]
    public void LayersPatternNamesTheLayerList()
    {
        PeftLoraConfig c = Parse("{\"target_modules\":[\"fc\"],\"layers_to_transform\":[2],\"layers_pattern\":\"blocks\"}");
        Assert.True(c.Targets("vit.blocks.2.mlp.fc"));
        Assert.False(c.Targets("vit.blocks.3.mlp.fc"));
        Assert.False(c.Targets("model.layers.2.mlp.fc")); // only the named list counts
        PeftLoraConfig list = Parse("{\"target_modules\":[\"fc\"],\"layers_to_transform\":[2],\"layers_pattern\":[\"stages\",\"layers\"]}");
        Assert.True(list.Targets("net.stages.2.fc"));
        Assert.True(list.Targets("model.layers.2.mlp.fc"));
        Assert.False(list.Targets("net.stages.1.fc"));
    }

    // PEFT's check_target_module_exists ignores an empty layers_to_transform list ("is_using_layer_indexes =
    // layer_indexes is not None and len(layer_indexes) != 0"), so every suffix-matched module is adapted.
    [Fact]
    public void EmptyLayersToTransformMeansAllLayers()
    {
        PeftLoraConfig c = Parse("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[]}");
        Assert.True(c.Targets(Q0), "layers_to_transform [] should not restrict the layers (PEFT)");
        Assert.True(c.Targets(Q11));
    }

    // With layers_to_transform and no layers_pattern, current PEFT finds the layer index with
    // re.match(r".*\.[^.]*\.(\d+)\.", key): any list name, the LAST "<name>.<digits>." in the key (not PEFT's
    // old fixed list ["layers", "h", "block", "blocks", "layer"]).
    [Theory]
    [InlineData("net.stages.1.fc", "fc", 1)] // a list name outside the old fixed list
    [InlineData("encoder.block.3.layer.1.DenseReluDense.wi", "wi", 1)] // T5: PEFT takes the last index ("layer.1")
    public void DefaultLayerIndexFollowsCurrentPeft(string module, string target, int layer)
    {
        PeftLoraConfig c = Parse($"{{\"target_modules\":[\"{target}\"],\"layers_to_transform\":[{layer}]}}");
        Assert.True(c.Targets(module), $"PEFT adapts '{module}' with layers_to_transform [{layer}]");
    }

    public static TheoryData<string, string> UnsupportedFeatures() => new()
    {
        { "{\"use_dora\":true}", "use_dora" },
        { "{\"lora_bias\":true}", "lora_bias" },
        { "{\"bias\":\"all\"}", "bias is 'all'" },
        { "{\"bias\":\"lora_only\"}", "bias is 'lora_only'" },
        { "{\"peft_type\":\"PREFIX_TUNING\"}", "PREFIX_TUNING" },
        { "{\"peft_type\":\"lora\"}", "'lora'" },
        { "{\"layer_replication\":[[0,4],[2,5]]}", "layer_replication" },
        { "{\"target_parameters\":[\"experts.gate_up_proj\"]}", "target_parameters" },
        { "{\"trainable_token_indices\":[0,1]}", "trainable_token_indices" },
    };

    [Theory]
    [MemberData(nameof(UnsupportedFeatures))]
    public void UnsupportedFeatureThrowsNotSupportedNamingIt(string json, string phrase)
    {
        var e = Assert.Throws<NotSupportedException>(() => PeftLoraConfig.Parse(json, "cfg-label.json"));
        Assert.Contains("cfg-label.json", e.Message);
        Assert.Contains(phrase, e.Message);
    }

    [Fact]
    public void FeaturesSwitchedOffAreAccepted()
    {
        PeftLoraConfig c = Parse("{\"peft_type\":\"LORA\",\"use_dora\":false,\"lora_bias\":false,\"bias\":\"none\",\"layer_replication\":null," +
            "\"target_parameters\":null,\"trainable_token_indices\":null,\"fan_in_fan_out\":true,\"lora_dropout\":0.05,\"task_type\":\"CAUSAL_LM\"," +
            "\"modules_to_save\":null,\"init_lora_weights\":true,\"inference_mode\":true,\"revision\":null}");
        Assert.True(c.FanInFanOut);
        Assert.True(Parse("{\"target_parameters\":[],\"layer_replication\":[]}").Targets(Q0));
    }

    public static TheoryData<string, string> WrongTypes() => new()
    {
        { "{\"r\":\"eight\"}", "r must be an integer" },
        { "{\"r\":8.5}", "r must be an integer" },
        { "{\"r\":0}", "'r'" },
        { "{\"r\":-4}", "'r'" },
        { "{\"lora_alpha\":true}", "lora_alpha must be a number" },
        { "{\"lora_alpha\":\"16\"}", "lora_alpha must be a number" },
        { "{\"lora_alpha\":1e39}", "lora_alpha must be a finite number" },
        { "{\"use_rslora\":\"yes\"}", "use_rslora must be true or false" },
        { "{\"use_dora\":1}", "use_dora must be true or false" },
        { "{\"rank_pattern\":{\"q_proj\":0}}", "rank_pattern['q_proj'] must be at least 1" },
        { "{\"rank_pattern\":{\"q_proj\":2.5}}", "rank_pattern['q_proj'] must be an integer" },
        { "{\"rank_pattern\":{\"q_proj\":\"4\"}}", "rank_pattern['q_proj'] must be an integer" },
        { "{\"rank_pattern\":[\"q_proj\"]}", "rank_pattern must be an object" },
        { "{\"rank_pattern\":{\"q_proj(\":4}}", "q_proj(" },
        { "{\"alpha_pattern\":{\"v_proj\":\"x\"}}", "alpha_pattern['v_proj'] must be a finite number" },
        { "{\"target_modules\":5}", "target_modules must be a string or a list of strings" },
        { "{\"target_modules\":[\"q_proj\",3]}", "target_modules must be a string or a list of strings" },
        { "{\"target_modules\":\"(q_proj\"}", "target_modules '(q_proj' is not a valid regular expression" },
        { "{\"exclude_modules\":{\"a\":1}}", "exclude_modules must be a string or a list of strings" },
        { "{\"layers_to_transform\":\"1\"}", "layers_to_transform must be an integer or a list of integers" },
        { "{\"layers_to_transform\":[0,\"1\"]}", "layers_to_transform[1] must be an integer" },
        { "{\"peft_type\":5}", "peft_type must be a string" },
        { "{\"bias\":false}", "bias must be a string" },
        { "[]", "not a JSON object" },
        { "{\"r\":8,}", "not valid JSON" },
        { "", "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(WrongTypes))]
    public void WrongTypesThrowInvalidDataNamingTheField(string json, string phrase)
    {
        var e = Assert.Throws<InvalidDataException>(() => PeftLoraConfig.Parse(json, "cfg-label.json"));
        Assert.StartsWith("cfg-label.json: ", e.Message);
        Assert.Contains(phrase, e.Message);
    }

    // A JSON escape of a lone UTF-16 surrogate is syntactically valid JSON, but System.Text.Json throws
    // InvalidOperationException when the string is read; the config is malformed data all the same.
    [Theory]
    [InlineData("{\"peft_type\":\"\\ud800\"}")]
    [InlineData("{\"target_modules\":[\"\\udc00\"]}")]
    [InlineData("{\"rank_pattern\":{\"\\ud800\":4}}")]
    public void LoneSurrogateEscapeIsInvalidData(string json)
    {
        var e = Record.Exception(() => PeftLoraConfig.Parse(json, "cfg-label.json"));
        Assert.NotNull(e);
        Assert.True(e is InvalidDataException, $"expected InvalidDataException, got {e.GetType().Name}: {e.Message}");
        Assert.Contains("cfg-label.json", e.Message);
    }

    [Fact]
    public void LoadReadsAFileAndNamesItInMessages()
    {
        using var dir = new TempDir();
        string path = dir.Sub("adapter_config.json");
        File.WriteAllText(path, "{\"r\":4,\"lora_alpha\":12,\"target_modules\":[\"q_proj\"]}");
        PeftLoraConfig c = PeftLoraConfig.Load(path);
        Assert.Equal(3f, c.ScalingFor(Q0));
        File.WriteAllText(path, "{\"r\":\"four\"}");
        var e = Assert.Throws<InvalidDataException>(() => PeftLoraConfig.Load(path));
        Assert.Contains(path, e.Message);
    }
}
