using System.Diagnostics.CodeAnalysis;
using MoErging.Kernels;

namespace MoErging.Routing;

/// <summary>How a linear router normalises each input row before scoring.</summary>
public enum InputNormalization
{
    /// <summary>Score the row as it is (Arrow).</summary>
    None,

    /// <summary>LayerNorm without affine parameters, eps 1e-5 (PHATGOOSE).</summary>
    LayerNorm,

    /// <summary>Divide by the Euclidean norm (floored at 1e-12, as torch's normalize).</summary>
    L2,
}

/// <summary>The function applied to each dot product.</summary>
public enum ScoreFunction
{
    /// <summary>The dot product itself.</summary>
    Identity,

    /// <summary>Its absolute value (Arrow: a prototype's sign is arbitrary).</summary>
    AbsoluteValue,
}

/// <summary>
/// The shared shape of score-based routers: for a token x,
/// <c>score_e = f(norm(x) · p_e) / τ + b_e</c>, keep the top-k scores (ties to the lower index) and weight
/// them by a softmax over the kept scores. Softmax over all experts followed by renormalising the top-k
/// is the same function, so this one path serves Arrow, PHATGOOSE, centroid and classifier routers; each
/// is a small subclass that supplies its prototypes P <c>[E, d_in]</c>.
/// </summary>
public class LinearRouter : Router
{
    /// <summary>LayerNorm's epsilon (the routing contract's, which the gating kernel uses too).</summary>
    public const float LayerNormEpsilon = RoutingContract.LayerNormEpsilon;

    /// <summary>The floor of the norm in L2 normalisation (the routing contract's, which the gating kernel uses too).</summary>
    public const float L2Epsilon = RoutingContract.L2Epsilon;

    private readonly float[] _prototypes;
    private readonly float[] _bias;

    /// <summary>Creates a linear router.</summary>
    /// <param name="prototypes">P, row-major <c>[E, inputDim]</c>; E = prototypes.Length / inputDim.</param>
    /// <param name="inputDim">d_in.</param>
    /// <param name="options">Top-k and temperature.</param>
    /// <param name="normalization">Normalisation of x.</param>
    /// <param name="scoreFunction">f.</param>
    /// <param name="bias">b <c>[E]</c>, added after the temperature; empty for none.</param>
    [SuppressMessage("ApiDesign", "RS0022:Constructor make noninheritable base class inheritable", Justification = "Router's private protected constructor keeps its two families closed; a subclass of this one can add members but neither overrides nor sees anything protected, since Router has no protected or public virtual members.")]
    public LinearRouter(ReadOnlySpan<float> prototypes, int inputDim, RoutingOptions options,
        InputNormalization normalization = InputNormalization.None, ScoreFunction scoreFunction = ScoreFunction.Identity,
        ReadOnlySpan<float> bias = default)
        : base(ExpertsIn(prototypes, inputDim), options.TopK)
    {
        options.Validate(ExpertCount);
        if (!Enum.IsDefined(normalization))
        {
            throw new ArgumentOutOfRangeException(nameof(normalization), normalization, "unknown normalization");
        }
        if (!Enum.IsDefined(scoreFunction))
        {
            throw new ArgumentOutOfRangeException(nameof(scoreFunction), scoreFunction, "unknown score function");
        }
        if (!bias.IsEmpty && bias.Length != ExpertCount)
        {
            throw new ArgumentException($"bias must have one value per expert ({ExpertCount}), got {bias.Length}", nameof(bias));
        }
        CheckFinite(prototypes, "prototypes");
        CheckFinite(bias, "bias");
        InputDim = inputDim;
        Options = options;
        Normalization = normalization;
        ScoreFunction = scoreFunction;
        _prototypes = prototypes.ToArray();
        _bias = bias.ToArray();
    }

    /// <summary>d_in: the width of the rows this router scores.</summary>
    public int InputDim { get; }

    /// <summary>Top-k and temperature.</summary>
    public RoutingOptions Options { get; }

    /// <summary>Normalisation of x.</summary>
    public InputNormalization Normalization { get; }

    /// <summary>f.</summary>
    public ScoreFunction ScoreFunction { get; }

    /// <summary>P, row-major <c>[E, d_in]</c>.</summary>
    public ReadOnlySpan<float> Prototypes => _prototypes;

    /// <summary>b <c>[E]</c>, or empty.</summary>
    public ReadOnlySpan<float> Bias => _bias;

    private static int ExpertsIn(ReadOnlySpan<float> prototypes, int inputDim)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(inputDim, 1);
        if (prototypes.IsEmpty || prototypes.Length % inputDim != 0)
        {
            throw new ArgumentException($"prototypes must hold E × d_in values with E ≥ 1 and d_in = {inputDim}, got {prototypes.Length}", nameof(prototypes));
        }
        return prototypes.Length / inputDim;
    }

    private static void CheckFinite(ReadOnlySpan<float> values, string name)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                throw new ArgumentException($"{name}[{i}] is {values[i]}; router parameters must be finite", name);
            }
        }
    }
}
