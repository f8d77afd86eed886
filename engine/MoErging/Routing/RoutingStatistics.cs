using System.Text.Json;
using MoErging.Kernels;

namespace MoErging.Routing;

/// <summary>
/// What a routing decision did: per expert, its load (slots that use it), weight mass and top-1 count; over
/// the tokens, the mean entropy of the weights and the mean share of the top slot. A slot counts when it
/// names an expert and its weight is not 0. Entropy is of each token's |w| normalised to sum 1 over its
/// slots, in nats (at most ln k); negative weights (fixed task weights) count by magnitude.
/// </summary>
public sealed class RoutingStatistics
{
    private readonly int[] _load;
    private readonly double[] _weight;
    private readonly int[] _topOne;

    private RoutingStatistics(int tokens, int topK, int experts, int[] load, double[] weight, int[] topOne, double entropy, double topOneWeight)
    {
        TokenCount = tokens;
        TopK = topK;
        ExpertCount = experts;
        _load = load;
        _weight = weight;
        _topOne = topOne;
        MeanEntropy = entropy;
        MeanTopOneWeight = topOneWeight;
    }

    /// <summary>T.</summary>
    public int TokenCount { get; }

    /// <summary>k.</summary>
    public int TopK { get; }

    /// <summary>E.</summary>
    public int ExpertCount { get; }

    /// <summary>Slots per expert.</summary>
    public IReadOnlyList<int> Load => _load;

    /// <summary>Σ of the expert's weights over the tokens.</summary>
    public IReadOnlyList<double> WeightMass => _weight;

    /// <summary>Tokens whose top slot is the expert.</summary>
    public IReadOnlyList<int> TopOneCount => _topOne;

    /// <summary>Mean over tokens of the entropy of |w| / Σ|w| (nats; tokens with no weight count 0).</summary>
    public double MeanEntropy { get; }

    /// <summary>ln k: the entropy of k equal weights, the most a token can have.</summary>
    public double MaxEntropy => Math.Log(Math.Max(1, TopK));

    /// <summary>Mean over tokens of |w_top| / Σ|w|: 1 when each token leans on one expert, 1/k when spread evenly.</summary>
    public double MeanTopOneWeight { get; }

    /// <summary>Experts no slot uses.</summary>
    public int UnusedExperts => _load.Count(l => l == 0);

    /// <summary>Computes the statistics of a decision.</summary>
    public static RoutingStatistics Of(RoutingDecision decision)
    {
        ArgumentNullException.ThrowIfNull(decision);
        int tokens = decision.TokenCount, k = decision.TopK, experts = decision.ExpertCount;
        var load = new int[experts];
        var weight = new double[experts];
        var topOne = new int[experts];
        double entropy = 0, topOneWeight = 0;
        for (int t = 0; t < tokens; t++)
        {
            ReadOnlySpan<int> ids = decision.ExpertIdsOf(t);
            ReadOnlySpan<float> w = decision.WeightsOf(t);
            double total = 0;
            for (int s = 0; s < k; s++)
            {
                if (RoutingContract.Counts(ids[s], w[s]))
                {
                    load[ids[s]]++;
                    weight[ids[s]] += w[s];
                    total += Math.Abs(w[s]);
                }
            }
            if (total == 0)
            {
                continue;
            }
            if (RoutingContract.Counts(ids[0], w[0]))
            {
                topOne[ids[0]]++;
                topOneWeight += Math.Abs(w[0]) / total;
            }
            for (int s = 0; s < k; s++)
            {
                double p = RoutingContract.Counts(ids[s], w[s]) ? Math.Abs(w[s]) / total : 0;
                entropy -= p > 0 ? p * Math.Log(p) : 0;
            }
        }
        return new RoutingStatistics(tokens, k, experts, load, weight, topOne,
            tokens == 0 ? 0 : entropy / tokens, tokens == 0 ? 0 : topOneWeight / tokens);
    }

    /// <summary>Writes the statistics as one JSON object, with expert names when given (E of them).</summary>
    public void WriteJson(Utf8JsonWriter writer, IReadOnlyList<string>? expertNames = null)
    {
        ArgumentNullException.ThrowIfNull(writer);
        if (expertNames is not null && expertNames.Count != ExpertCount)
        {
            throw new ArgumentException($"{expertNames.Count} names for {ExpertCount} experts", nameof(expertNames));
        }
        writer.WriteStartObject();
        writer.WriteNumber("tokens", TokenCount);
        writer.WriteNumber("top_k", TopK);
        writer.WriteNumber("experts", ExpertCount);
        writer.WriteNumber("unused_experts", UnusedExperts);
        writer.WriteNumber("mean_entropy", MeanEntropy);
        writer.WriteNumber("max_entropy", MaxEntropy);
        writer.WriteNumber("mean_top1_weight", MeanTopOneWeight);
        writer.WriteStartArray("per_expert");
        for (int e = 0; e < ExpertCount; e++)
        {
            writer.WriteStartObject();
            writer.WriteNumber("id", e);
            if (expertNames is not null)
            {
                writer.WriteString("name", expertNames[e]);
            }
            writer.WriteNumber("load", _load[e]);
            writer.WriteNumber("weight", _weight[e]);
            writer.WriteNumber("top1", _topOne[e]);
            writer.WriteNumber("top1_share", TokenCount == 0 ? 0 : (double)_topOne[e] / TokenCount);
            writer.WriteEndObject();
        }
        writer.WriteEndArray();
        writer.WriteEndObject();
    }
}
