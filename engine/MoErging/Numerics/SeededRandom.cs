namespace MoErging.Numerics;

/// <summary>
/// The engine's one source of seeded randomness: SplitMix64 (Steele, Lea and Flood 2014), used counter-style
/// so any draw can be computed on its own, in any order, on any thread. A stream is a 64-bit key; its draw j
/// (j = 0, 1, ...) is the (j + 1)-th output of a SplitMix64 generator whose state starts at the key:
/// <c>Mix(key + (j + 1) · 0x9E3779B97F4A7C15)</c>. A uniform draw takes the top 53 bits:
/// <c>(Mix(...) &gt;&gt; 11) · 2⁻⁵³</c>, in [0, 1).
/// </summary>
public static class SeededRandom
{
    /// <summary>SplitMix64's increment (the golden ratio in 64-bit fixed point).</summary>
    public const ulong Gamma = 0x9E3779B97F4A7C15;

    /// <summary>SplitMix64's output function.</summary>
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
        return z ^ (z >> 31);
    }

    /// <summary>Draw <paramref name="index"/> of the stream <paramref name="key"/> as 64 random bits.</summary>
    public static ulong Bits(ulong key, long index) => Mix(key + (ulong)(index + 1) * Gamma);

    /// <summary>Draw <paramref name="index"/> of the stream <paramref name="key"/> as a uniform double in [0, 1).</summary>
    public static double Uniform(ulong key, long index) => (Bits(key, index) >> 11) * (1.0 / (1UL << 53));

    /// <summary>
    /// The key of a sub-stream: <c>Mix(key ^ Mix(part + Gamma))</c>. Keys are derived part by part
    /// (seed, then module, then expert, ...) so that streams for different parts do not overlap in practice.
    /// </summary>
    public static ulong Derive(ulong key, ulong part) => Mix(key ^ Mix(part + Gamma));

    /// <summary>A 64-bit FNV-1a hash of a string's UTF-16 code units: a stable key part for a name.</summary>
    public static ulong Hash(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        ulong h = 0xCBF29CE484222325;
        foreach (char c in text)
        {
            h = (h ^ c) * 0x100000001B3;
        }
        return h;
    }
}
