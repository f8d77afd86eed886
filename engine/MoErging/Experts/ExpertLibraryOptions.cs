using MoErging.Execution;

namespace MoErging.Experts;

/// <summary>Options for <see cref="ExpertLibrary.Load(IEnumerable{string}, ExpertLibraryOptions)"/>.</summary>
public sealed record ExpertLibraryOptions
{
    /// <summary>Validate everything now but decode each module's factors on first use (see <see cref="ExpertLibrary.Load(IEnumerable{string}, bool)"/>).</summary>
    public bool Lazy { get; init; }

    /// <summary>The experts' names, one per directory in order; a null entry (or a null list) names that expert after its directory.</summary>
    public IReadOnlyList<string?>? Names { get; init; }

    /// <summary>Refuse experts whose configs name different base models, instead of warning (<see cref="ExpertLibrary.Warnings"/>).</summary>
    public bool RequireSameBaseModel { get; init; }

    /// <summary>
    /// How the library holds the factors in memory (default float32). Load it at the precision of the engines that will
    /// use it: an engine converts factors of another precision into a copy of its own (a GPU per module as it uploads it,
    /// the CPU per expert the first time a forward runs it, as it packs the expert for its kernels). Factors
    /// stored in the file in that very format are kept bit for bit;
    /// others are rounded to nearest, ties to even, once (see <see cref="Formats.PeftAdapter.Load"/>).
    /// </summary>
    public WeightPrecision WeightPrecision { get; init; } = WeightPrecision.Float32;
}
