using MoErging.Experts;
using MoErging.Kernels;

namespace MoErging.Routing;

/// <summary>
/// PHATGOOSE (Muqeeth et al. 2024): each expert ships, per module, the gate vector g_e its owner trained
/// (sigmoid(g_e · x) gating the expert's own LoRA). Routing: x̂ = LayerNorm(x), ĝ_e = LayerNorm(g_e)
/// (no affine, eps 1e-5), score_e = x̂ · ĝ_e / sqrt(d_in), softmax over all experts, keep the top k and
/// renormalise, which is the softmax over the top-k scores that <see cref="LinearRouter"/> computes.
/// The prototypes are ĝ_e / sqrt(d_in), formed once in float64; <see cref="RoutingOptions.Temperature"/>
/// divides on top (1 reproduces the paper). Per token, per module.
/// </summary>
public sealed class PhatgooseRouter : LinearRouter
{
    /// <summary>The file an expert directory ships its gates in.</summary>
    public const string GateFileName = "phatgoose_gates.safetensors";

    /// <summary>Appended to a module's full name to name its gate tensor (<c>[d_in]</c>).</summary>
    public const string GateSuffix = ".phatgoose_gate";

    /// <summary>The paper's defaults: top-2, temperature 1.</summary>
    public static readonly RoutingOptions DefaultOptions = new(TopK: 2, Temperature: 1f);

    /// <summary>The paper's defaults for a library of <paramref name="expertCount"/> experts: top-k at most E.</summary>
    public static RoutingOptions DefaultOptionsFor(int expertCount) =>
        DefaultOptions with { TopK = RoutingContract.DefaultTopK(DefaultOptions.TopK, expertCount) };

    /// <summary>Builds the router for one module from every expert's gate.</summary>
    /// <param name="module">The module routed.</param>
    /// <param name="gates">g_e of every expert, row-major <c>[E, d_in]</c>, in expert order.</param>
    /// <param name="options">Top-k and temperature (<see cref="DefaultOptions"/> is the paper's).</param>
    public PhatgooseRouter(AdaptedModule module, ReadOnlySpan<float> gates, RoutingOptions options)
        : base(GatePrototypes(module, gates), module.InputDim, options, InputNormalization.LayerNorm, ScoreFunction.Identity)
    {
        Module = module;
    }

    /// <summary>The module whose experts this router chooses among.</summary>
    public AdaptedModule Module { get; }

    internal override AdaptedModule BuiltFor => Module;

    /// <summary>
    /// Reads every expert's gate for the module from <c>phatgoose_gates.safetensors</c> in its directory
    /// (tensor <c>&lt;full module name&gt;.phatgoose_gate</c>, <c>[d_in]</c>) and builds the router.
    /// </summary>
    /// <param name="module">The module routed.</param>
    /// <param name="expertDirectories">The experts' directories, in expert order.</param>
    /// <param name="options">Top-k and temperature.</param>
    /// <exception cref="FileNotFoundException">An expert has no gate file; the message names it.</exception>
    /// <exception cref="InvalidDataException">A gate is missing, not <c>[d_in]</c>, or not finite; the message names file and tensor.</exception>
    public static PhatgooseRouter Load(AdaptedModule module, IReadOnlyList<string> expertDirectories, RoutingOptions options) =>
        new(module, ExpertVectorFiles.Read(module, expertDirectories, GateFileName, GateSuffix, "PHATGOOSE gate"), options);

    /// <summary>
    /// Reads every expert's gate for the module from <c>phatgoose_gates.safetensors</c> in the directory the library
    /// loaded the expert from (<see cref="Expert.Directory"/>) and builds the router.
    /// </summary>
    /// <param name="module">The module routed.</param>
    /// <param name="options">Top-k and temperature.</param>
    /// <exception cref="ArgumentException">An expert was built in memory, so it has no directory.</exception>
    /// <exception cref="FileNotFoundException">An expert has no gate file; the message names it.</exception>
    /// <exception cref="InvalidDataException">A gate is missing, not <c>[d_in]</c>, or not finite; the message names file and tensor.</exception>
    public static PhatgooseRouter Load(AdaptedModule module, RoutingOptions options) =>
        new(module, ExpertVectorFiles.Read(module, GateFileName, GateSuffix, "PHATGOOSE gate"), options);

    /// <summary>Writes an expert's gates, one <c>[d_in]</c> vector per module by full name, into its directory (atomically).</summary>
    public static void SaveGates(string expertDirectory, IReadOnlyDictionary<string, float[]> gatesByModule) =>
        ExpertVectorFiles.Write(expertDirectory, GateFileName, GateSuffix, gatesByModule);

    private static float[] GatePrototypes(AdaptedModule module, ReadOnlySpan<float> gates)
    {
        ArgumentNullException.ThrowIfNull(module);
        int n = module.InputDim, experts = module.ExpertCount;
        if (gates.Length != experts * n)
        {
            throw new ArgumentException($"gates must hold E × d_in = {experts} × {n} values, got {gates.Length}", nameof(gates));
        }
        var prototypes = new float[gates.Length];
        double inverseRoot = 1 / Math.Sqrt(n);
        for (int e = 0; e < experts; e++)
        {
            ReadOnlySpan<float> g = gates.Slice(e * n, n);
            double mean = 0, variance = 0;
            foreach (float v in g)
            {
                mean += v;
            }
            mean /= n;
            foreach (float v in g)
            {
                variance += (v - mean) * (v - mean);
            }
            double scale = inverseRoot / Math.Sqrt(variance / n + LayerNormEpsilon);
            for (int i = 0; i < n; i++)
            {
                prototypes[e * n + i] = (float)((g[i] - mean) * scale);
            }
        }
        return prototypes;
    }
}
