using MoErging.Experts;

namespace MoErging.Routing;

/// <summary>
/// Centroid routing (average activation; mttl's <c>AverageActivationSelector</c>, LoraRetriever-like): each
/// expert's centroid c_e is the mean of the module's input hidden states over samples of the expert's own
/// data. score_e = x · ĉ_e / sqrt(d_in) with ĉ_e = c_e / |c_e|; softmax over all experts (dense, k = E, the
/// default) or over the top k (softmax over all, then renormalising the top k, is the same function).
/// The prototypes are ĉ_e / sqrt(d_in), formed once in float64. Per token, per module.
/// </summary>
public sealed class CentroidRouter : LinearRouter
{
    /// <summary>The file an expert directory ships its centroids in.</summary>
    public const string CentroidFileName = "centroids.safetensors";

    /// <summary>Appended to a module's full name to name its centroid tensor (<c>[d_in]</c>).</summary>
    public const string CentroidSuffix = ".centroid";

    /// <summary>Builds the router for one module from every expert's centroid.</summary>
    /// <param name="module">The module routed.</param>
    /// <param name="centroids">c_e of every expert (any length but 0), row-major <c>[E, d_in]</c>, in expert order.</param>
    /// <param name="options">Top-k and temperature; null for dense routing (k = E) at temperature 1.</param>
    /// <exception cref="ArgumentException">A centroid is zero, so it has no direction.</exception>
    public CentroidRouter(AdaptedModule module, ReadOnlySpan<float> centroids, RoutingOptions? options = null)
        : base(CentroidPrototypes(module, centroids), module.InputDim, options ?? new RoutingOptions(module.ExpertCount), InputNormalization.None, ScoreFunction.Identity)
    {
        Module = module;
    }

    /// <summary>The module whose experts this router chooses among.</summary>
    public AdaptedModule Module { get; }

    internal override AdaptedModule BuiltFor => Module;

    /// <summary>
    /// Reads every expert's centroid for the module from <c>centroids.safetensors</c> in the directory the library
    /// loaded the expert from and builds a dense router (<see cref="Load(AdaptedModule, RoutingOptions?)"/> with null options).
    /// </summary>
    /// <param name="module">The module routed.</param>
    /// <exception cref="ArgumentException">An expert was built in memory, so it has no directory.</exception>
    /// <exception cref="FileNotFoundException">An expert has no centroid file; the message names it.</exception>
    /// <exception cref="InvalidDataException">A centroid is missing, not <c>[d_in]</c>, or not finite; the message names file and tensor.</exception>
    public static CentroidRouter Load(AdaptedModule module) => Load(module, (RoutingOptions?)null);

    /// <summary>
    /// Reads every expert's centroid for the module from <c>centroids.safetensors</c> in its directory
    /// (tensor <c>&lt;full module name&gt;.centroid</c>, <c>[d_in]</c>) and builds the router.
    /// </summary>
    /// <param name="module">The module routed.</param>
    /// <param name="expertDirectories">The experts' directories, in expert order.</param>
    /// <param name="options">Top-k and temperature; null for dense routing.</param>
    /// <exception cref="FileNotFoundException">An expert has no centroid file; the message names it.</exception>
    /// <exception cref="InvalidDataException">A centroid is missing, not <c>[d_in]</c>, or not finite; the message names file and tensor.</exception>
    public static CentroidRouter Load(AdaptedModule module, IReadOnlyList<string> expertDirectories, RoutingOptions? options = null) =>
        new(module, ExpertVectorFiles.Read(module, expertDirectories, CentroidFileName, CentroidSuffix, "centroid"), options);

    /// <summary>
    /// Reads every expert's centroid for the module from <c>centroids.safetensors</c> in the directory the library
    /// loaded the expert from (<see cref="Expert.Directory"/>) and builds the router.
    /// </summary>
    /// <param name="module">The module routed.</param>
    /// <param name="options">Top-k and temperature; null for dense routing.</param>
    /// <exception cref="ArgumentException">An expert was built in memory, so it has no directory.</exception>
    /// <exception cref="FileNotFoundException">An expert has no centroid file; the message names it.</exception>
    /// <exception cref="InvalidDataException">A centroid is missing, not <c>[d_in]</c>, or not finite; the message names file and tensor.</exception>
    public static CentroidRouter Load(AdaptedModule module, RoutingOptions? options) =>
        new(module, ExpertVectorFiles.Read(module, CentroidFileName, CentroidSuffix, "centroid"), options);

    /// <summary>Writes an expert's centroids, one <c>[d_in]</c> vector per module by full name, into its directory (atomically).</summary>
    public static void SaveCentroids(string expertDirectory, IReadOnlyDictionary<string, float[]> centroidsByModule) =>
        ExpertVectorFiles.Write(expertDirectory, CentroidFileName, CentroidSuffix, centroidsByModule);

    /// <summary>The centroid of sample rows (row-major <c>[N, d_in]</c>, N ≥ 1): their mean, accumulated in float64.</summary>
    /// <exception cref="ArgumentException">No rows, rows that are not whole rows of d_in, or a non-finite value.</exception>
    public static float[] Centroid(ReadOnlySpan<float> rows, int inputDim)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(inputDim, 1);
        if (rows.IsEmpty || rows.Length % inputDim != 0)
        {
            throw new ArgumentException($"{rows.Length} values are not one or more whole rows of d_in = {inputDim}", nameof(rows));
        }
        var sums = new double[inputDim];
        for (int i = 0; i < rows.Length; i++)
        {
            if (!float.IsFinite(rows[i]))
            {
                throw new ArgumentException($"row {i / inputDim}, column {i % inputDim} is {rows[i]}; sample rows must be finite", nameof(rows));
            }
            sums[i % inputDim] += rows[i];
        }
        int count = rows.Length / inputDim;
        return sums.Select(s => (float)(s / count)).ToArray();
    }

    private static float[] CentroidPrototypes(AdaptedModule module, ReadOnlySpan<float> centroids)
    {
        ArgumentNullException.ThrowIfNull(module);
        int n = module.InputDim, experts = module.ExpertCount;
        if (centroids.Length != experts * n)
        {
            throw new ArgumentException($"centroids must hold E × d_in = {experts} × {n} values, got {centroids.Length}", nameof(centroids));
        }
        var prototypes = new float[centroids.Length];
        for (int e = 0; e < experts; e++)
        {
            ReadOnlySpan<float> c = centroids.Slice(e * n, n);
            double squares = 0;
            foreach (float v in c)
            {
                squares += (double)v * v;
            }
            if (squares == 0 || !double.IsFinite(squares))
            {
                throw new ArgumentException($"the centroid of expert '{module.Library.Experts[e].Name}' for module '{module.Name}' is {(squares == 0 ? "zero, so it has no direction" : "not finite")}", nameof(centroids));
            }
            double scale = 1 / (Math.Sqrt(squares) * Math.Sqrt(n));
            for (int i = 0; i < n; i++)
            {
                prototypes[e * n + i] = (float)(c[i] * scale);
            }
        }
        return prototypes;
    }
}
