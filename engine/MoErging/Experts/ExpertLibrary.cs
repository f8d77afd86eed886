namespace MoErging.Experts;

/// <summary>
/// An ordered set of experts over the same base model. Experts are numbered in the order given; that
/// number is the expert id in every <see cref="Routing.RoutingDecision"/>. For every module, d_in and
/// d_out agree across the experts that adapt it; ranks may differ. Immutable and safe to share between threads.
/// </summary>
public sealed class ExpertLibrary
{
    private readonly Expert[] _experts;
    private readonly AdaptedModule[] _modules;
    private readonly Dictionary<string, AdaptedModule> _byName;

    /// <summary>Builds a library; throws naming the expert and module when shapes disagree.</summary>
    public ExpertLibrary(IEnumerable<Expert> experts)
        : this(experts, requireSameBaseModel: false)
    {
    }

    /// <summary>
    /// Builds a library; throws naming the expert and module when shapes disagree. Experts whose configs name
    /// different base models (<c>base_model_name_or_path</c>: hub ids compared without case, a bare legacy id the same
    /// as the one organisation's id ending in it, local paths unknown) are an error with <paramref name="requireSameBaseModel"/>,
    /// else a <see cref="Warnings">warning</see>: equal shapes do not make the same model (GPT-2 and DistilGPT-2 agree on every one).
    /// </summary>
    public ExpertLibrary(IEnumerable<Expert> experts, bool requireSameBaseModel)
    {
        ArgumentNullException.ThrowIfNull(experts);
        _experts = [.. experts];
        if (_experts.Length == 0)
        {
            throw new ArgumentException("an expert library needs at least one expert", nameof(experts));
        }
        var names = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int e = 0; e < _experts.Length; e++)
        {
            ArgumentNullException.ThrowIfNull(_experts[e], nameof(experts));
            if (!names.TryAdd(_experts[e].Name, e))
            {
                int other = names[_experts[e].Name];
                string where = _experts[e].Directory is string here && _experts[other].Directory is string there ? $" ({there} and {here})" : "";
                throw new ArgumentException($"experts {other} and {e} are both named '{_experts[e].Name}'{where}; give them distinct names", nameof(experts));
            }
        }
        var warnings = new List<string>();
        if (BaseModels.Mismatch(_experts) is string mismatch)
        {
            if (requireSameBaseModel)
            {
                throw new ArgumentException(mismatch, nameof(experts));
            }
            warnings.Add(mismatch + " (the shapes agree, so they load, but the results mix models)");
        }
        var saving = _experts.Where(x => x.SavedTensors.Count > 0).ToArray();
        if (saving.Length > 0)
        {
            string modules = string.Join(", ", saving.SelectMany(x => x.SavedTensors).Select(t => Formats.PeftAdapter.BaseName(t.Module)).Distinct().Order(StringComparer.Ordinal));
            warnings.Add($"{saving.Length} of {_experts.Length} experts carry modules saved whole ({modules}: modules_to_save, such as a classification head); LoRA forwards do not apply them");
        }
        (ArrowConfig, string? disagreement) = AgreedArrowConfig(_experts);
        if (disagreement is not null)
        {
            warnings.Add(disagreement);
        }
        if (ArrowConfig?.UseGks == true)
        {
            warnings.Add("the experts' arrow_config sets use_gks, but general knowledge subtraction needs the general experts, which the configs do not give: apply GeneralKnowledgeSubtraction with them (--general DIR... on the command line)");
        }
        Warnings = warnings;

