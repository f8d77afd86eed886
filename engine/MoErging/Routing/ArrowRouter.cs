using System.Numerics.Tensors;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Numerics;

namespace MoErging.Routing;

/// <summary>
/// Arrow (zero-shot routing, no data): each expert's prototype is the unit top right singular vector of
/// its ΔW = B A for the module, computed exactly in float64 from the small r×r core (QR of both factors,
/// then an SVD), not by power iteration. score_e = |x · p_e| (x not normalised); top-k; softmax of the
/// kept scores / τ. Per module: each module has its own router.
/// </summary>
/// <remarks>
/// An expert whose ΔW is zero at the module (an untrained module: PEFT initialises B to zero, and adapters that froze
/// part of the model keep it so) has no direction; its prototype is the zero vector, so it scores 0, the least any
/// expert can score. It contributes nothing, and it takes a slot only when fewer than k experts score above 0 (ties at 0
/// follow the usual rule, lower id first).
/// </remarks>
public sealed class ArrowRouter : LinearRouter
{
    /// <summary>PEFT's defaults: top-3, temperature 1.</summary>
    public static readonly RoutingOptions DefaultOptions = new(TopK: 3, Temperature: 1f);

    /// <summary>Builds the router for one module of a library.</summary>
    /// <exception cref="ArgumentException">An expert does not adapt the module, or its factors hold a NaN or infinity.</exception>
    public ArrowRouter(AdaptedModule module, RoutingOptions options)
        : base(ComputePrototypes(module), module.InputDim, options, InputNormalization.None, ScoreFunction.AbsoluteValue)
    {
        Module = module;
    }

    /// <summary>
    /// The defaults for a library: the <c>top_k</c> and <c>router_temperature</c> its experts' PEFT <c>arrow_config</c>s
    /// agree on (<see cref="ExpertLibrary.ArrowConfig"/>), else <see cref="DefaultOptions"/>; top-k at most E.
    /// </summary>
    public static RoutingOptions DefaultOptionsFor(ExpertLibrary library)
    {
        ArgumentNullException.ThrowIfNull(library);
        return new RoutingOptions(
            RoutingContract.DefaultTopK(library.ArrowConfig?.TopK ?? DefaultOptions.TopK, library.ExpertCount),
            library.ArrowConfig?.Temperature ?? DefaultOptions.Temperature);
    }

    /// <summary>The module whose experts this router chooses among.</summary>
    public AdaptedModule Module { get; }

    internal override AdaptedModule BuiltFor => Module;

    /// <summary>
    /// Arrow prototypes of every expert for a module, row-major <c>[E, d_in]</c>, as float32, from the factors as the
    /// library holds them (16-bit factors widened exactly). An engine of a 16-bit precision rounds them once more, as it
    /// does every linear router's prototypes.
    /// </summary>
    public static float[] ComputePrototypes(AdaptedModule module)
    {
        ArgumentNullException.ThrowIfNull(module);
        int n = module.InputDim;
        var prototypes = new float[module.ExpertCount * n];
        var failures = new string?[module.ExpertCount]; // the lowest failing expert is reported, whatever the scheduling
        Parallel.For(0, module.ExpertCount, e =>
        {
            string expert = module.Library.Experts[e].Name;
            if (module.Factors(e) is not LoraFactors f)
            {
                failures[e] = $"Arrow needs every expert to adapt module '{module.Name}', but expert '{expert}' does not";
                return;
            }
            ReadOnlySpan<float> a = f.A, bTransposed = f.BTransposed; // factors as held, widened once if 16-bit
            if (!TensorPrimitives.IsFiniteAll(a) || !TensorPrimitives.IsFiniteAll(bTransposed))
            {
                failures[e] = $"expert '{expert}' has a NaN or infinite value in its factors for module '{module.Name}', so it has no Arrow prototype";
                return;
            }
            var vector = new double[n];
            // ΔW = 0 leaves the vector zero: the expert scores 0 (see the remarks).
            LowRank.TopRightSingularVector(a, bTransposed, f.Rank, f.InputDim, f.OutputDim, vector);
            for (int i = 0; i < n; i++)
            {
                prototypes[e * n + i] = (float)vector[i];
            }
        });
        if (failures.FirstOrDefault(f => f is not null) is string failure)
        {
            throw new ArgumentException(failure, nameof(module));
        }
        return prototypes;
    }
}
