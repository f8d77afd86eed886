using System.Text.Json;
using System.Text.RegularExpressions;

namespace MoErging.Formats;

/// <summary>
/// The fields of a PEFT <c>adapter_config.json</c> that decide how a LoRA adapter is applied, with PEFT's
/// rules for per-module rank and alpha (<c>rank_pattern</c>, <c>alpha_pattern</c>), target modules and scaling.
/// </summary>
public sealed class PeftLoraConfig
{
    private readonly PatternKeys<int> _rankPattern;
    private readonly PatternKeys<double> _alphaPattern;
    private readonly Regex? _targetRegex;
    private readonly Regex? _excludeRegex;
    private readonly HashSet<string>? _targetNames;
    private readonly HashSet<string>? _excludeNames;
    private readonly Regex[] _layerRegexes;

    /// <summary>Creates a config; the defaults are PEFT's.</summary>
    public PeftLoraConfig(int r = 8, double loraAlpha = 8, bool useRsLora = false,
        IReadOnlyDictionary<string, int>? rankPattern = null, IReadOnlyDictionary<string, double>? alphaPattern = null,
        IReadOnlyList<string>? targetModules = null, string? targetModulesRegex = null, bool fanInFanOut = false,
        IReadOnlyList<int>? layersToTransform = null, IReadOnlyList<string>? layersPattern = null,
        IReadOnlyList<string>? excludeModules = null, string? excludeModulesRegex = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(r, 1);
        if (!double.IsFinite(loraAlpha))
        {
            throw new ArgumentOutOfRangeException(nameof(loraAlpha), loraAlpha, "lora_alpha must be finite");
        }
        R = r;
        LoraAlpha = loraAlpha;
        UseRsLora = useRsLora;
        RankPattern = rankPattern ?? new Dictionary<string, int>();
        AlphaPattern = alphaPattern ?? new Dictionary<string, double>();
        TargetModules = targetModules;
        TargetModulesRegex = targetModulesRegex;
        FanInFanOut = fanInFanOut;
        LayersToTransform = layersToTransform is { Count: > 0 } ? layersToTransform : null; // PEFT ignores an empty list
        LayersPattern = layersPattern;
        ExcludeModules = excludeModules;
        ExcludeModulesRegex = excludeModulesRegex;
        foreach (var (key, value) in RankPattern)
        {
            if (value < 1)
            {
                throw new ArgumentOutOfRangeException(nameof(rankPattern), value, $"rank_pattern['{key}'] must be at least 1");
            }
        }
        foreach (var (key, value) in AlphaPattern)
        {
            if (!double.IsFinite(value))
            {
                throw new ArgumentOutOfRangeException(nameof(alphaPattern), value, $"alpha_pattern['{key}'] must be finite");
            }
        }
        // Compiled once here; every lookup is then a few hash probes or a linear-time match.
        _rankPattern = new PatternKeys<int>(RankPattern, "rank_pattern");
        _alphaPattern = new PatternKeys<double>(AlphaPattern, "alpha_pattern");
        _targetRegex = targetModulesRegex is null or "all-linear" ? null : FullMatchRegex(targetModulesRegex, "target_modules");
        _excludeRegex = excludeModulesRegex is null ? null : FullMatchRegex(excludeModulesRegex, "exclude_modules");
        _targetNames = targetModules is null ? null : new HashSet<string>(targetModules, StringComparer.Ordinal);
        _excludeNames = excludeModules is null ? null : new HashSet<string>(excludeModules, StringComparer.Ordinal);
        foreach (string pattern in layersPattern ?? [])
        {
            _ = FullMatchRegex(pattern, "layers_pattern");
        }
        // PEFT: without layers_pattern any "<list>.<index>." counts (the last one in the name); with it, the first pattern that matches.
        IEnumerable<string> layerLists = LayersPattern is { Count: > 0 } ? LayersPattern.Select(Regex.Escape) : ["[^.]*"];
        _layerRegexes = [.. layerLists.Select(p => ConfigRegex.Create($@"^.*\.{p}\.(\d+)\.", $"layers_pattern '{p}'"))];
    }

    /// <summary><c>task_type</c> (<c>CAUSAL_LM</c>, <c>SEQ_CLS</c>, ...), or null when absent.</summary>
    public string? TaskType { get; init; }

    /// <summary><c>base_model_name_or_path</c>: the model the adapter was trained on (a hub id or a local path), or null.</summary>
    public string? BaseModelName { get; init; }

