using MoErging.Execution;
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
        : this(name, modules, null, null, [])
    {
    }

    internal Expert(string name, IEnumerable<KeyValuePair<string, LoraFactors>> modules, string? directory, PeftLoraConfig? config,
        IReadOnlyList<SavedTensor> savedTensors)
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
        Directory = directory;
        Config = config;
        SavedTensors = savedTensors;
    }

    /// <summary>
    /// The expert's name: for a PEFT adapter the one given, else its directory's name (which a library lengthens to the
    /// shortest path suffix that tells same-named directories apart, see <see cref="ExpertLibrary.Load(IEnumerable{string}, ExpertLibraryOptions)"/>).
    /// </summary>
    public string Name { get; }

    /// <summary>The full path of the adapter directory it was loaded from, or null for an expert built in memory.</summary>
    public string? Directory { get; }

    /// <summary>The adapter's parsed config, or null for an expert built in memory.</summary>
    public PeftLoraConfig? Config { get; }

    /// <summary>
    /// Tensors saved whole beside the LoRA factors (<c>modules_to_save</c>, such as a classification head), which LoRA
    /// forwards do not apply; empty when there are none.
    /// </summary>
    public IReadOnlyList<SavedTensor> SavedTensors { get; }

    /// <summary>The same expert under another name.</summary>
    public Expert Renamed(string name) => new(name, _modules, Directory, Config, SavedTensors);

    /// <summary>Adapted modules by full name.</summary>
    public IReadOnlyDictionary<string, LoraFactors> Modules => _modules;

    /// <summary>
    /// Loads a PEFT LoRA adapter directory, named <paramref name="name"/> or else after the directory. With
    /// <paramref name="lazy"/>, everything is validated now and the factors are decoded on first use; the factors are
    /// held at <paramref name="precision"/> (see <see cref="PeftAdapter.Load"/>).
    /// </summary>
    public static Expert Load(string directory, bool lazy = false, string? name = null, WeightPrecision precision = WeightPrecision.Float32) =>
        PeftAdapter.Load(directory, lazy, name, precision);
}
