using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>
/// The layouts real published adapters have (classification heads saved whole, PEFT's wrappers, same-named
/// directories, base models that agree on every shape, untrained modules, initialisations that changed the base
/// model, Arrow defaults in the config), and hostile files (FIFOs, devices, huge or badly encoded configs,
/// backtracking patterns, huge pattern tables), each written here in a temporary folder.
/// </summary>
public sealed partial class RealAdapterTests
{
    private const string Prefix = "base_model.model.";
    private const string Q0 = Prefix + "model.layers.0.self_attn.q_proj";

    private static string Config(string extra = "") =>
        "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\",\"dense\"]" + extra + "}";

    private static (float[] A, float[] B) AddFactors(SafeTensorsWriter w, TestData data, string module, int r = 4, int dIn = 6, int dOut = 6)
    {
        float[] a = data.Normal(r * dIn), b = data.Normal(dOut * r);
        w.Add(module + ".lora_A.weight", a, [r, dIn]);
        w.Add(module + ".lora_B.weight", b, [dOut, r]);
        return (a, b);
    }

    private static string Adapter(string dir, string config, Action<SafeTensorsWriter> fill) => PeftAdapterTests.WriteAdapter(dir, config, fill);

    // ------------------------------------------------------------------ classification heads

    [Fact]
    public void ClassificationHeadsAreKeptBesideTheLoraFactors()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        float[] classifier = data.Normal(3 * 6), pre = data.Normal(6 * 6);
        float[] bias = [1.5f, -2f, 0.25f]; // exact in BF16, so the values read back are these
        (float[] A, float[] B) q = default;
        // DistilBERT's layout: task_type SEQ_CLS and no modules_to_save listed, yet PEFT saved classifier and pre_classifier.
        string dir = Adapter(tmp.Sub("distilbert"), Config(",\"task_type\":\"SEQ_CLS\",\"modules_to_save\":null"), w =>
        {
            q = AddFactors(w, data, Q0);
            w.Add(Prefix + "classifier.weight", classifier, [3, 6]);
            w.Add(Prefix + "classifier.bias", bias, [3], TensorDType.BF16);
            w.Add(Prefix + "pre_classifier.weight", pre, [6, 6]);
        });
        Expert expert = Expert.Load(dir, lazy: true);
        Assert.Equal([Q0], expert.Modules.Keys);
        Assert.Equal(q.A, expert.Modules[Q0].A.ToArray());
        var saved = expert.SavedTensors.ToDictionary(t => t.Name);
        Assert.Equal([Prefix + "classifier.bias", Prefix + "classifier.weight", Prefix + "pre_classifier.weight"], saved.Keys.Order(StringComparer.Ordinal));
        SavedTensor head = saved[Prefix + "classifier.weight"];
        Assert.Equal(Prefix + "classifier", head.Module);
        Assert.Equal([3L, 6L], head.Shape);
        Assert.Equal(TensorDType.F32, head.DType);
        Assert.Equal(classifier, head.ReadSingles());
        Assert.Equal(TensorDType.BF16, saved[Prefix + "classifier.bias"].DType);
        Assert.Equal(bias, saved[Prefix + "classifier.bias"].ReadSingles());

        var library = new ExpertLibrary([expert]);
        string warning = Assert.Single(library.Warnings);
        Assert.Contains("classifier, pre_classifier", warning);
        Assert.Contains("LoRA forwards do not apply them", warning);