    /// <summary><c>modules_to_save</c>: modules trained and saved whole beside the LoRA factors (null when absent).</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>PEFT's <c>arrow_config</c>: the routing defaults the adapter's author chose for Arrow, or null.</summary>
    public PeftArrowConfig? ArrowConfig { get; init; }

    /// <summary>
    /// The modules PEFT saves whole for this config: <see cref="ModulesToSave"/> plus the heads PEFT adds itself for
    /// classification tasks (<c>classifier</c> and <c>score</c> for SEQ_CLS and TOKEN_CLS, <c>qa_outputs</c> for QUESTION_ANS).
    /// </summary>
    public IReadOnlyList<string> SavedModuleNames =>
        [.. (ModulesToSave ?? []).Concat(TaskType switch
        {
            "SEQ_CLS" or "TOKEN_CLS" => ["classifier", "score"],
            "QUESTION_ANS" => ["qa_outputs"],
            _ => [],
        }).Distinct(StringComparer.Ordinal)];

    /// <summary>
    /// Whether a module's tensors are saved whole under <c>modules_to_save</c>: PEFT's own test, a plain suffix match
    /// (so <c>classifier</c> also covers DistilBERT's <c>pre_classifier</c>, as PEFT wraps it too).
    /// </summary>
    public bool Saves(string moduleName) => SavedModuleNames.Any(m => moduleName.EndsWith(m, StringComparison.Ordinal));

    /// <summary><c>r</c>: the default rank.</summary>
    public int R { get; }

    /// <summary><c>lora_alpha</c>: the default alpha (a double, as Python reads it, so alpha / r rounds once).</summary>
    public double LoraAlpha { get; }

    /// <summary><c>use_rslora</c>: scaling is alpha / sqrt(r) instead of alpha / r.</summary>
    public bool UseRsLora { get; }

    /// <summary><c>rank_pattern</c>: per-module ranks, keyed by a regular expression matched at a dot boundary.</summary>
    public IReadOnlyDictionary<string, int> RankPattern { get; }

    /// <summary><c>alpha_pattern</c>: per-module alphas, keyed like <see cref="RankPattern"/>.</summary>
    public IReadOnlyDictionary<string, double> AlphaPattern { get; }

    /// <summary><c>target_modules</c> as a list of names (null when absent or given as a regex).</summary>
    public IReadOnlyList<string>? TargetModules { get; }

    /// <summary><c>target_modules</c> as a regular expression that must match the whole module name.</summary>
    public string? TargetModulesRegex { get; }

    /// <summary><c>fan_in_fan_out</c>: the base layer stores its weight transposed (GPT-2's Conv1D); A and B keep their layout.</summary>
    public bool FanInFanOut { get; }

    /// <summary><c>layers_to_transform</c>: only these layer indices are adapted (null: all).</summary>
    public IReadOnlyList<int>? LayersToTransform { get; }

    /// <summary><c>layers_pattern</c>: names of the layer list used to find a module's layer index.</summary>
    public IReadOnlyList<string>? LayersPattern { get; }

    /// <summary><c>exclude_modules</c> as a list of names.</summary>
    public IReadOnlyList<string>? ExcludeModules { get; }

    /// <summary><c>exclude_modules</c> as a regular expression.</summary>
    public string? ExcludeModulesRegex { get; }

    /// <summary>The rank PEFT gives this module: the first matching <c>rank_pattern</c> key, else <c>r</c>.</summary>
    /// <param name="moduleName">The module's name in the base model (without PEFT's <c>base_model.model.</c> prefix).</param>
    public int RankFor(string moduleName) => _rankPattern.Lookup(moduleName, R);

    /// <summary>The alpha PEFT gives this module: the first matching <c>alpha_pattern</c> key, else <c>lora_alpha</c>.</summary>
    public double AlphaFor(string moduleName) => _alphaPattern.Lookup(moduleName, LoraAlpha);

    /// <summary>The scaling s of this module: alpha / r, or alpha / sqrt(r) with rsLoRA, in float64 as PEFT computes it, rounded once.</summary>
    public float ScalingFor(string moduleName)
    {
        int r = RankFor(moduleName);
        double alpha = AlphaFor(moduleName);
        return (float)(UseRsLora ? alpha / Math.Sqrt(r) : alpha / r);
    }

    /// <summary>Whether PEFT would adapt this module under <c>target_modules</c>, <c>exclude_modules</c> and <c>layers_to_transform</c>.</summary>
    public bool Targets(string moduleName) => WhyNotTargeted(moduleName) is null;

