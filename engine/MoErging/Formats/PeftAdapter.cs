using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.RegularExpressions;
using MoErging.Execution;
using MoErging.Experts;

namespace MoErging.Formats;

/// <summary>
/// Reads and writes PEFT LoRA adapter directories: <c>adapter_config.json</c> and
/// <c>adapter_model.safetensors</c> with keys <c>&lt;module&gt;.lora_A.weight</c> <c>[r, d_in]</c> and
/// <c>&lt;module&gt;.lora_B.weight</c> <c>[d_out, r]</c>.
/// </summary>
public static class PeftAdapter
{
    /// <summary>The config file's name.</summary>
    public const string ConfigFileName = "adapter_config.json";

    /// <summary>The weights file's name.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>The prefix PEFT puts before module names in saved keys.</summary>
    public const string ModelPrefix = "base_model.model.";

    private const string ASuffix = ".lora_A.weight";
    private const string BSuffix = ".lora_B.weight";

    /// <summary>A module's name in the base model: its name without <see cref="ModelPrefix"/>.</summary>
    public static string BaseName(string module) =>
        module.StartsWith(ModelPrefix, StringComparison.Ordinal) ? module[ModelPrefix.Length..] : module;

    /// <summary>
    /// Loads an adapter directory as an expert, named <paramref name="name"/> or else after the directory. Shapes are
    /// checked against the config (rank per module after <c>rank_pattern</c>); scaling follows <c>lora_alpha</c>,
    /// <c>alpha_pattern</c> and <c>use_rslora</c>. Tensors of <c>modules_to_save</c> (a classification head; with a
    /// classification <c>task_type</c> also <c>classifier</c> and <c>score</c>, which PEFT saves by itself) are kept
    /// as <see cref="Expert.SavedTensors"/>, read on demand; so are tensors inside PEFT's wrapper of such a module
    /// (<c>...modules_to_save.*</c>, <c>...original_module.*</c>), LoRA factors included, since a LoRA forward does not
    /// run that module.
    /// </summary>
    /// <param name="directory">The adapter directory.</param>
    /// <param name="lazy">
    /// Validate everything now (config, header, every shape and dtype) but decode the factors only on first use
    /// (see <see cref="LoraFactors"/>): the file is read again then, after checking that its length, modification
    /// time and tensor entries are unchanged. No file stays open in between. Eager (false) is the default.
    /// </param>
    /// <param name="name">The expert's name; null names it after the directory.</param>
    /// <param name="precision">
    /// How the factors are held in memory. A tensor stored in that very format (BF16 at <see cref="WeightPrecision.BFloat16"/>,
    /// F16 at <see cref="WeightPrecision.Float16"/>) keeps its bits as they are, and a lazy load reads them straight from the
    /// file into that storage; any other is widened to float32 (exactly) and rounded to the precision once.
    /// </param>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist, or is not a directory.</exception>
    /// <exception cref="FileNotFoundException">The config or weights file is missing.</exception>
    /// <exception cref="InvalidDataException">A malformed file, or shapes that disagree with the config.</exception>
    /// <exception cref="NotSupportedException">DoRA, LoRA bias, embedding or convolution LoRA, trained biases, an initialisation that changed the base model, pickled weights, a factor over 2 GiB.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An unknown precision.</exception>
    public static Expert Load(string directory, bool lazy = false, string? name = null, WeightPrecision precision = WeightPrecision.Float32)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        WeightStorage.Check(precision, nameof(precision));
        if (name is not null)
        {
            CheckName(name);
        }
        string full = Path.GetFullPath(directory);
        var (kind, what) = InputFiles.Classify(full);
        if (kind != InputFiles.Kind.Directory)
        {
            throw new DirectoryNotFoundException(kind == InputFiles.Kind.Missing
                ? $"{directory}: no such directory"
                : $"{directory}: is {what}; an expert is a PEFT adapter directory");
        }
        string configPath = Path.Combine(full, ConfigFileName);
        string weightsPath = Path.Combine(full, WeightsFileName);
        if (InputFiles.Classify(configPath).Kind == InputFiles.Kind.Missing)
        {
            throw new FileNotFoundException($"{directory}: no {ConfigFileName}", configPath);
        }
        if (InputFiles.Classify(weightsPath).Kind == InputFiles.Kind.Missing)
        {
            if (File.Exists(Path.Combine(full, "adapter_model.bin")))
            {
                throw new NotSupportedException($"{directory}: only {WeightsFileName} is read; adapter_model.bin is a pickle (convert it with PEFT's save_pretrained(safe_serialization=True))");
            }
            throw new FileNotFoundException($"{directory}: no {WeightsFileName}", weightsPath);
        }
        PeftLoraConfig config = PeftLoraConfig.Load(configPath);
        using SafeTensorsFile file = SafeTensorsFile.Open(weightsPath);
        var (modules, saved) = ReadModules(config, configPath, file, lazy, precision);
        return new Expert(name ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(full)), modules, full, config, saved);
    }

    /// <summary>An expert's name is printed and used as a key: non-empty, without control characters.</summary>
    internal static void CheckName(string name)
    {
        if (name.Length == 0 || name.Any(char.IsControl))
        {
            throw new ArgumentException($"expert name '{name.ReplaceLineEndings(" ")}' must be non-empty and hold no control characters", nameof(name));
        }
    }

    /// <summary>The layers PEFT saves whole beside a resized vocabulary (save_embedding_layers), whatever modules_to_save says.</summary>
    private static readonly string[] EmbeddingLayers = ["embed_tokens", "lm_head"];

    /// <summary>
    /// The module a tensor belongs to when PEFT saved that module whole, else null: the outermost module on the key's
    /// path that modules_to_save names (PEFT wraps that one and saves every tensor inside it, so a RoBERTa head saves
    /// <c>classifier.dense.weight</c> and <c>classifier.out_proj.bias</c>), or an embedding layer.
    /// </summary>
    private static string? SavedModule(PeftLoraConfig config, string key)
    {
        int start = key.StartsWith(ModelPrefix, StringComparison.Ordinal) ? ModelPrefix.Length : 0;
        for (int dot = key.IndexOf('.', start); dot > 0; dot = key.IndexOf('.', dot + 1))
        {
            string module = key[..dot], baseName = BaseName(module);
            string last = baseName[(baseName.LastIndexOf('.') + 1)..];
            if (config.Saves(baseName) || EmbeddingLayers.Contains(last))
            {
                return module;
            }
        }
        return null;
    }

    /// <summary>PEFT's wrapper of a <c>modules_to_save</c> module: what follows it belongs to the saved copy or the frozen original.</summary>
    private static readonly string[] WrapperSegments = [".modules_to_save.", ".original_module."];

    private static (List<KeyValuePair<string, LoraFactors>>, List<SavedTensor>) ReadModules(PeftLoraConfig config, string configPath, SafeTensorsFile file, bool lazy,
        WeightPrecision precision)
    {
        var aOf = new SortedDictionary<string, TensorInfo>(StringComparer.Ordinal);
        var bOf = new SortedDictionary<string, TensorInfo>(StringComparer.Ordinal);
        var saved = new List<SavedTensor>();
        string path = file.Label;
        var stamp = file.Stamp!.Value;
        foreach (TensorInfo t in file.Tensors)
        {
            string key = t.Name;
            if (key.Any(char.IsControl))
            {
                throw new InvalidDataException($"{file.Label}: tensor '{key.ReplaceLineEndings(" ")}' has a control character in its name");
            }
            int wrapper = WrapperSegments.Select(w => key.IndexOf(w, StringComparison.Ordinal)).Where(i => i > 0).DefaultIfEmpty(-1).Min();
            if (wrapper > 0)
            {
                saved.Add(new SavedTensor(key[..wrapper], t, () => Reopen(path, stamp, $"saved tensor '{key}'", t)));
            }
            else if (key.EndsWith(ASuffix, StringComparison.Ordinal) && key.Length > ASuffix.Length)
            {
                aOf.Add(key[..^ASuffix.Length], t);
            }
            else if (key.EndsWith(BSuffix, StringComparison.Ordinal) && key.Length > BSuffix.Length)
            {
                bOf.Add(key[..^BSuffix.Length], t);
            }
            else if (LoraVariant(file.Label, key) is Exception variant)
            {
                throw variant;
            }
            else if (SavedModule(config, key) is string module)
            {
                saved.Add(new SavedTensor(module, t, () => Reopen(path, stamp, $"saved tensor '{key}'", t)));
            }
            else
            {
                string listed = config.SavedModuleNames.Count == 0 ? "none" : string.Join(", ", config.SavedModuleNames);
                throw new NotSupportedException($"{file.Label}: tensor '{key}' is neither a LoRA factor nor part of a module in modules_to_save ({listed}) or an embedding layer PEFT saves ({string.Join(", ", EmbeddingLayers)}); trained biases are not supported");
            }
        }
        if (aOf.Count == 0 && bOf.Count == 0)
        {
            throw new InvalidDataException($"{file.Label}: holds no LoRA factors");
        }
        foreach (string module in bOf.Keys.Where(m => !aOf.ContainsKey(m)))
        {
            throw new InvalidDataException($"{file.Label}: module '{module}' has lora_B but no lora_A");
        }

        var modules = new List<KeyValuePair<string, LoraFactors>>(aOf.Count);
        foreach (var (module, a) in aOf)
        {
            if (!bOf.TryGetValue(module, out TensorInfo? b))
            {
                throw new InvalidDataException($"{file.Label}: module '{module}' has lora_A but no lora_B");
            }
            modules.Add(new(module, ReadFactors(config, configPath, file, module, a, b, lazy, precision)));
        }
        return (modules, saved);
    }

    private static LoraFactors ReadFactors(PeftLoraConfig config, string configPath, SafeTensorsFile file, string module, TensorInfo a, TensorInfo b, bool lazy,
        WeightPrecision precision)
    {
        string where = $"{file.Label}: module '{module}'";
        if (a.Rank > 2 || b.Rank > 2)
        {
            throw new NotSupportedException($"{where}: factors of shapes {a.ShapeText} and {b.ShapeText} are convolution LoRA, which is not supported");
        }
        if (a.Rank != 2 || b.Rank != 2)
        {
            throw new InvalidDataException($"{where}: lora_A {a.ShapeText} and lora_B {b.ShapeText} must both be matrices");
        }
        string baseName = BaseName(module);
        if (config.WhyNotTargeted(baseName) is string why)
        {
            throw new InvalidDataException($"{where}: PEFT would not adapt it under {configPath}: {why}");
        }
        int rank = config.RankFor(baseName);
        long r = a.Shape[0], dIn = a.Shape[1], dOut = b.Shape[0];
        if (r != rank || b.Shape[1] != rank)
        {
            throw new InvalidDataException($"{where}: lora_A {a.ShapeText} and lora_B {b.ShapeText} do not have the rank {rank} that {configPath} gives it (r, rank_pattern)");
        }
        if (dIn < 1 || dOut < 1 || r * dIn > Array.MaxLength || r * dOut > Array.MaxLength)
        {
            throw new InvalidDataException($"{where}: lora_A {a.ShapeText} and lora_B {b.ShapeText} have an empty or oversized dimension");
        }
        // Checked here, not only when decoding, so a lazy load rejects what an eager one would.
        foreach (TensorInfo t in new[] { a, b })
        {
            if (!TensorDTypes.IsFloatingPoint(t.DType))
            {
                throw new InvalidDataException($"{file.Label}: tensor '{t.Name}' has dtype {TensorDTypes.Name(t.DType)}; expected F32, F16 or BF16");
            }
            if (t.ByteCount > int.MaxValue)
            {
                throw new NotSupportedException($"{file.Label}: tensor '{t.Name}' ({t.ByteCount} bytes) is larger than one read can hold (2 GiB)");
            }
        }
        float scaling = config.ScalingFor(baseName), alpha = (float)config.AlphaFor(baseName);
        if (!lazy)
        {
            var (aValues, bTransposed) = Decode(file, a, b, rank, (int)dIn, (int)dOut, precision);
            return new LoraFactors(aValues, bTransposed, rank, (int)dIn, (int)dOut, scaling, alpha, a.DType, precision);
        }
        string path = file.Label;
        var stamp = file.Stamp!.Value;
        return new LoraFactors(() => DecodeLater(path, stamp, module, a, b, rank, (int)dIn, (int)dOut, precision), rank, (int)dIn, (int)dOut,
            scaling, alpha, a.DType, precision);
    }

    /// <summary>A into a pinned array and B transposed into another, at <paramref name="precision"/> (see <see cref="Load"/>).</summary>
    private static (Array A, Array BTransposed) Decode(SafeTensorsFile file, TensorInfo a, TensorInfo b, int rank, int dIn, int dOut, WeightPrecision precision)
    {
        if (precision == WeightPrecision.Float32)
        {
            float[] aValues = LoraFactors.AllocatePinned(rank * dIn);
            file.ReadSingles(a, aValues);
            return (aValues, LoraFactors.Transpose(file.ReadSingles(b), rank, dOut));
        }
        ushort[] aBits = GC.AllocateUninitializedArray<ushort>(rank * dIn, pinned: true);
        ReadBits(file, a, precision, aBits);
        var bBits = new ushort[dOut * rank];
        ReadBits(file, b, precision, bBits);
        return (aBits, WeightStorage.Transposed<ushort>(bBits, rank, dOut)); // a permutation of the bits: nothing is rounded
    }

    /// <summary>A tensor's 16-bit patterns at <paramref name="precision"/>: the file's own bytes when it holds that format, else rounded once from float32.</summary>
    private static void ReadBits(SafeTensorsFile file, TensorInfo tensor, WeightPrecision precision, Span<ushort> bits)
    {
        if (tensor.DType == WeightStorage.DType(precision))
        {
            file.ReadBytes(tensor, MemoryMarshal.AsBytes(bits));
        }
        else
        {
            WeightStorage.Round(file.ReadSingles(tensor), precision, bits);
        }
    }

    /// <summary>A lazy expert's first use of a module: open the file again and decode, if it is still the file that was validated.</summary>
    private static (Array A, Array BTransposed) DecodeLater(string path, (long, DateTime) stamp, string module, TensorInfo a, TensorInfo b,
        int rank, int dIn, int dOut, WeightPrecision precision)
    {
        using SafeTensorsFile file = Reopen(path, stamp, $"module '{module}'", a, b);
        return Decode(file, file.GetTensor(a.Name), file.GetTensor(b.Name), rank, dIn, dOut, precision);
    }

    /// <summary>Opens a weights file again for a later read of <paramref name="what"/>, if it is still the file that was validated.</summary>
    private static SafeTensorsFile Reopen(string path, (long, DateTime) stamp, string what, params TensorInfo[] entries)
    {
        string changed = $"{path}: changed since the adapter was loaded, so {what} cannot be read; load the library again";
        SafeTensorsFile file;
        try
        {
            file = SafeTensorsFile.Open(path);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new FileNotFoundException($"{path}: removed since the adapter was loaded, so {what} cannot be read", path, e);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{changed} ({e.Message})", e);
        }
        if (file.Stamp != stamp || !entries.All(x => file.TryGetTensor(x.Name, out TensorInfo? now) && SameEntry(x, now)))
        {
            file.Dispose();
            throw new InvalidDataException(changed);
        }
        return file;
    }

    private static bool SameEntry(TensorInfo x, TensorInfo y) =>
        x.DType == y.DType && x.Begin == y.Begin && x.End == y.End && x.Shape.SequenceEqual(y.Shape);

    /// <summary>The error for a tensor of a LoRA variant the engine does not implement, or null for any other tensor.</summary>
    private static Exception? LoraVariant(string label, string key)
    {
        if (key.Contains(".lora_magnitude_vector", StringComparison.Ordinal))
        {
            return new NotSupportedException($"{label}: tensor '{key}' is a DoRA magnitude vector; DoRA is not supported");
        }
        if (key.Contains(".lora_embedding_", StringComparison.Ordinal))
        {
            return new NotSupportedException($"{label}: tensor '{key}' is an embedding LoRA factor; embedding LoRA is not supported");
        }
        if (key.EndsWith(".lora_B.bias", StringComparison.Ordinal))
        {
            return new NotSupportedException($"{label}: tensor '{key}' is a LoRA bias; lora_bias is not supported");
        }
        if (key.Contains(".lora_A.", StringComparison.Ordinal) || key.Contains(".lora_B.", StringComparison.Ordinal))
        {
            return new InvalidDataException($"{label}: tensor '{key}' is not named '<module>.lora_A.weight' or '<module>.lora_B.weight' (PEFT's save_pretrained removes the adapter name)");
        }
        return null;
    }

    /// <summary>
    /// Writes an expert as a PEFT adapter directory PEFT can load: keys are <c>base_model.model.&lt;module&gt;.lora_A.weight</c>
    /// and <c>...lora_B.weight</c> (the prefix is added to module names that lack it); <c>r</c> and <c>lora_alpha</c> are the most
    /// common rank and alpha, with <c>rank_pattern</c> / <c>alpha_pattern</c> for the modules that differ;
    /// <c>target_modules</c> lists the modules by name; use_rslora is false, so alpha = s · r per module.
    /// The directory (and its parents) is created if needed; the adapter is replaced whole (see the remarks).
    /// </summary>
    /// <param name="directory">Target directory.</param>
    /// <param name="expert">The expert to write.</param>
    /// <param name="storage">F32, F16 or BF16 for the factors.</param>
    /// <param name="baseModelName">Optional <c>base_model_name_or_path</c>.</param>
    /// <remarks>
    /// A new directory is written under a temporary name and renamed into place, so it appears complete or not at
    /// all. Over an existing adapter, both files are first written in full under temporary names, then renamed over
    /// the old ones; only a failure between those two renames could leave new weights beside the old config.
    /// </remarks>
    public static void Write(string directory, Expert expert, TensorDType storage = TensorDType.F32, string? baseModelName = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(expert);
        var byBaseName = new Dictionary<string, LoraFactors>(StringComparer.Ordinal);
        foreach (var (module, f) in expert.Modules)
        {
            if (!byBaseName.TryAdd(BaseName(module), f))
            {
                throw new ArgumentException($"expert '{expert.Name}': modules '{BaseName(module)}' and '{ModelPrefix}{BaseName(module)}' would both be written as '{ModelPrefix}{BaseName(module)}'", nameof(expert));
            }
        }
        var writer = new SafeTensorsWriter();
        foreach (var (module, f) in byBaseName)
        {
            // Always under PEFT's prefix: PeftModel loads its state dict non-strictly, so keys without it would be skipped silently.
            writer.Add(ModelPrefix + module + ASuffix, f.A, [f.Rank, f.InputDim], storage);
            var b = new float[f.OutputDim * f.Rank];
            f.CopyB(b);
            writer.Add(ModelPrefix + module + BSuffix, b, [f.OutputDim, f.Rank], storage);
        }

        int r = MostCommon(byBaseName.Values.Select(f => f.Rank));
        double alpha = MostCommon(byBaseName.Values.Select(PlainAlpha));
        var rankPattern = byBaseName.Where(p => p.Value.Rank != r).ToDictionary(p => Regex.Escape(p.Key), p => p.Value.Rank);
        var alphaPattern = byBaseName.Where(p => PlainAlpha(p.Value) != alpha).ToDictionary(p => Regex.Escape(p.Key), p => PlainAlpha(p.Value));

        string json = ConfigJson(r, alpha, rankPattern, alphaPattern, [.. byBaseName.Keys.Order(StringComparer.Ordinal)], baseModelName);
        WriteDirectory(Path.GetFullPath(directory), writer, json);
    }

    /// <summary>
    /// Writes both files so that no reader sees half an adapter: a new directory is filled under a temporary name
    /// and renamed into place; in an existing one both files are written completely under temporary names first,
    /// then renamed over the old ones (the old adapter stays whole if anything fails before the renames).
    /// </summary>
    private static void WriteDirectory(string full, SafeTensorsWriter writer, string json)
    {
        string unique = $".{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        bool fresh = !Directory.Exists(full);
        string target = fresh ? full + unique : full;
        Directory.CreateDirectory(target);
        string weightsTemporary = Path.Combine(target, WeightsFileName + unique), configTemporary = Path.Combine(target, ConfigFileName + unique);
        try
        {
            using (var stream = new FileStream(weightsTemporary, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                writer.WriteTo(stream);
            }
            File.WriteAllText(configTemporary, json);
            File.Move(weightsTemporary, Path.Combine(target, WeightsFileName), overwrite: true);
            File.Move(configTemporary, Path.Combine(target, ConfigFileName), overwrite: true);
            if (fresh)
            {
                Directory.Move(target, full);
            }
        }
        catch (Exception e)
        {
            File.Delete(weightsTemporary);
            File.Delete(configTemporary);
            if (fresh && Directory.Exists(target))
            {
                Directory.Delete(target, recursive: true);
            }
            if (e is IOException or UnauthorizedAccessException)
            {
                // The user never named the temporary files: say which of their paths could not be written.
                string message = e.Message.Replace(weightsTemporary, Path.Combine(full, WeightsFileName)).Replace(configTemporary, Path.Combine(full, ConfigFileName)).Replace(target, full);
                throw new IOException($"{full}: the adapter could not be written ({message})", e);
            }
            throw;
        }
    }

    /// <summary>The lora_alpha that gives this scaling without rsLoRA: s · r, exact in float64, so alpha / r gives s back.</summary>
    private static double PlainAlpha(LoraFactors f) => (double)f.Scaling * f.Rank;

    private static T MostCommon<T>(IEnumerable<T> values) where T : notnull =>
        values.GroupBy(v => v).OrderByDescending(g => g.Count()).ThenBy(g => g.Key).First().Key;

    private static string ConfigJson(int r, double alpha, Dictionary<string, int> rankPattern, Dictionary<string, double> alphaPattern,
        string[] targetModules, string? baseModelName)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("peft_type", "LORA");
            w.WriteString("task_type", "CAUSAL_LM");
            if (baseModelName is null)
            {
                w.WriteNull("base_model_name_or_path");
            }
            else
            {
                w.WriteString("base_model_name_or_path", baseModelName);
            }
            w.WriteNumber("r", r);
            w.WriteNumber("lora_alpha", alpha);
            w.WriteNumber("lora_dropout", 0);
            w.WriteBoolean("use_rslora", false);
            w.WriteBoolean("use_dora", false);
            w.WriteBoolean("fan_in_fan_out", false);
            w.WriteString("bias", "none");
            w.WriteBoolean("inference_mode", true);
            w.WriteStartArray("target_modules");
            foreach (string m in targetModules)
            {
                w.WriteStringValue(m);
            }
            w.WriteEndArray();
            w.WriteStartObject("rank_pattern");
            foreach (var (k, v) in rankPattern.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                w.WriteNumber(k, v);
            }
            w.WriteEndObject();
            w.WriteStartObject("alpha_pattern");
            foreach (var (k, v) in alphaPattern.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                w.WriteNumber(k, v);
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray()) + "\n";
    }
}
