using System.Text.Json;
using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Routing;

/// <summary>
/// A learned classifier router: w = softmax(W x + b) over the experts (dense by default; or the top k of
/// W x + b, renormalised), with W <c>[E, d_in]</c> and b <c>[E]</c> trained by softmax regression on
/// (hidden state, expert label) pairs from a routing dataset (<see cref="Train"/>). Not tied to a module:
/// one classifier can route every module of width d_in, or make one model-level decision that all modules
/// reuse. Saved as safetensors: <c>weight</c> <c>[E, d_in]</c> and <c>bias</c> <c>[E]</c> (F32), with the
/// expert names in the metadata.
/// </summary>
public sealed class ClassifierRouter : LinearRouter
{
    private const string WeightTensor = "weight";
    private const string BiasTensor = "bias";
    private const string ExpertsKey = "experts";
    private const string KindKey = "moerging_router";
    private const string Kind = "classifier";

    /// <summary>Creates a classifier router from its parameters.</summary>
    /// <param name="weight">W, row-major <c>[E, inputDim]</c>.</param>
    /// <param name="bias">b, <c>[E]</c>.</param>
    /// <param name="inputDim">d_in.</param>
    /// <param name="options">Top-k and temperature; null for dense routing (k = E) at temperature 1, plain softmax(W x + b).</param>
    /// <param name="expertNames">The experts' names in label order (E of them), kept with the router so a host can check them; or null.</param>
    public ClassifierRouter(ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, int inputDim, RoutingOptions? options = null,
        IReadOnlyList<string>? expertNames = null)
        : base(weight, inputDim, options ?? new RoutingOptions(bias.Length), InputNormalization.None, ScoreFunction.Identity, RequireBias(bias))
    {
        if (expertNames is not null && expertNames.Count != ExpertCount)
        {
            throw new ArgumentException($"{expertNames.Count} expert names for a classifier over {ExpertCount} experts", nameof(expertNames));
        }
        ExpertNames = expertNames?.ToArray();
    }

    /// <summary>The experts' names in label order, or null when not given.</summary>
    public IReadOnlyList<string>? ExpertNames { get; }

    /// <summary>How training went (null for a router built from given or loaded parameters).</summary>
    public ClassifierTrainingResult? Training { get; private init; }

    /// <summary>
    /// Trains W and b by softmax regression: minimises the mean cross-entropy of softmax(W x + b) against the
    /// labels plus λ/2 · |W|² (on standardised inputs), by full-batch gradient descent with a backtracking
    /// (Armijo) step, starting from zero, so the result is deterministic. Inputs are standardised per column
    /// for conditioning and the scaling is folded back into W and b, so the router scores raw rows.
    /// </summary>
    /// <param name="rows">Hidden states, row-major <c>[N, inputDim]</c>, N ≥ 1.</param>
    /// <param name="labels">The true expert of each row, in [0, expertCount).</param>
    /// <param name="inputDim">d_in.</param>
    /// <param name="expertCount">E.</param>
    /// <param name="training">Iterations, λ and tolerance; null for the defaults.</param>
    /// <param name="options">Routing options of the trained router; null for dense.</param>
    /// <param name="expertNames">The experts' names in label order, or null.</param>
    /// <exception cref="ArgumentException">Shapes that disagree, a label out of range, or a non-finite value; the message names the row.</exception>
    public static ClassifierRouter Train(ReadOnlySpan<float> rows, ReadOnlySpan<int> labels, int inputDim, int expertCount,
        ClassifierTrainingOptions? training = null, RoutingOptions? options = null, IReadOnlyList<string>? expertNames = null)
    {
        training ??= new ClassifierTrainingOptions();
        training.Validate();
        var fit = new SoftmaxRegression(rows, labels, inputDim, expertCount);
        ClassifierTrainingResult result = fit.Run(training);
        var (weight, bias) = fit.RawParameters();
        return new ClassifierRouter(weight, bias, inputDim, options, expertNames) { Training = result };
    }

    /// <summary>Writes the router as safetensors (atomically): <c>weight</c>, <c>bias</c>, and the expert names in the metadata.</summary>
    public void Save(string path)
    {
        var writer = new SafeTensorsWriter();
        writer.Metadata[KindKey] = Kind;
        if (ExpertNames is not null)
        {
            writer.Metadata[ExpertsKey] = JsonSerializer.Serialize([.. ExpertNames], NameListJson.Default.StringArray);
        }
        writer.Add(WeightTensor, Prototypes, [ExpertCount, InputDim]);
        writer.Add(BiasTensor, Bias, [ExpertCount]);
        writer.WriteTo(path);
    }