        // Read on demand, like lazy factors: a changed file is noticed, not misread.
        File.AppendAllText(Path.Combine(dir, PeftAdapter.WeightsFileName), "x");
        Assert.Contains("changed since the adapter was loaded", Assert.Throws<InvalidDataException>(() => head.ReadSingles()).Message);
    }

    [Fact]
    public void TensorsInsidePeftsWrapperAreSavedEvenWithLoraFactorsNestedInThem()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        // A RoBERTa-style head in PEFT's ModulesToSaveWrapper, with LoRA injected into both copies of its dense layer.
        string dir = Adapter(tmp.Sub("roberta"), Config(",\"task_type\":\"SEQ_CLS\",\"modules_to_save\":[\"classifier\"]"), w =>
        {
            AddFactors(w, data, Q0);
            w.Add(Prefix + "classifier.modules_to_save.default.out_proj.weight", data.Normal(12), [2, 6]);
            AddFactors(w, data, Prefix + "classifier.modules_to_save.default.dense");
            AddFactors(w, data, Prefix + "classifier.original_module.dense");
        });
        Expert expert = Expert.Load(dir);
        Assert.Equal([Q0], expert.Modules.Keys);
        Assert.Equal(5, expert.SavedTensors.Count);
        Assert.All(expert.SavedTensors, t => Assert.Equal(Prefix + "classifier", t.Module));
    }

    [Fact]
    public void HeadsWithSubmodulesAndSavedEmbeddingLayersAreKeptWhole()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        // RoBERTa's head as save_pretrained writes it (the wrapper segments removed): modules inside 'classifier'.
        string roberta = Adapter(tmp.Sub("roberta"), Config(",\"task_type\":\"SEQ_CLS\""), w =>
        {
            AddFactors(w, data, Q0);
            w.Add(Prefix + "classifier.dense.weight", data.Normal(36), [6, 6]);
            w.Add(Prefix + "classifier.dense.bias", data.Normal(6), [6]);
            w.Add(Prefix + "classifier.out_proj.weight", data.Normal(12), [2, 6]);
        });
        Expert head = Expert.Load(roberta);
        Assert.Equal(3, head.SavedTensors.Count);
        Assert.All(head.SavedTensors, t => Assert.Equal(Prefix + "classifier", t.Module));

        // A resized vocabulary: PEFT saves the embedding layers although modules_to_save lists none.
        string resized = Adapter(tmp.Sub("resized"), Config(",\"task_type\":\"CAUSAL_LM\""), w =>
        {
            AddFactors(w, data, Q0);
            w.Add(Prefix + "model.embed_tokens.weight", data.Normal(60), [10, 6]);
            w.Add(Prefix + "lm_head.weight", data.Normal(60), [10, 6]);
        });
        Assert.Equal([Prefix + "lm_head", Prefix + "model.embed_tokens"], Expert.Load(resized).SavedTensors.Select(t => t.Module).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void TensorsOfNoSavedModuleAreStillErrorsThatSayWhy()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = Adapter(tmp.Sub("stray"), Config(",\"task_type\":\"CAUSAL_LM\",\"modules_to_save\":[\"lm_head\"]"), w =>
        {
            AddFactors(w, data, Q0);
            w.Add(Prefix + "score.weight", data.Normal(12), [2, 6]);
        });
        var e = Assert.Throws<NotSupportedException>(() => Expert.Load(dir));
        Assert.Contains($"'{Prefix}score.weight' is neither a LoRA factor nor part of a module in modules_to_save (lm_head) or an embedding layer PEFT saves (embed_tokens, lm_head)", e.Message);
    }

    // ------------------------------------------------------------------ Conv1D (GPT-2)

    [Fact]
    public void Gpt2Conv1DAdaptersLoadWithFactorsInPeftsLayout()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        const string attention = Prefix + "transformer.h.0.attn.c_attn";
        (float[] A, float[] B) f = default;
        string dir = Adapter(tmp.Sub("gpt2"), "{\"r\":4,\"lora_alpha\":16,\"fan_in_fan_out\":true,\"target_modules\":[\"c_attn\"],\"base_model_name_or_path\":\"gpt2\"}",
            w => f = AddFactors(w, data, attention, 4, 8, 24));
        LoraFactors loaded = Expert.Load(dir).Modules[attention];
        Assert.Equal((8, 24, 4f), (loaded.InputDim, loaded.OutputDim, loaded.Scaling));
        var b = new float[24 * 4];
        loaded.CopyB(b);
        Assert.Equal(f.A, loaded.A.ToArray());
        Assert.Equal(f.B, b);
    }

    [Fact]
    public void InspectReportsEveryDirectoryItsSavedTensorsAndEachError()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string head = Adapter(tmp.Sub("cls/adapter"), Config(",\"task_type\":\"SEQ_CLS\""), w =>
        {
            AddFactors(w, data, Q0);
            w.Add(Prefix + "score.weight", data.Normal(12), [2, 6]);
        });
        string bad = Adapter(tmp.Sub("bad"), "{\"r\":4,\"init_lora_weights\":\"pissa\"}", w => AddFactors(w, data, Q0));
        string good = Adapter(tmp.Sub("good"), Config(), w => AddFactors(w, data, Q0));
        var (code, output, error) = CliTests.Run(["inspect", $"sentiment={head}", bad, good, tmp.Sub("missing")]);
        Assert.Equal(1, code);
        Assert.Contains($"sentiment  ({head})  1 module", output);
        Assert.Contains($"{Prefix}score.weight  F32  [2, 6]", output);
        Assert.Contains($"good  ({good})", output);
        Assert.Contains($"{bad}  error: ", output);
        Assert.Contains("init_lora_weights is 'pissa'", error);
        Assert.Contains($"{tmp.Sub("missing")}: no such directory", error);

        (code, output, _) = CliTests.Run(["inspect", head, bad, "--json"]);
        Assert.Equal(1, code);
        using var json = System.Text.Json.JsonDocument.Parse(output);
        var saved = json.RootElement[0].GetProperty("saved_tensors")[0];
        Assert.Equal(Prefix + "score", saved.GetProperty("module").GetString());
        Assert.Equal(2, saved.GetProperty("shape")[0].GetInt64());
        Assert.Equal("SEQ_CLS", json.RootElement[0].GetProperty("task_type").GetString());
        Assert.Contains("PiSSA", json.RootElement[1].GetProperty("error").GetString());
    }

    // ------------------------------------------------------------------ names

    [Fact]
    public void SameNamedDirectoriesGetTheShortestDistinguishingPathSuffix()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs =
        [
            Adapter(tmp.Sub("run1/adapter"), Config(), w => AddFactors(w, data, Q0)),
            Adapter(tmp.Sub("run2/adapter"), Config(), w => AddFactors(w, data, Q0)),
            Adapter(tmp.Sub("a/final/lora_model"), Config(), w => AddFactors(w, data, Q0)),
            Adapter(tmp.Sub("b/final/lora_model"), Config(), w => AddFactors(w, data, Q0)),
            Adapter(tmp.Sub("checkpoint-500"), Config(), w => AddFactors(w, data, Q0)),
        ];
        ExpertLibrary library = ExpertLibrary.Load(dirs);
        Assert.Equal(["run1/adapter", "run2/adapter", "a/final/lora_model", "b/final/lora_model", "checkpoint-500"], library.Experts.Select(e => e.Name));
        Assert.Equal(Path.GetFullPath(dirs[0]), library.Experts[0].Directory);

        var named = ExpertLibrary.Load(dirs[..2], new ExpertLibraryOptions { Names = ["math", null] });
        Assert.Equal(["math", "adapter"], named.Experts.Select(e => e.Name));

        var twice = Assert.Throws<ArgumentException>(() => ExpertLibrary.Load([dirs[0], dirs[0]]));
        Assert.Contains("cannot be told apart", twice.Message);
        Assert.Contains("give each a name of its own", twice.Message);
        Assert.Equal(["x", "y"], ExpertLibrary.Load([dirs[0], dirs[0]], new ExpertLibraryOptions { Names = ["x", "y"] }).Experts.Select(e => e.Name));

        var collide = Assert.Throws<ArgumentException>(() => ExpertLibrary.Load(dirs[..2], new ExpertLibraryOptions { Names = ["same", "same"] }));
        Assert.Contains("both named 'same'", collide.Message);
        Assert.Contains(Path.GetFullPath(dirs[0]), collide.Message);
        Assert.Contains(Path.GetFullPath(dirs[1]), collide.Message);
        Assert.Contains("control characters", Assert.Throws<ArgumentException>(() => Expert.Load(dirs[0], name: "bad\nname")).Message);
    }

    // ------------------------------------------------------------------ base models

    [Theory]
    [InlineData("gpt2", "distilgpt2", true)]
    [InlineData("distilgpt2", "distilbert/distilgpt2", false)]
    [InlineData("openai-community/gpt2", "GPT2", false)]
    [InlineData("Qwen/Qwen2.5-0.5B", "unsloth/Qwen2.5-0.5B", true)]
    [InlineData("/models/gpt2", "distilgpt2", false)]
    [InlineData("./checkpoints/base", "gpt2", false)]
    public void ExpertsOfDifferentBaseModelsWarnOrFailUnderStrict(string first, string second, bool differ)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs =
        [
            Adapter(tmp.Sub("one"), Config($",\"base_model_name_or_path\":\"{first}\""), w => AddFactors(w, data, Q0)),
            Adapter(tmp.Sub("two"), Config($",\"base_model_name_or_path\":\"{second}\""), w => AddFactors(w, data, Q0)),
        ];
        ExpertLibrary library = ExpertLibrary.Load(dirs);
        if (!differ)
        {
            Assert.Empty(library.Warnings);
            Assert.Equal(2, ExpertLibrary.Load(dirs, new ExpertLibraryOptions { RequireSameBaseModel = true }).ExpertCount);
            return;
        }
        string warning = Assert.Single(library.Warnings);
        Assert.Contains($"different base models: {first} (expert 'one'); {second} (expert 'two')", warning);
        var strict = Assert.Throws<ArgumentException>(() => ExpertLibrary.Load(dirs, new ExpertLibraryOptions { RequireSameBaseModel = true }));
        Assert.Contains("different base models", strict.Message);
    }

    [Fact]
    public void CommandsTakeNamedExpertsWarnAboutBaseModelsAndRefuseThemUnderStrict()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string gpt2 = Adapter(tmp.Sub("run1/adapter"), Config(",\"base_model_name_or_path\":\"gpt2\""), w => AddFactors(w, data, Q0));
        string distil = Adapter(tmp.Sub("run2/adapter"), Config(",\"base_model_name_or_path\":\"distilgpt2\""), w => AddFactors(w, data, Q0));
        var writer = new SafeTensorsWriter();
        writer.Add("x", data.Normal(3 * 6), [3, 6]);
        writer.WriteTo(tmp.Sub("in.safetensors"));
        string[] route = ["route", "--module", "q_proj", "--input", tmp.Sub("in.safetensors"), "--router", "arrow", "--json"];

        var (code, output, error) = CliTests.Run([.. route, "--experts", $"small={gpt2}", distil]);
        Assert.True(code == 0, error);
        Assert.Contains("moerge: warning: the experts were trained on different base models: gpt2 (expert 'small'); distilgpt2 (expert 'adapter')", error);
        Assert.Contains("\"small\"", output);

        (code, _, error) = CliTests.Run([.. route, "--experts", gpt2, distil]);
        Assert.True(code == 0, error);
        Assert.Contains("(expert 'run1/adapter'); distilgpt2 (expert 'run2/adapter')", error);

        (code, _, error) = CliTests.Run([.. route, "--experts", gpt2, distil, "--strict"]);
        Assert.Equal(1, code);
        Assert.StartsWith("moerge: error: the experts were trained on different base models", error);
    }

    // ------------------------------------------------------------------ untrained modules

    [Fact]
    public void AnUntrainedExpertNeverTakesASlotFromAnExpertWithSignal()
    {
        var data = new TestData();
        const string module = Prefix + "model.encoder.layers.0.fc1";
        var experts = new List<Expert>();
        for (int e = 0; e < 4; e++)
        {
            RawFactors f = data.Factors(2, 16, 8);
            // Expert 1 is PEFT's initialisation, never trained: lora_B is all zeros.
            float[] b = e == 1 ? new float[f.B.Length] : f.B;
            experts.Add(new Expert($"e{e}", [new(module, new LoraFactors(f.A, b, 2, 16, 8, 1f))]));
        }
        var library = new ExpertLibrary(experts);
        float[] prototypes = ArrowRouter.ComputePrototypes(library.Module(module));
        Assert.All(prototypes.AsSpan(16, 16).ToArray(), p => Assert.Equal(0f, p));

        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 1 });
        using Session session = engine.CreateSession();
        const int tokens = 64;
        float[] x = data.Normal(tokens * 16);
        foreach (int k in new[] { 1, 3, 4 })
        {
            var decision = new RoutingDecision();
            session.Route(library.Module(module), new ArrowRouter(library.Module(module), new RoutingOptions(k)), x, decision);
            for (int t = 0; t < tokens; t++)
            {
                int[] ids = decision.ExpertIdsOf(t).ToArray();
                // Three experts have signal: the untrained one is chosen only when k leaves no other expert.
                Assert.True(k == 4 ? ids.Contains(1) : !ids.Contains(1), $"{data}: k = {k}, token {t} got experts {string.Join(",", ids)}");
                if (k == 4)
                {
                    Assert.Equal(1, ids[^1]); // the lowest score, 0, takes the last slot
                }
            }
        }
    }

    // ------------------------------------------------------------------ config features

    [Theory]
    [InlineData("\"pissa\"", "PiSSA")]
    [InlineData("\"pissa_niter_16\"", "PiSSA")]
    [InlineData("\"olora\"", "OLoRA")]
    [InlineData("\"corda\"", "CorDA")]
    [InlineData("\"loftq\"", "LoftQ")]
    [InlineData("\"something_new\"", "does not know")]
    public void InitialisationsThatChangedTheBaseModelAreRefusedWithTheReason(string value, string phrase)
    {
        var e = Assert.Throws<NotSupportedException>(() => PeftLoraConfig.Parse($"{{\"r\":4,\"init_lora_weights\":{value}}}", "cfg"));
        Assert.Contains($"init_lora_weights is '{value.Trim('"')}'", e.Message);
        Assert.Contains(phrase, e.Message);
    }

    [Theory]
    [InlineData("true")]
    [InlineData("false")]
    [InlineData("\"gaussian\"")]
    [InlineData("\"orthogonal\"")]
    [InlineData("\"eva\"")]
    public void InitialisationsThatLeaveTheBaseModelAloneAreAccepted(string value) =>
        Assert.Equal(4, PeftLoraConfig.Parse($"{{\"r\":4,\"init_lora_weights\":{value}}}", "cfg").R);

    [Fact]
    public void BlockDiagonalLoraIsRefused() =>
        Assert.Contains("use_bdlora is set", Assert.Throws<NotSupportedException>(() => PeftLoraConfig.Parse("{\"r\":4,\"use_bdlora\":true}", "cfg")).Message);

    [Fact]
    public void ArrowConfigGivesTheLibrarysArrowDefaultsWhenEveryExpertAgrees()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string Arrow(int topK, double temperature) =>
            Config($",\"arrow_config\":{{\"top_k\":{topK},\"router_temperature\":{temperature.ToString(System.Globalization.CultureInfo.InvariantCulture)},\"use_gks\":false,\"task_adapter_names\":[\"a\"]}}");
        string[] agree = [.. Enumerable.Range(0, 3).Select(e => Adapter(tmp.Sub($"agree{e}"), Arrow(2, 0.5), w => AddFactors(w, data, Q0)))];
        ExpertLibrary library = ExpertLibrary.Load(agree);
        Assert.Equal(new PeftArrowConfig(2, 0.5f, false), library.ArrowConfig);
        Assert.Equal(new RoutingOptions(2, 0.5f), ArrowRouter.DefaultOptionsFor(library));
        Assert.Empty(library.Warnings);

        string odd = Adapter(tmp.Sub("odd"), Arrow(5, 0.5), w => AddFactors(w, data, Q0));
        ExpertLibrary mixed = ExpertLibrary.Load([.. agree, odd]);
        Assert.Equal(new PeftArrowConfig(null, 0.5f, false), mixed.ArrowConfig);
        Assert.Equal(new RoutingOptions(3, 0.5f), ArrowRouter.DefaultOptionsFor(mixed));
        Assert.Contains("disagree on top_k (2, 5)", Assert.Single(mixed.Warnings));

        // Without arrow_config: PEFT's top-3, at most E.
        string plain = Adapter(tmp.Sub("plain"), Config(), w => AddFactors(w, data, Q0));
        Assert.Equal(new RoutingOptions(1, 1f), ArrowRouter.DefaultOptionsFor(ExpertLibrary.Load([plain])));
        Assert.Contains("top_k must be at least 1", Assert.Throws<InvalidDataException>(() => PeftLoraConfig.Parse("{\"arrow_config\":{\"top_k\":0}}", "cfg")).Message);
        Assert.Contains("cfg: arrow_config.router_temperature must be at least", Assert.Throws<InvalidDataException>(() => PeftLoraConfig.Parse("{\"arrow_config\":{\"router_temperature\":1e-40}}", "cfg")).Message);
    }

    // ------------------------------------------------------------------ files that are not regular files

    [LibraryImport("libc", EntryPoint = "mkfifo", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int MakeFifo(string path, uint mode);

    /// <summary>Runs a load that must fail, failing the test (instead of hanging the suite) if it blocks.</summary>
    private static Exception FailsWithoutBlocking(Action load)
    {
        var task = Task.Run(load);
        Assert.True(((IAsyncResult)task).AsyncWaitHandle.WaitOne(TimeSpan.FromSeconds(30)), "the load blocked on a file that is not a regular file");
        Assert.True(task.IsFaulted, "the load succeeded");
        return Assert.Single(task.Exception!.InnerExceptions);
    }

    [Theory]
    [InlineData("weights")]
    [InlineData("config")]
    public void FifosAndDevicesWhereFilesAreExpectedAreRefusedAtOnce(string which)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "FIFOs and /dev/zero are Linux file-system objects");
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = Adapter(tmp.Sub("fifo"), Config(), w => AddFactors(w, data, Q0));
        string target = Path.Combine(dir, which == "weights" ? PeftAdapter.WeightsFileName : PeftAdapter.ConfigFileName);
        File.Delete(target);
        Assert.Equal(0, MakeFifo(target, 0x1B6));
        Exception fifo = FailsWithoutBlocking(() => Expert.Load(dir));
        Assert.IsType<InvalidDataException>(fifo);
        Assert.Contains($"{target}: is a FIFO", fifo.Message);

        File.Delete(target);
        File.CreateSymbolicLink(target, "/dev/zero");
        Exception device = FailsWithoutBlocking(() => Expert.Load(dir));
        Assert.Contains($"{target}: is a character device", device.Message);
        Assert.Contains("only regular files are read", device.Message);
    }

    [Fact]
    public void LazyFactorsWhoseFileBecameAFifoFailInsteadOfBlocking()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "FIFOs are Linux file-system objects");
        var data = new TestData();
        using var tmp = new TempDir();
        string dir = Adapter(tmp.Sub("lazy"), Config(), w => AddFactors(w, data, Q0));
        Expert expert = Expert.Load(dir, lazy: true);
        string weights = Path.Combine(dir, PeftAdapter.WeightsFileName);
        File.Delete(weights);
        Assert.Equal(0, MakeFifo(weights, 0x1B6));
        Exception e = FailsWithoutBlocking(() => expert.Modules[Q0].Load());
        Assert.Contains("is a FIFO", e.Message);
    }

    [Fact]
    public void SymbolicLinkLoopsAndHugeOrBadlyEncodedConfigsAreNamedErrors()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string loop = tmp.Sub("loop");
        File.CreateSymbolicLink(loop, tmp.Sub("loop2"));
        File.CreateSymbolicLink(tmp.Sub("loop2"), loop);
        var e = Assert.Throws<DirectoryNotFoundException>(() => Expert.Load(loop));
        Assert.Contains($"{loop}: is unreadable (too many levels of symbolic links)", e.Message);

        string dir = Adapter(tmp.Sub("config"), Config(), w => AddFactors(w, data, Q0));
        string config = Path.Combine(dir, PeftAdapter.ConfigFileName);
        using (FileStream big = File.Create(config))
        {
            big.SetLength(PeftLoraConfig.MaxConfigBytes + 1L); // sparse: nothing is written
        }
        var huge = Assert.Throws<InvalidDataException>(() => Expert.Load(dir));
        Assert.Contains($"{config}: is {PeftLoraConfig.MaxConfigBytes + 1L} bytes", huge.Message);

        File.WriteAllBytes(config, [.. Encoding.UTF8.GetPreamble(), .. Encoding.UTF8.GetBytes(Config())]);
        Assert.Contains("byte-order mark", Assert.Throws<InvalidDataException>(() => Expert.Load(dir)).Message);
        byte[] text = Encoding.UTF8.GetBytes(Config(",\"base_model_name_or_path\":\"caf\u00e9\""));
        text[Array.IndexOf(text, (byte)0xC3)] = 0xFF;
        File.WriteAllBytes(config, text);
        Assert.Contains($"{config}: is not valid UTF-8", Assert.Throws<InvalidDataException>(() => Expert.Load(dir)).Message);
    }

    // ------------------------------------------------------------------ patterns

    /// <summary>PEFT's lookup written plainly: the first key in order whose <c>(.*\.)?(key)$</c> matches, by the backtracking engine.</summary>
    private static int? ReferenceRank(IReadOnlyList<(Regex Key, int Value)> keys, string name) =>
        keys.FirstOrDefault(k => k.Key.IsMatch(name)) is { Key: not null } hit ? hit.Value : null;

    [Fact]
    public void TwentyThousandRankPatternKeysGivePeftsFirstMatch()
    {
        var data = new TestData();
        var keys = new List<KeyValuePair<string, int>>();
        // Regex keys placed among the plain ones, before and after the plain keys they overlap.
        keys.Add(new("layers\\.1[0-9]\\.self_attn\\.k_proj", 3));
        for (int i = 0; i < 20_000; i++)
        {
            keys.Add(new($"model.layers.{i}.self_attn.{(i % 2 == 0 ? "q_proj" : "v_proj")}", 1 + i % 64));
        }
        keys.Insert(7_000, new("model\\.layers\\.2\\d\\.self_attn\\.(q|v)_proj", 99));
        keys.Add(new("k_proj", 5));
        keys.Add(new("x.proj", 6)); // '.' is any character: matches "x_proj" too
        var json = new StringBuilder("{\"r\":8,\"rank_pattern\":{");
        json.AppendJoin(",", keys.Select(k => $"\"{k.Key.Replace("\\", "\\\\")}\":{k.Value}"));
        json.Append("}}");
        PeftLoraConfig config = PeftLoraConfig.Parse(json.ToString(), "cfg");
        var reference = keys.Select(k => (new Regex($@"^(.*\.)?({k.Key})$"), k.Value)).ToList();
        var names = new List<string> { "model.layers.15.self_attn.k_proj", "model.layers.25.self_attn.q_proj", "layers.3.x_proj", "x_proj", "q_proj", "model.layers.3.self_attn.o_proj" };
        for (int i = 0; i < 100; i++)
        {
            int layer = data.Rng.Next(21_000);
            names.Add($"{(data.Rng.Next(2) == 0 ? "" : "base.")}model.layers.{layer}.self_attn.{new[] { "q_proj", "v_proj", "k_proj" }[data.Rng.Next(3)]}");
        }
        foreach (string name in names)
        {
            Assert.True((ReferenceRank(reference, name) ?? 8) == config.RankFor(name), $"{data}: rank of '{name}'");
        }
    }

    [Fact]
    public void ConfigPatternsAreMatchedInLinearTime()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        // (a|aa)+b against a run of a's backtracks exponentially; the non-backtracking engine is linear.
        const string pattern = ".*\\\\.(a|aa)+b|.*";
        string run = new('a', 40);
        string dir = Adapter(tmp.Sub("redos"), $"{{\"r\":2,\"target_modules\":\"{pattern}\",\"rank_pattern\":{{\"(a|aa)+b\":3}}}}", w =>
        {
            for (int m = 0; m < 200; m++)
            {
                AddFactors(w, data, $"{Prefix}layer{m}.{run}", 2, 4, 4);
            }
        });
        Expert expert = Expert.Load(dir);
        Assert.Equal(200, expert.Modules.Count);
        Assert.All(expert.Modules.Values, f => Assert.Equal(2, f.Rank));
        Assert.True(ConfigRegex.Create("(a|aa)+b", "test").Options.HasFlag(RegexOptions.NonBacktracking));
        // What the linear engine lacks still works, under a time limit.
        Assert.True(ConfigRegex.IsMatch(ConfigRegex.Create("^(q)_\\1$", "test"), "q_q"));
    }

    [Fact]
    public void AMillionTargetModuleNamesAreLookedUpNotScanned()
    {
        var data = new TestData();
        var names = Enumerable.Range(0, 1_000_000).Select(i => $"m{i}").ToList();
        int picked = data.Rng.Next(names.Count);
        string json = "{\"r\":4,\"target_modules\":[" + string.Join(",", names.Select(n => $"\"{n}\"")) + "],\"exclude_modules\":[\"blocks.3.m" + picked + "\"]}";
        PeftLoraConfig config = PeftLoraConfig.Parse(json, "cfg");
        Assert.True(config.Targets($"blocks.1.m{picked}"));
        Assert.True(config.Targets($"m{picked}"));
        Assert.False(config.Targets($"blocks.3.m{picked}")); // excluded by its dotted suffix
        Assert.False(config.Targets($"blocks.1.xm{picked}")); // a suffix only at a dot
        Assert.False(config.Targets("blocks.1.m1000000"));
    }
}