    /// <summary>Null when PEFT would adapt this module; otherwise which field leaves it out, in words.</summary>
    public string? WhyNotTargeted(string moduleName)
    {
        ArgumentNullException.ThrowIfNull(moduleName);
        if (_excludeRegex is not null && ConfigRegex.IsMatch(_excludeRegex, moduleName))
        {
            return "it matches exclude_modules";
        }
        if (_excludeNames is not null && NamedOrSuffix(_excludeNames, moduleName))
        {
            return "it is listed in exclude_modules";
        }
        if (TargetModulesRegex is not null)
        {
            return _targetRegex is null || ConfigRegex.IsMatch(_targetRegex, moduleName) ? null : "it does not match the target_modules pattern";
        }
        if (_targetNames is null || _targetNames.Contains(moduleName))
        {
            return null; // no list: PEFT filled it in from the model type, so any module the file holds was targeted.
        }
        if (!NamedOrSuffix(_targetNames, moduleName))
        {
            return "it is not covered by target_modules";
        }
        return LayersToTransform is null || LayerIndexIsTransformed(moduleName)
            ? null
            : $"its layer is not in layers_to_transform [{string.Join(", ", LayersToTransform)}]";
    }

    /// <summary>Whether the set holds the name or one of its dot-separated suffixes: one probe per dot, not one test per listed name.</summary>
    private static bool NamedOrSuffix(HashSet<string> names, string moduleName)
    {
        if (names.Contains(moduleName))
        {
            return true;
        }
        var lookup = names.GetAlternateLookup<ReadOnlySpan<char>>();
        for (int dot = moduleName.IndexOf('.'); dot >= 0; dot = moduleName.IndexOf('.', dot + 1))
        {
            if (lookup.Contains(moduleName.AsSpan(dot + 1)))
            {
                return true;
            }
        }
        return false;
    }

    private bool LayerIndexIsTransformed(string moduleName)
    {
        foreach (Regex pattern in _layerRegexes)
        {
            Match m;
            try
            {
                m = pattern.Match(moduleName);
            }
            catch (RegexMatchTimeoutException)
            {
                throw new InvalidDataException($"layers_pattern '{pattern}' took too long to match '{moduleName}'");
            }
            if (m.Success)
            {
                return int.TryParse(m.Groups[1].ValueSpan, out int layer) && LayersToTransform!.Contains(layer);
            }
        }
        return false;
    }

