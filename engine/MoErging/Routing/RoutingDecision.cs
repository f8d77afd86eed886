namespace MoErging.Routing;

/// <summary>
/// The outcome of routing T tokens: for each token, <see cref="TopK"/> slots of (expert id, weight) in
/// descending weight, ties to the lower expert index; an empty slot has expert id -1 and weight 0 and
/// comes last. Row-major <c>[T, k]</c>. A decision made at one module can be read, kept and reused at
/// others (model-level routing). Reusable: its buffers grow to the largest batch seen and are then kept,
/// so routing into the same decision allocates nothing once warm. Not thread-safe.
/// </summary>
public sealed class RoutingDecision
{
    private int[] _ids = [];
    private float[] _weights = [];

    /// <summary>Creates an empty decision.</summary>
    public RoutingDecision()
    {
    }

    /// <summary>Creates an empty decision with room for <paramref name="tokens"/> × <paramref name="topK"/> slots.</summary>
    public RoutingDecision(int tokens, int topK)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfNegative(topK);
        Reserve(checked(tokens * topK));
    }

    /// <summary>T: tokens routed.</summary>
    public int TokenCount { get; private set; }

    /// <summary>k: slots per token.</summary>
    public int TopK { get; private set; }

    /// <summary>E: the number of experts ids refer to.</summary>
    public int ExpertCount { get; private set; }

    /// <summary>Expert id of every slot, row-major <c>[T, k]</c> (-1: empty slot).</summary>
    public ReadOnlySpan<int> ExpertIds => _ids.AsSpan(0, TokenCount * TopK);

    /// <summary>Weight of every slot, row-major <c>[T, k]</c>.</summary>
    public ReadOnlySpan<float> Weights => _weights.AsSpan(0, TokenCount * TopK);

    /// <summary>The slots' expert ids of one token.</summary>
    public ReadOnlySpan<int> ExpertIdsOf(int token) => _ids.AsSpan(CheckToken(token) * TopK, TopK);

    /// <summary>The slots' weights of one token.</summary>
    public ReadOnlySpan<float> WeightsOf(int token) => _weights.AsSpan(CheckToken(token) * TopK, TopK);

    /// <summary>
    /// Assigned routing (batched multi-tenant LoRA, no router): the host gives each token its expert ids and
    /// weights, row-major <c>[T, k]</c>. Id -1 marks an empty slot (the token uses fewer experts, or only the
    /// base model). Slots are stored in the decision order; repeated ids in one token are allowed and add up.
    /// </summary>
    /// <param name="expertIds">Ids in [-1, E), <c>[T, k]</c>.</param>
    /// <param name="weights">Finite weights, <c>[T, k]</c> (ignored for empty slots).</param>
    /// <param name="topK">k, at least 1.</param>
    /// <param name="expertCount">E, the number of experts ids refer to.</param>
    public void Assign(ReadOnlySpan<int> expertIds, ReadOnlySpan<float> weights, int topK, int expertCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(topK, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(expertCount, 1);
        if (expertIds.Length != weights.Length)
        {
            throw new ArgumentException($"expert ids ({expertIds.Length}) and weights ({weights.Length}) must have the same length", nameof(weights));
        }
        if (expertIds.Length % topK != 0)
        {
            throw new ArgumentException($"{expertIds.Length} expert ids do not make whole rows of k = {topK}", nameof(expertIds));
        }
        for (int i = 0; i < expertIds.Length; i++)
        {
            if (expertIds[i] < -1 || expertIds[i] >= expertCount)
            {
                throw new ArgumentOutOfRangeException(nameof(expertIds), expertIds[i], $"expert id at token {i / topK}, slot {i % topK} must be in [0, {expertCount}) or -1 for none");
            }
            if (expertIds[i] >= 0 && !float.IsFinite(weights[i]))
            {
                throw new ArgumentOutOfRangeException(nameof(weights), weights[i], $"weight at token {i / topK}, slot {i % topK} must be finite");
            }
        }
        int tokens = expertIds.Length / topK;
        Reset(tokens, topK, expertCount);
        expertIds.CopyTo(_ids);
        weights.CopyTo(_weights);
        for (int t = 0; t < tokens; t++)
        {
            Span<int> ids = _ids.AsSpan(t * topK, topK);
            Span<float> w = _weights.AsSpan(t * topK, topK);
            for (int s = 0; s < topK; s++)
            {
                if (ids[s] < 0)
                {
                    w[s] = 0;
                }
            }
            SlotOrder.Sort(ids, w);
        }
    }

    /// <summary>Sizes the decision for a new batch; keeps the buffers when they are large enough.</summary>
    internal void Reset(int tokens, int topK, int expertCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        Reserve(checked(tokens * topK));
        TokenCount = tokens;
        TopK = topK;
        ExpertCount = expertCount;
    }

    /// <summary>
    /// The error for a token whose router scores are not finite: a NaN or an infinity in its row of x, or a dot
    /// product beyond float32's range. Every backend reports it so, rather than returning NaN weights and arbitrary ids.
    /// </summary>
    internal static ArgumentException NonFiniteScores(int token) =>
        new($"token {token}: its router scores are not finite (its row of x holds a NaN or an infinity, or its scores divided by the temperature overflow float32); nothing was written to y", "x");

    /// <summary>Throws <see cref="NonFiniteScores"/> for the first token with a weight that is not finite (a device's selection turns such scores into NaN weights).</summary>
    internal void RequireFiniteWeights()
    {
        ReadOnlySpan<float> weights = Weights;
        for (int i = 0; i < weights.Length; i++)
        {
            if (!float.IsFinite(weights[i]))
            {
                throw NonFiniteScores(i / TopK);
            }
        }
    }

    /// <summary>Writable slots of one token, for the routers.</summary>
    internal Span<int> MutableIds(int token) => _ids.AsSpan(token * TopK, TopK);

    /// <summary>Writable weights of one token, for the routers.</summary>
    internal Span<float> MutableWeights(int token) => _weights.AsSpan(token * TopK, TopK);

    private void Reserve(int slots)
    {
        if (_ids.Length < slots)
        {
            _ids = new int[slots];
            _weights = new float[slots];
        }
    }

    private int CheckToken(int token) =>
        (uint)token < (uint)TokenCount ? token : throw new ArgumentOutOfRangeException(nameof(token), token, $"token must be in [0, {TokenCount})");
}