        var moduleNames = _experts.SelectMany(x => x.Modules.Keys).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        _modules = new AdaptedModule[moduleNames.Length];
        _byName = new Dictionary<string, AdaptedModule>(StringComparer.Ordinal);
        for (int m = 0; m < moduleNames.Length; m++)
        {
            string name = moduleNames[m];
            var factors = new LoraFactors?[_experts.Length];
            int first = -1;
            for (int e = 0; e < _experts.Length; e++)
            {
                if (!_experts[e].Modules.TryGetValue(name, out LoraFactors? f))
                {
                    continue;
                }
                if (first < 0)
                {
                    first = e;
                }
                else if (f.InputDim != factors[first]!.InputDim || f.OutputDim != factors[first]!.OutputDim)
                {
                    LoraFactors g = factors[first]!;
                    throw new ArgumentException(
                        $"module '{name}': expert '{_experts[e].Name}' maps {f.InputDim} → {f.OutputDim} but expert '{_experts[first].Name}' maps {g.InputDim} → {g.OutputDim}",
                        nameof(experts));
                }
                factors[e] = f;
            }
            _modules[m] = new AdaptedModule(this, m, name, factors[first]!.InputDim, factors[first]!.OutputDim, factors);
            _byName.Add(name, _modules[m]);
        }
    }

    /// <summary>
    /// What a user should hear once about this library, each a line: experts trained on different base models,
    /// modules saved whole that LoRA forwards do not apply, experts that disagree on their Arrow defaults.
    /// </summary>
    public IReadOnlyList<string> Warnings { get; }

    /// <summary>
    /// The Arrow defaults the experts' PEFT <c>arrow_config</c>s agree on: each field is set only when every expert's
    /// config sets it to the same value (null when no field is agreed).
    /// </summary>
    public Formats.PeftArrowConfig? ArrowConfig { get; }

    private static (Formats.PeftArrowConfig?, string?) AgreedArrowConfig(Expert[] experts)
    {
        var configs = experts.Select(x => x.Config?.ArrowConfig).ToArray();
        if (configs.All(c => c is null))
        {
            return (null, null);
        }
        var disagreements = new List<string>();
        T? Agreed<T>(string field, Func<Formats.PeftArrowConfig, T?> get) where T : struct
        {
            var values = configs.Select(c => c is null ? null : get(c)).ToArray();
            var distinct = values.Where(v => v is not null).Distinct().ToArray();
            if (distinct.Length > 1)
            {
                disagreements.Add($"{field} ({string.Join(", ", distinct)})");
            }
            return distinct.Length == 1 && values.All(v => v is not null) ? distinct[0] : null;
        }
        int? topK = Agreed("top_k", c => c.TopK);
        float? temperature = Agreed("router_temperature", c => c.Temperature);
        bool? useGks = Agreed("use_gks", c => c.UseGks);
        string? message = disagreements.Count == 0 ? null
            : $"the experts' arrow_config values disagree on {string.Join(" and ", disagreements)}; the engine's own Arrow defaults apply to those";
        return (topK is null && temperature is null && useGks is null ? null : new Formats.PeftArrowConfig(topK, temperature, useGks), message);
    }

    /// <summary>The experts, by expert id.</summary>
    public IReadOnlyList<Expert> Experts => _experts;

    /// <summary>Number of experts (E).</summary>
    public int ExpertCount => _experts.Length;

    /// <summary>Every module adapted by at least one expert, in ordinal name order.</summary>
    public IReadOnlyList<AdaptedModule> Modules => _modules;

    /// <summary>
    /// Loads PEFT LoRA adapter directories as experts numbered in the order given, each named after its directory
    /// (lengthened to tell same-named directories apart; see <see cref="Load(IEnumerable{string}, ExpertLibraryOptions)"/>).
    /// All or nothing: the first bad directory throws, and no partial library is returned.
    /// </summary>
    /// <param name="directories">The adapter directories.</param>
    /// <param name="lazy">
    /// Validate every config, header, shape and dtype now, but decode each module's factors on its first use
    /// (memory is then taken only by the experts a forward or a merge touches). Lazy loading is still all or
    /// nothing: what an eager load would reject, a lazy one rejects here. A first use can fail only if a weights
    /// file changed or vanished after loading, with an error that says so.
    /// </param>
    public static ExpertLibrary Load(IEnumerable<string> directories, bool lazy) =>
        Load(directories, new ExpertLibraryOptions { Lazy = lazy });

    /// <summary>
    /// Loads PEFT LoRA adapter directories as experts numbered in the order given, eagerly, each named after its
    /// directory (<see cref="Load(IEnumerable{string}, ExpertLibraryOptions)"/> with default options).
    /// All or nothing: the first bad directory throws, and no partial library is returned.
    /// </summary>
    /// <param name="directories">The adapter directories.</param>
    public static ExpertLibrary Load(IEnumerable<string> directories) => Load(directories, new ExpertLibraryOptions());

    /// <summary>
    /// Loads PEFT LoRA adapter directories as experts numbered in the order given. All or nothing: the first bad
    /// directory throws, and no partial library is returned. An expert without a name in
    /// <see cref="ExpertLibraryOptions.Names"/> is named after its directory; directories of the same name
    /// (<c>run1/adapter</c>, <c>run2/adapter</c>) get the shortest path suffix that tells them apart.
    /// </summary>
    /// <exception cref="ArgumentException">Two explicit names collide (both directories are named), the same directory is given twice without names, or the base models differ under <see cref="ExpertLibraryOptions.RequireSameBaseModel"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An unknown <see cref="ExpertLibraryOptions.WeightPrecision"/>.</exception>
    public static ExpertLibrary Load(IEnumerable<string> directories, ExpertLibraryOptions options)
    {
        ArgumentNullException.ThrowIfNull(directories);
        ArgumentNullException.ThrowIfNull(options);
        WeightStorage.Check(options.WeightPrecision, nameof(options));
        string[] dirs = [.. directories];
        if (options.Names is { } given && given.Count != dirs.Length)
        {
            throw new ArgumentException($"{given.Count} names were given for {dirs.Length} directories; give one per directory (null for automatic)", nameof(options));
        }
        var experts = dirs.Select((d, i) => Expert.Load(d, options.Lazy, options.Names?[i], options.WeightPrecision)).ToArray();
        string[] names = ExpertNames.Unique(experts, options.Names);
        for (int e = 0; e < experts.Length; e++)
        {
            if (names[e] != experts[e].Name)
            {
                experts[e] = experts[e].Renamed(names[e]);
            }
        }
        return new ExpertLibrary(experts, options.RequireSameBaseModel);
    }

    /// <summary>
    /// Finds a module by its full name, or by a suffix that ends at a dot boundary ("q_proj",
    /// "layers.0.self_attn.q_proj"). A missing or ambiguous name throws, listing the candidates.
    /// </summary>
    public AdaptedModule Module(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (_byName.TryGetValue(name, out AdaptedModule? exact))
        {
            return exact;
        }
        string suffix = "." + name;
        var matches = _modules.Where(m => m.Name.EndsWith(suffix, StringComparison.Ordinal)).ToArray();
        if (matches.Length == 1)
        {
            return matches[0];
        }
        if (matches.Length == 0)
        {
            throw new KeyNotFoundException($"no module matches '{name}'; the library's modules are: {List(_modules)}");
        }
        throw new ArgumentException($"module name '{name}' is ambiguous; it matches: {List(matches)}", nameof(name));
    }

    /// <summary>Index of the expert with this name, or -1.</summary>
    public int IndexOf(string expertName) => Array.FindIndex(_experts, e => e.Name == expertName);

    private static string List(IReadOnlyList<AdaptedModule> modules)
    {
        const int shown = 20;
        string list = string.Join(", ", modules.Take(shown).Select(m => m.Name));
        return modules.Count > shown ? $"{list}, ... ({modules.Count} in all)" : list;
    }
}
