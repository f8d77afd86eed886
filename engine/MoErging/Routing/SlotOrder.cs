using System.Buffers;
using MoErging.Kernels;
using static MoErging.Kernels.SlotKeys;

namespace MoErging.Routing;

/// <summary>
/// Sorting and top-k selection of (expert, value) slots in the engine's one ordering (see
/// <see cref="SlotKeys"/>, shared with the gating kernel), without allocating.
/// </summary>
internal static class SlotOrder
{
    private const int InsertionLimit = 32;
    private const int StackKeys = 512;

    /// <summary>Sorts slots (expert ids with their values) into the ordering, in place, without allocating.</summary>
    public static void Sort(Span<int> experts, Span<float> values)
    {
        int n = experts.Length;
        if (n <= InsertionLimit)
        {
            for (int i = 1; i < n; i++)
            {
                int e = experts[i];
                float v = values[i];
                ulong key = Key(v, e);
                int j = i - 1;
                while (j >= 0 && Key(values[j], experts[j]) > key)
                {
                    experts[j + 1] = experts[j];
                    values[j + 1] = values[j];
                    j--;
                }
                experts[j + 1] = e;
                values[j + 1] = v;
            }
            return;
        }
        ulong[]? rented = n > StackKeys ? ArrayPool<ulong>.Shared.Rent(n) : null;
        Span<ulong> keys = rented is null ? stackalloc ulong[StackKeys] : rented;
        keys = keys[..n];
        for (int i = 0; i < n; i++)
        {
            keys[i] = Key(values[i], experts[i]);
        }
        keys.Sort();
        for (int i = 0; i < n; i++)
        {
            experts[i] = Expert(keys[i]);
            values[i] = Value(keys[i]);
        }
        if (rented is not null)
        {
            ArrayPool<ulong>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// Writes the <c>experts.Length</c> best of <paramref name="scores"/> (indexed by expert) in order,
    /// with their scores, without allocating.
    /// </summary>
    public static void SelectTopK(ReadOnlySpan<float> scores, Span<int> experts, Span<float> selected)
    {
        int k = experts.Length;
        int count = scores.Length;
        if (k <= InsertionLimit)
        {
            Span<ulong> best = stackalloc ulong[InsertionLimit];
            int filled = 0;
            for (int e = 0; e < count; e++)
            {
                ulong key = Key(scores[e], e);
                if (filled == k && key >= best[k - 1])
                {
                    continue;
                }
                int j = filled == k ? k - 1 : filled++;
                while (j > 0 && best[j - 1] > key)
                {
                    best[j] = best[j - 1];
                    j--;
                }
                best[j] = key;
            }
            for (int i = 0; i < k; i++)
            {
                experts[i] = Expert(best[i]);
                selected[i] = Value(best[i]);
            }
            return;
        }
        ulong[]? rented = count > StackKeys ? ArrayPool<ulong>.Shared.Rent(count) : null;
        Span<ulong> keys = rented is null ? stackalloc ulong[StackKeys] : rented;
        keys = keys[..count];
        for (int e = 0; e < count; e++)
        {
            keys[e] = Key(scores[e], e);
        }
        keys.Sort();
        for (int i = 0; i < k; i++)
        {
            experts[i] = Expert(keys[i]);
            selected[i] = Value(keys[i]);
        }
        if (rented is not null)
        {
            ArrayPool<ulong>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// In place: values (kept scores in decision order, so the first is the largest) become their softmax as the
    /// routing contract defines it and the gating kernel computes it: exp(v - v_0) / Σ exp(v_j - v_0).
    /// </summary>
    public static void Softmax(Span<float> values)
    {
        float top = values[0], sum = 0;
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = MathF.Exp(values[i] - top);
            sum += values[i];
        }
        for (int i = 0; i < values.Length; i++)
        {
            values[i] /= sum;
        }
    }
}
