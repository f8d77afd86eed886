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
                throw new ArgumentException($"experts {names[_experts[e].Name]} and {e} are both named '{_experts[e].Name}'", nameof(experts));
            }
        }

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

    /// <summary>The experts, by expert id.</summary>
    public IReadOnlyList<Expert> Experts => _experts;

    /// <summary>Number of experts (E).</summary>
    public int ExpertCount => _experts.Length;

    /// <summary>Every module adapted by at least one expert, in ordinal name order.</summary>
    public IReadOnlyList<AdaptedModule> Modules => _modules;

    /// <summary>
    /// Loads PEFT LoRA adapter directories as experts numbered in the order given. All or nothing:
    /// the first bad directory throws, and no partial library is returned.
    /// </summary>
    /// <param name="directories">The adapter directories.</param>
    /// <param name="lazy">
    /// Validate every config, header, shape and dtype now, but decode each module's factors on its first use
    /// (memory is then taken only by the experts a forward or a merge touches). Lazy loading is still all or
    /// nothing: what an eager load would reject, a lazy one rejects here. A first use can fail only if a weights
    /// file changed or vanished after loading, with an error that says so. Eager (false) is the default.
    /// </param>
    public static ExpertLibrary Load(IEnumerable<string> directories, bool lazy = false)
    {
        ArgumentNullException.ThrowIfNull(directories);
        return new ExpertLibrary(directories.Select(d => Expert.Load(d, lazy)).ToArray());
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
