using MoErging.Formats;

namespace MoErging.Experts;

/// <summary>
/// One independently fine-tuned expert: a name and, per adapted linear module, its LoRA factors.
/// Module names are the full names PEFT writes, for example
/// <c>base_model.model.model.layers.0.self_attn.q_proj</c>.
/// </summary>
public sealed class Expert
{
    private readonly Dictionary<string, LoraFactors> _modules;

    /// <summary>Creates an expert from its modules (at least one).</summary>
    public Expert(string name, IEnumerable<KeyValuePair<string, LoraFactors>> modules)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(modules);
        _modules = new Dictionary<string, LoraFactors>(StringComparer.Ordinal);
        foreach (var (module, factors) in modules)
        {
            ArgumentException.ThrowIfNullOrEmpty(module, nameof(modules));
            ArgumentNullException.ThrowIfNull(factors, nameof(modules));
            if (!_modules.TryAdd(module, factors))
            {
                throw new ArgumentException($"expert '{name}': module '{module}' appears twice", nameof(modules));
            }
        }
        if (_modules.Count == 0)
        {
            throw new ArgumentException($"expert '{name}' adapts no module", nameof(modules));
        }
        Name = name;
    }

    /// <summary>The expert's name (for a PEFT adapter, its directory's name).</summary>
    public string Name { get; }

    /// <summary>Adapted modules by full name.</summary>
    public IReadOnlyDictionary<string, LoraFactors> Modules => _modules;

    /// <summary>
    /// Loads a PEFT LoRA adapter directory; the directory's name becomes the expert's name. With
    /// <paramref name="lazy"/>, everything is validated now and the factors are decoded on first use
    /// (see <see cref="PeftAdapter.Load"/>).
    /// </summary>
    public static Expert Load(string directory, bool lazy = false) => PeftAdapter.Load(directory, lazy);
}
