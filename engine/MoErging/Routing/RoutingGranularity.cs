namespace MoErging.Routing;

/// <summary>What one routing decision covers (the survey's routing input granularity).</summary>
public enum Granularity
{
    /// <summary>Each row (token) is routed on its own.</summary>
    Token,

    /// <summary>Rows are grouped into sequences; each sequence is routed once, on a pooled row, and all its rows get that decision.</summary>
    Example,

    /// <summary>The whole batch is routed once, on the mean of all its rows, and every row gets that decision.</summary>
    Task,
}

/// <summary>How an example's rows become the one row it is routed on.</summary>
public enum Pooling
{
    /// <summary>The mean of the sequence's rows.</summary>
    Mean,

    /// <summary>The sequence's last row (for a causal model, the one that has seen the whole sequence).</summary>
    Last,
}

/// <summary>
/// The routing granularity of a call: <see cref="Token"/> (the default), <see cref="Task"/>, or
/// <see cref="Example"/> with the sequence lengths of the batch (consecutive rows, summing to T) and the
/// pooling. Example and task decisions are still written one row per token, so a decision always applies
/// to the rows it was made for and can be reused at other modules (model-level routing).
/// </summary>
public sealed class RoutingGranularity
{
    private readonly int[] _lengths;

    private RoutingGranularity(Granularity kind, int[] lengths, Pooling pool)
    {
        Kind = kind;
        _lengths = lengths;
        Pool = pool;
    }

    /// <summary>Each token is routed on its own row.</summary>
    public static RoutingGranularity Token { get; } = new(Granularity.Token, [], Pooling.Mean);

    /// <summary>One decision for the whole batch, from the mean row.</summary>
    public static RoutingGranularity Task { get; } = new(Granularity.Task, [], Pooling.Mean);

    /// <summary>One decision per sequence, from its pooled row.</summary>
    /// <param name="sequenceLengths">Rows per sequence, in order; each at least 1, summing to the batch's T.</param>
    /// <param name="pool">Mean or last row.</param>
    /// <exception cref="ArgumentOutOfRangeException">A length below 1 (the message gives its index) or an unknown pooling.</exception>
    public static RoutingGranularity Example(ReadOnlySpan<int> sequenceLengths, Pooling pool = Pooling.Mean)
    {
        if (!Enum.IsDefined(pool))
        {
            throw new ArgumentOutOfRangeException(nameof(pool), pool, "unknown pooling");
        }
        for (int i = 0; i < sequenceLengths.Length; i++)
        {
            if (sequenceLengths[i] < 1)
            {
                throw new ArgumentOutOfRangeException(nameof(sequenceLengths), sequenceLengths[i], $"sequence {i} has length {sequenceLengths[i]}; every sequence needs at least one row");
            }
        }
        return new RoutingGranularity(Granularity.Example, sequenceLengths.ToArray(), pool);
    }

    /// <summary>Token, example or task.</summary>
    public Granularity Kind { get; }

    /// <summary>Rows per sequence (example granularity; empty otherwise).</summary>
    public ReadOnlySpan<int> SequenceLengths => _lengths;

    /// <summary>How a sequence's rows are pooled (example granularity).</summary>
    public Pooling Pool { get; }

    /// <summary>How many pooled rows a batch of <paramref name="tokens"/> rows routes; throws when the lengths do not sum to T.</summary>
    internal int Groups(int tokens)
    {
        switch (Kind)
        {
            case Granularity.Token:
                return tokens;
            case Granularity.Task:
                return tokens == 0 ? 0 : 1;
            default:
                long sum = 0;
                foreach (int length in _lengths)
                {
                    sum += length;
                }
                if (sum != tokens)
                {
                    throw new ArgumentException($"the sequence lengths sum to {sum} but x holds {tokens} rows", "sequenceLengths");
                }
                return _lengths.Length;
        }
    }

    /// <summary>
    /// Writes each group's pooled row of <paramref name="x"/> (<c>[T, n]</c>) into <paramref name="pooled"/>
    /// (<c>[groups, n]</c>); means accumulate in <paramref name="sums"/> (n values, the caller's, so a warm call allocates nothing).
    /// </summary>
    internal void PoolRows(ReadOnlySpan<float> x, int n, Span<float> pooled, Span<double> sums)
    {
        if (Kind == Granularity.Task)
        {
            Mean(x, n, pooled[..n], sums);
            return;
        }
        int start = 0;
        for (int s = 0; s < _lengths.Length; s++)
        {
            ReadOnlySpan<float> rows = x.Slice(start * n, _lengths[s] * n);
            Span<float> target = pooled.Slice(s * n, n);
            if (Pool == Pooling.Last)
            {
                rows[^n..].CopyTo(target);
            }
            else
            {
                Mean(rows, n, target, sums);
            }
            start += _lengths[s];
        }
    }

    /// <summary>Gives every row the decision of its group: <paramref name="groups"/> has one row per group.</summary>
    internal void Broadcast(RoutingDecision groups, RoutingDecision destination, int tokens)
    {
        destination.Reset(tokens, groups.TopK, groups.ExpertCount);
        int token = 0;
        for (int g = 0; g < groups.TokenCount; g++)
        {
            int length = Kind == Granularity.Task ? tokens : _lengths[g];
            for (int i = 0; i < length; i++, token++)
            {
                groups.ExpertIdsOf(g).CopyTo(destination.MutableIds(token));
                groups.WeightsOf(g).CopyTo(destination.MutableWeights(token));
            }
        }
    }

    /// <summary>Column means accumulated in float64 (sequences can be long), row by row, rounded once.</summary>
    private static void Mean(ReadOnlySpan<float> rows, int n, Span<float> target, Span<double> sums)
    {
        sums = sums[..n];
        sums.Clear();
        int count = rows.Length / n;
        for (int t = 0; t < count; t++)
        {
            ReadOnlySpan<float> row = rows.Slice(t * n, n);
            for (int i = 0; i < n; i++)
            {
                sums[i] += row[i];
            }
        }
        for (int i = 0; i < n; i++)
        {
            target[i] = (float)(sums[i] / count);
        }
    }
}
