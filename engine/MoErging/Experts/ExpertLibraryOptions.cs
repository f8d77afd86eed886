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
}