    /// <summary>Reads a router written by <see cref="Save"/>, routing densely.</summary>
    /// <param name="path">The safetensors file.</param>
    /// <exception cref="InvalidDataException">A missing tensor, shapes that disagree, or bad metadata; the message names the file.</exception>
    public static ClassifierRouter Load(string path) => Load(path, (RoutingOptions?)null);

    /// <summary>Reads a router written by <see cref="Save"/>.</summary>
    /// <param name="path">The safetensors file.</param>
    /// <param name="options">Top-k and temperature; null for dense routing.</param>
    /// <exception cref="InvalidDataException">A missing tensor, shapes that disagree, or bad metadata; the message names the file.</exception>
    public static ClassifierRouter Load(string path, RoutingOptions? options)
    {
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        if (!file.TryGetTensor(WeightTensor, out TensorInfo? weight) || !file.TryGetTensor(BiasTensor, out TensorInfo? bias))
        {
            throw new InvalidDataException($"{file.Label}: a classifier router needs tensors '{WeightTensor}' [E, d_in] and '{BiasTensor}' [E]");
        }
        if (weight.Rank != 2 || weight.Shape[0] < 1 || weight.Shape[1] < 1 || bias.Rank != 1 || bias.Shape[0] != weight.Shape[0])
        {
            throw new InvalidDataException($"{file.Label}: '{WeightTensor}' {weight.ShapeText} and '{BiasTensor}' {bias.ShapeText} must be [E, d_in] and [E]");
        }
        string[]? names = null;
        if (file.Metadata.TryGetValue(ExpertsKey, out string? json))
        {
            try
            {
                names = JsonSerializer.Deserialize(json, NameListJson.Default.StringArray);
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{file.Label}: metadata '{ExpertsKey}' is not a JSON array of names: {e.Message}");
            }
            if (names is null || names.Length != weight.Shape[0] || names.Any(string.IsNullOrEmpty))
            {
                throw new InvalidDataException($"{file.Label}: metadata '{ExpertsKey}' must list {weight.Shape[0]} non-empty expert names");
            }
        }
        float[] w = file.ReadSingles(weight), b = file.ReadSingles(bias);
        try
        {
            return new ClassifierRouter(w, b, (int)weight.Shape[1], options, names);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{file.Label}: {e.Message}");
        }
    }

    /// <summary>Reads a router written by <see cref="Save"/> and checks that it fits a module's library (<see cref="CheckFits"/>).</summary>
    /// <param name="path">The safetensors file.</param>
    /// <param name="module">The module it will route.</param>
    /// <param name="options">Top-k and temperature; null for dense routing.</param>
    /// <exception cref="InvalidDataException">A bad file, or a classifier for other experts or another width; the message names the file.</exception>
    public static ClassifierRouter Load(string path, AdaptedModule module, RoutingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(module);
        // Checked before the options apply, so a top-k beyond its experts reads as the misfit it is.
        ClassifierRouter classifier = Load(path);
        return classifier.Misfit(module) is string misfit ? throw new InvalidDataException($"{path}: {misfit}")
            : new ClassifierRouter(classifier.Prototypes, classifier.Bias, classifier.InputDim, options, classifier.ExpertNames);
    }

    /// <summary>
    /// Checks that the classifier routes this module's rows among its library's experts: one score per expert, rows of
    /// the module's d_in, and, when the classifier keeps the names it was trained for, the library's experts in the same order.
    /// </summary>
    /// <exception cref="ArgumentException">It does not fit; the message says how.</exception>
    public void CheckFits(AdaptedModule module)
    {
        ArgumentNullException.ThrowIfNull(module);
        if (Misfit(module) is string misfit)
        {
            throw new ArgumentException(misfit, nameof(module));
        }
    }

    /// <summary>How the classifier does not fit the module, or null when it does.</summary>
    private string? Misfit(AdaptedModule module)
    {
        ExpertLibrary library = module.Library;
        if (ExpertCount != library.ExpertCount || InputDim != module.InputDim)
        {
            return $"the classifier routes rows of {InputDim} among {ExpertCount} experts; module '{module.Name}' has d_in = {module.InputDim} and the library {library.ExpertCount} experts";
        }
        return ExpertNames is IReadOnlyList<string> names && !names.SequenceEqual(library.Experts.Select(e => e.Name))
            ? $"the classifier was trained for experts {string.Join(", ", names)}, not {string.Join(", ", library.Experts.Select(e => e.Name))} (in this order)"
            : null;
    }

    private static ReadOnlySpan<float> RequireBias(ReadOnlySpan<float> bias) =>
        bias.IsEmpty ? throw new ArgumentException("a classifier needs one bias per expert (at least one)", nameof(bias)) : bias;
}
