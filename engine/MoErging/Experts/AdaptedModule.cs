using MoErging.Kernels;

namespace MoErging.Experts;

/// <summary>
/// One adapted linear module of an <see cref="ExpertLibrary"/>: its shape and each expert's factors.
/// An expert that does not adapt this module has no factors here and adds nothing to its output.
/// </summary>
public sealed class AdaptedModule
{
    private readonly LoraFactors?[] _factors;

    internal AdaptedModule(ExpertLibrary library, int index, string name, int inputDim, int outputDim, LoraFactors?[] factors)
    {
        Library = library;
        Index = index;
        Name = name;
        InputDim = inputDim;
        OutputDim = outputDim;
        _factors = factors;
        int maxRank = 0;
        foreach (LoraFactors? f in factors)
        {
            maxRank = Math.Max(maxRank, f?.Rank ?? 0);
        }
        MaxRank = maxRank;
    }

    /// <summary>The library the module belongs to.</summary>
    public ExpertLibrary Library { get; }

    /// <summary>Position of the module in <see cref="ExpertLibrary.Modules"/>.</summary>
    public int Index { get; }

    /// <summary>Full module name.</summary>
    public string Name { get; }

    /// <summary>d_in: the width of the module's input rows.</summary>
    public int InputDim { get; }

    /// <summary>d_out: the width of the module's output rows.</summary>
    public int OutputDim { get; }

    /// <summary>Number of experts in the library (including those that do not adapt this module).</summary>
    public int ExpertCount => _factors.Length;

    /// <summary>The largest rank among the experts that adapt this module.</summary>
    public int MaxRank { get; }

    /// <summary>Expert <paramref name="expert"/>'s factors for this module, or null if it does not adapt it.</summary>
    public LoraFactors? Factors(int expert)
    {
        if ((uint)expert >= (uint)_factors.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(expert), expert, $"expert index must be in [0, {_factors.Length})");
        }
        return _factors[expert];
    }

    /// <summary>Factors of every expert, by expert index (null where an expert does not adapt the module).</summary>
    internal ReadOnlySpan<LoraFactors?> AllFactors => _factors;

    /// <summary>
    /// The factors a decision's slot (expert id, weight) adds at this module, or null when it adds nothing: the
    /// routing contract's <see cref="RoutingContract.Contributes"/>, which the kernels apply too.
    /// </summary>
    internal LoraFactors? Contributing(int expert, float weight) =>
        expert >= 0 && _factors[expert] is LoraFactors f && RoutingContract.Contributes(expert, weight, f.Rank) ? f : null;
}
