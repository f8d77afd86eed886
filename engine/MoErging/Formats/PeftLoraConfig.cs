using System.Text.Json;
using System.Text.RegularExpressions;

namespace MoErging.Formats;

/// <summary>
/// The fields of a PEFT <c>adapter_config.json</c> that decide how a LoRA adapter is applied, with PEFT's
/// rules for per-module rank and alpha (<c>rank_pattern</c>, <c>alpha_pattern</c>), target modules and scaling.
/// </summary>
public sealed class PeftLoraConfig
{
    private static readonly TimeSpan PatternTimeout = TimeSpan.FromSeconds(1);

    private readonly (string Key, Regex Pattern, int Value)[] _rankPattern;
    private readonly (string Key, Regex Pattern, double Value)[] _alphaPattern;
    private readonly Regex? _targetRegex;
    private readonly Regex? _excludeRegex;

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
        _rankPattern = [.. RankPattern.Select(p => (p.Key, PatternKeyRegex(p.Key), p.Value))];
        _alphaPattern = [.. AlphaPattern.Select(p => (p.Key, PatternKeyRegex(p.Key), p.Value))];
        _targetRegex = targetModulesRegex is null or "all-linear" ? null : FullMatchRegex(targetModulesRegex, "target_modules");
        _excludeRegex = excludeModulesRegex is null ? null : FullMatchRegex(excludeModulesRegex, "exclude_modules");
        foreach (string pattern in layersPattern ?? [])
        {
            _ = FullMatchRegex(pattern, "layers_pattern");
        }
    }

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
    public int RankFor(string moduleName) => Lookup(_rankPattern, moduleName, R);

    /// <summary>The alpha PEFT gives this module: the first matching <c>alpha_pattern</c> key, else <c>lora_alpha</c>.</summary>
    public double AlphaFor(string moduleName) => Lookup(_alphaPattern, moduleName, LoraAlpha);

    /// <summary>The scaling s of this module: alpha / r, or alpha / sqrt(r) with rsLoRA, in float64 as PEFT computes it, rounded once.</summary>
    public float ScalingFor(string moduleName)
    {
        int r = RankFor(moduleName);
        double alpha = AlphaFor(moduleName);
        return (float)(UseRsLora ? alpha / Math.Sqrt(r) : alpha / r);
    }

    /// <summary>Whether PEFT would adapt this module under <c>target_modules</c>, <c>exclude_modules</c> and <c>layers_to_transform</c>.</summary>
    public bool Targets(string moduleName)
    {
        if (_excludeRegex is not null && IsMatch(_excludeRegex, moduleName))
        {
            return false;
        }
        if (ExcludeModules is not null && ExcludeModules.Any(x => x == moduleName || moduleName.EndsWith("." + x, StringComparison.Ordinal)))
        {
            return false;
        }
        if (TargetModulesRegex is not null)
        {
            return _targetRegex is null || IsMatch(_targetRegex, moduleName);
        }
        if (TargetModules is null)
        {
            return true; // PEFT filled them in from the model type; any module the file holds was targeted.
        }
        if (TargetModules.Contains(moduleName))
        {
            return true;
        }
        if (!TargetModules.Any(t => moduleName.EndsWith("." + t, StringComparison.Ordinal)))
        {
            return false;
        }
        return LayersToTransform is null || LayerIndexIsTransformed(moduleName);
    }

    private bool LayerIndexIsTransformed(string moduleName)
    {
        // PEFT: without layers_pattern any "<list>.<index>." counts (the last one in the name); with it,
        // the first pattern that matches.
        IEnumerable<string> patterns = LayersPattern is { Count: > 0 } ? LayersPattern.Select(Regex.Escape) : ["[^.]*"];
        foreach (string pattern in patterns)
        {
            Match m;
            try
            {
                m = Regex.Match(moduleName, $@"^.*\.{pattern}\.(\d+)\.", RegexOptions.None, PatternTimeout);
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
        foreach (string feature in new[] { "layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens", "use_qalora" })
        {
            if (fields.IsSet(feature))
            {
                throw new NotSupportedException($"{label}: {feature} is set; that LoRA feature is not supported");
            }
        }
        try
        {
            var (targetList, targetRegex) = fields.StringOrList("target_modules");
            var (excludeList, excludeRegex) = fields.StringOrList("exclude_modules");
            var (layersList, layersSingle) = fields.StringOrList("layers_pattern");
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
                excludeModulesRegex: excludeRegex);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{label}: {e.Message}");
        }
    }

    /// <summary>Reads and parses a config file.</summary>
    public static PeftLoraConfig Load(string path) => Parse(File.ReadAllText(path), path);

    private static Regex PatternKeyRegex(string key)
    {
        try
        {
            // PEFT: re.match(rf"(.*\.)?({key})$", name): the key matches a whole dot-separated suffix.
            return new Regex($@"^(.*\.)?({key})$", RegexOptions.None, PatternTimeout);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"pattern key '{key}' is not a valid regular expression ({e.Message})");
        }
    }

    private static Regex FullMatchRegex(string pattern, string field)
    {
        try
        {
            return new Regex($"^(?:{pattern})$", RegexOptions.None, PatternTimeout);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"{field} '{pattern}' is not a valid regular expression ({e.Message})");
        }
    }

    private static bool IsMatch(Regex regex, string name)
    {
        try
        {
            return regex.IsMatch(name);
        }
        catch (RegexMatchTimeoutException)
        {
            throw new InvalidDataException($"'{regex}' took too long to match '{name}'");
        }
    }

    private static T Lookup<T>((string Key, Regex Pattern, T Value)[] patterns, string moduleName, T fallback)
    {
        foreach (var (_, pattern, value) in patterns)
        {
            if (IsMatch(pattern, moduleName))
            {
                return value;
            }
        }
        return fallback;
    }

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