    /// <summary>Parses <c>adapter_config.json</c> text; <paramref name="label"/> names the file in messages.</summary>
    /// <exception cref="InvalidDataException">Malformed JSON or a field of the wrong type.</exception>
    /// <exception cref="NotSupportedException">A LoRA variant the engine does not implement (DoRA, LoRA bias, ...).</exception>
    public static PeftLoraConfig Parse(string json, string label)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = false, MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{label}: not valid JSON ({e.Message})");
        }
        using (document)
        {
            try
            {
                return FromJson(document.RootElement, label);
            }
            catch (InvalidOperationException e)
            {
                // System.Text.Json reports text it cannot turn into a string (a lone surrogate escape) this way.
                throw new InvalidDataException($"{label}: not valid JSON text ({e.Message})");
            }
        }
    }

    private static PeftLoraConfig FromJson(JsonElement root, string label)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidDataException($"{label}: not a JSON object");
        }
        var fields = new JsonFields(root, label);
        string peftType = fields.String("peft_type") ?? "LORA";
        if (peftType != "LORA")
        {
            throw new NotSupportedException($"{label}: peft_type is '{peftType}'; only LORA adapters are supported");
        }
        if (fields.Bool("use_dora") == true)
        {
            throw new NotSupportedException($"{label}: use_dora is true; DoRA adapters are not supported");
        }
        if (fields.Bool("lora_bias") == true)
        {
            throw new NotSupportedException($"{label}: lora_bias is true; LoRA bias terms are not supported");
        }
        string bias = fields.String("bias") ?? "none";
        if (bias != "none")
        {
            throw new NotSupportedException($"{label}: bias is '{bias}'; adapters that train the base model's biases are not supported");
        }
        foreach (string feature in new[] { "layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens", "use_qalora", "use_bdlora" })
        {
            if (fields.IsSet(feature))
            {
                throw new NotSupportedException($"{label}: {feature} is set; that LoRA feature changes the forward and is not supported");
            }
        }
        CheckInitialization(fields, label);
        try
        {
            var (targetList, targetRegex) = fields.StringOrList("target_modules");
            var (excludeList, excludeRegex) = fields.StringOrList("exclude_modules");
            var (layersList, layersSingle) = fields.StringOrList("layers_pattern");
            var (savedList, savedSingle) = fields.StringOrList("modules_to_save");
            return new PeftLoraConfig(
                r: fields.Int("r") ?? 8,
                loraAlpha: fields.Double("lora_alpha") ?? 8,
                useRsLora: fields.Bool("use_rslora") ?? false,
                rankPattern: fields.Map("rank_pattern", (e, k) => fields.IntValue(e, $"rank_pattern['{k}']")),
                alphaPattern: fields.Map("alpha_pattern", (e, k) => fields.DoubleValue(e, $"alpha_pattern['{k}']")),
                targetModules: targetList,
                targetModulesRegex: targetRegex,
                fanInFanOut: fields.Bool("fan_in_fan_out") ?? false,
                layersToTransform: fields.IntOrList("layers_to_transform"),
                layersPattern: layersList ?? (layersSingle is null ? null : [layersSingle]),
                excludeModules: excludeList,
                excludeModulesRegex: excludeRegex)
            {
                TaskType = fields.String("task_type"),
                BaseModelName = fields.String("base_model_name_or_path"),
                ModulesToSave = savedList ?? (savedSingle is null ? null : [savedSingle]),
                ArrowConfig = fields.Arrow("arrow_config"),
            };
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{label}: {e.Message}");
        }
    }

    /// <summary>
    /// <c>init_lora_weights</c>: the initialisations that leave the base model as it was (true, false, gaussian,
    /// orthogonal, eva) give adapters whose ΔW = s·B·A applies to the published base model. PiSSA, OLoRA and CorDA
    /// subtract their initial B·A from the base weights, and LoftQ replaces them with a quantised copy: such an adapter
    /// is relative to a modified base that only its trainer has, unless PEFT converted it (save_pretrained with
    /// path_initial_model_for_weight_conversion writes init_lora_weights = true).
    /// </summary>
    private static void CheckInitialization(JsonFields fields, string label)
    {
        string? init = fields.BoolOrString("init_lora_weights");
        if (init is null or "true" or "false" or "gaussian" or "orthogonal" or "eva")
        {
            return;
        }
        string method = init.StartsWith("pissa", StringComparison.Ordinal) ? "PiSSA"
            : init == "olora" ? "OLoRA" : init == "corda" ? "CorDA" : init == "loftq" ? "LoftQ" : "";
        if (method == "LoftQ")
        {
            throw new NotSupportedException($"{label}: init_lora_weights is 'loftq'; LoftQ adapters apply to the quantised base model LoftQ made, not to the published one");
        }
        if (method.Length > 0)
        {
            throw new NotSupportedException($"{label}: init_lora_weights is '{init}'; {method} subtracts its initial B·A from the base weights, so the adapter is relative to a modified base model. Convert it with PEFT's save_pretrained(path_initial_model_for_weight_conversion=...), which gives a plain LoRA adapter");
        }
        throw new NotSupportedException($"{label}: init_lora_weights is '{init}', which this engine does not know; only initialisations that leave the base model unchanged are supported (true, false, gaussian, orthogonal, eva)");
    }

    /// <summary>The largest config file read: real ones are a few kilobytes, and a bound keeps a wrong path (a device) from filling memory.</summary>
    public const int MaxConfigBytes = 16 << 20;

    /// <summary>Reads and parses a config file: a regular file of strict UTF-8 without a byte-order mark, at most <see cref="MaxConfigBytes"/>.</summary>
    public static PeftLoraConfig Load(string path) => Parse(InputFiles.ReadText(path, "a PEFT adapter config", MaxConfigBytes), path);

    private static Regex FullMatchRegex(string pattern, string field) => ConfigRegex.Create($"^(?:{pattern})$", $"{field} '{pattern}'");

    /// <summary>Typed access to the config's fields with messages that name the file and field.</summary>
    private readonly struct JsonFields(JsonElement root, string label)
    {
        public bool IsSet(string name) =>
            root.TryGetProperty(name, out JsonElement v) && v.ValueKind switch
            {
                JsonValueKind.Null or JsonValueKind.False => false,
                JsonValueKind.Array => v.GetArrayLength() > 0,
                JsonValueKind.Object => v.EnumerateObject().Any(),
                _ => true,
            };

        public string? String(string name) => Get(name, JsonValueKind.String, "a string")?.GetString();

        public bool? Bool(string name)
        {
            if (!root.TryGetProperty(name, out JsonElement v) || v.ValueKind == JsonValueKind.Null)
            {
                return null;
            }
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Wrong(name, "true or false"),
            };
        }

        /// <summary>A field that is true, false or a string, as text ("true", "false", or the string).</summary>
        public string? BoolOrString(string name)
        {
            if (!root.TryGetProperty(name, out JsonElement v) || v.ValueKind == JsonValueKind.Null)
            {
                return null;
            }
            return v.ValueKind switch
            {
                JsonValueKind.True => "true",
                JsonValueKind.False => "false",
                JsonValueKind.String => v.GetString(),
                _ => throw Wrong(name, "true, false or a string"),
            };
        }

        /// <summary>PEFT's arrow_config object: top_k, router_temperature and use_gks, each optional.</summary>
        public PeftArrowConfig? Arrow(string name)
        {
            if (Get(name, JsonValueKind.Object, "an object") is not JsonElement obj)
            {
                return null;
            }
            var arrow = new JsonFields(obj, $"{label}: {name}");
            int? topK = arrow.Int("top_k");
            double? temperature = arrow.Double("router_temperature");
            if (topK < 1)
            {
                throw new InvalidDataException($"{label}: {name}.top_k must be at least 1, got {topK}");
            }
            if (temperature < Routing.RoutingOptions.MinTemperature)
            {
                throw new InvalidDataException($"{label}: {name}.router_temperature must be at least {Routing.RoutingOptions.MinTemperature} (1 / temperature must be finite), got {temperature}");
            }
            return new PeftArrowConfig(topK, (float?)temperature, arrow.Bool("use_gks"));
        }

        public int? Int(string name) => Get(name, JsonValueKind.Number, "an integer") is JsonElement v ? IntValue(v, name) : null;

        public double? Double(string name) => Get(name, JsonValueKind.Number, "a number") is JsonElement v ? DoubleValue(v, name) : null;

        public int IntValue(JsonElement v, string what) =>
            v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i
            : v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue ? (int)d
            : throw Wrong(what, "an integer");

        public double DoubleValue(JsonElement v, string what) =>
            v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && Math.Abs(d) <= float.MaxValue ? d
            : throw Wrong(what, "a finite number"); // within float range: scalings are float32

        public Dictionary<string, T> Map<T>(string name, Func<JsonElement, string, T> read)
        {
            var map = new Dictionary<string, T>(StringComparer.Ordinal);
            if (Get(name, JsonValueKind.Object, "an object") is JsonElement obj)
            {
                foreach (JsonProperty p in obj.EnumerateObject())
                {
                    if (!map.TryAdd(p.Name, read(p.Value, p.Name)))
                    {
                        throw new InvalidDataException($"{label}: {name} has the key '{p.Name}' twice");
                    }
                }
            }
            return map;
        }

        public (List<string>? List, string? Single) StringOrList(string name)
        {
            if (!root.TryGetProperty(name, out JsonElement v) || v.ValueKind == JsonValueKind.Null)
            {
                return (null, null);
            }
            if (v.ValueKind == JsonValueKind.String)
            {
                return (null, v.GetString());
            }
            if (v.ValueKind == JsonValueKind.Array && v.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String))
            {
                return ([.. v.EnumerateArray().Select(x => x.GetString()!)], null);
            }
            throw Wrong(name, "a string or a list of strings");
        }

        public List<int>? IntOrList(string name)
        {
            if (!root.TryGetProperty(name, out JsonElement v) || v.ValueKind == JsonValueKind.Null)
            {
                return null;
            }
            if (v.ValueKind == JsonValueKind.Number)
            {
                return [IntValue(v, name)];
            }
            if (v.ValueKind == JsonValueKind.Array)
            {
                var self = this;
                return [.. v.EnumerateArray().Select((x, i) => self.IntValue(x, $"{name}[{i}]"))];
            }
            throw Wrong(name, "an integer or a list of integers");
        }

        private JsonElement? Get(string name, JsonValueKind kind, string expected)
        {
            if (!root.TryGetProperty(name, out JsonElement v) || v.ValueKind == JsonValueKind.Null)
            {
                return null;
            }
            return v.ValueKind == kind ? v : throw Wrong(name, expected);
        }

        private InvalidDataException Wrong(string what, string expected) => new($"{label}: {what} must be {expected}");
    }
}

/// <summary>PEFT's <c>arrow_config</c>: the Arrow routing its author chose (each field null when the config leaves it out).</summary>
/// <param name="TopK"><c>top_k</c>: experts kept per token.</param>
/// <param name="Temperature"><c>router_temperature</c>: the softmax temperature.</param>
/// <param name="UseGks"><c>use_gks</c>: general knowledge subtraction before the prototypes are formed.</param>
public sealed record PeftArrowConfig(int? TopK, float? Temperature, bool? UseGks);
