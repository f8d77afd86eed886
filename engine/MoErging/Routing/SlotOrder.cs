using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
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
    private const int PassLimit = 8; // more slots than this: one pass per slot costs more than the keys
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
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SelectTopK(ReadOnlySpan<float> scores, Span<int> experts, Span<float> selected)
    {
        int k = experts.Length;
        int count = scores.Length;
        if (k <= PassLimit && k <= count && Vector256.IsHardwareAccelerated && SelectByPasses(scores, experts, selected))
        {
            return;
        }
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
    /// The top k as k vector passes, each the best slot after the last one taken in the ordering: its largest value v
    /// (a maximum over 8 lanes at a time), then the lowest expert holding v: per token a few dozen vector operations,
    /// where the keys cost one key and an unpredictable branch per score. -0 and +0 compare equal, as in
    /// <see cref="SlotKeys"/>.
    /// False, with nothing written, when a score is NaN: NaN's place in the ordering is the keys' business.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool SelectByPasses(ReadOnlySpan<float> scores, Span<int> experts, Span<float> selected)
    {
        int count = scores.Length, whole = count & ~(Vector256<float>.Count - 1);
        ref float first = ref MemoryMarshal.GetReference(scores);
        Vector256<int> lane = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7);
        Vector256<float> none = Vector256.Create(float.NegativeInfinity);
        float last = 0;
        int lastExpert = -1;
        for (int slot = 0; slot < experts.Length; slot++)
        {
            Vector256<float> lastValue = Vector256.Create(last), best = none;
            Vector256<int> lastIndex = Vector256.Create(lastExpert);
            Vector256<float> nan = Vector256<float>.Zero;
            for (int i = 0; i < whole; i += Vector256<float>.Count)
            {
                Vector256<float> v = Vector256.LoadUnsafe(ref first, (nuint)i);
                Vector256<float> eligible = Eligible(v, lastValue, lane + Vector256.Create(i), lastIndex, slot);
                best = Vector256.Max(best, Vector256.ConditionalSelect(eligible, v, none));
                if (slot == 0)
                {
                    nan |= ~Vector256.Equals(v, v);
                }
            }
            if (slot == 0 && nan != Vector256<float>.Zero)
            {
                return false;
            }
            float top = float.NegativeInfinity;
            for (int i = 0; i < Vector256<float>.Count; i++)
            {
                top = Math.Max(top, best[i]);
            }
            for (int e = whole; e < count; e++)
            {
                float v = scores[e];
                if (slot == 0 && float.IsNaN(v))
                {
                    return false;
                }
                if (Eligible(v, last, e, lastExpert, slot))
                {
                    top = Math.Max(top, v);
                }
            }
            // The lowest eligible expert holding the maximum (which, -0 and +0 being equal, may be either zero).
            int found = -1;
            Vector256<float> topValue = Vector256.Create(top);
            for (int i = 0; i < whole && found < 0; i += Vector256<float>.Count)
            {
                Vector256<float> v = Vector256.LoadUnsafe(ref first, (nuint)i);
                uint hits = (Eligible(v, lastValue, lane + Vector256.Create(i), lastIndex, slot) & Vector256.Equals(v, topValue)).ExtractMostSignificantBits();
                found = hits == 0 ? -1 : i + BitOperations.TrailingZeroCount(hits);
            }
            for (int e = whole; e < count && found < 0; e++)
            {
                float v = scores[e];
                found = v == top && Eligible(v, last, e, lastExpert, slot) ? e : -1;
            }
            experts[slot] = found;
            selected[slot] = top + 0f; // -0 becomes +0, as the keys make it
            (last, lastExpert) = (top, found);
        }
        return true;
    }

    /// <summary>Whether (v, expert) comes after (last, lastExpert) in the ordering; every slot does before the first is taken.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Eligible(float v, float last, int expert, int lastExpert, int slot) =>
        slot == 0 || v < last || (v == last && expert > lastExpert);

    /// <summary>The same for 8 lanes (experts <paramref name="index"/>), as a mask.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Eligible(Vector256<float> v, Vector256<float> last, Vector256<int> index, Vector256<int> lastExpert, int slot) =>
        slot == 0 ? Vector256<float>.AllBitsSet
            : Vector256.LessThan(v, last) | (Vector256.Equals(v, last) & Vector256.GreaterThan(index, lastExpert).AsSingle());

    /// <summary>
    /// In place: values (kept scores in decision order, so the first is the largest) become their softmax as the
    /// routing contract defines it and the gating kernel computes it: exp(v - v_0) / Σ exp(v_j - v_0).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
