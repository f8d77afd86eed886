using ILGPU;

namespace MoErging.Kernels;

/// <summary>
/// The one ordering of (expert, value) slots, shared by the CPU backend and the gating kernel: value
/// descending, ties to the lower expert index, NaN after every number, empty slots (expert -1) last.
/// A value and its expert pack into a 64-bit key whose ascending order is that ordering, so top-k
/// selection is an integer minimum and the value comes back from the key exactly.
/// </summary>
public static class SlotKeys
{
    private const uint NaNRank = 0xFFFF_FFFE;
    private const uint EmptyRank = 0xFFFF_FFFF;

    /// <summary>The key of an empty slot, after every other key.</summary>
    public const ulong Empty = ulong.MaxValue;

    /// <summary>The key of (value, expert); expert -1 is an empty slot.</summary>
    public static ulong Key(float value, int expert)
    {
        if (expert < 0)
        {
            return Empty;
        }
        uint rank;
        if (float.IsNaN(value))
        {
            rank = NaNRank;
        }
        else
        {
            uint bits = Interop.FloatAsInt(value + 0f); // -0 becomes +0: equal values tie
            uint ascending = (bits & 0x8000_0000) != 0 ? ~bits : bits | 0x8000_0000;
            rank = ~ascending;
        }
        return ((ulong)rank << 32) | (uint)expert;
    }

    /// <summary>The expert of a key (-1 for an empty slot).</summary>
    public static int Expert(ulong key) => (uint)key == EmptyRank ? -1 : (int)(uint)key;

    /// <summary>The value of a key (0 for an empty slot).</summary>
    public static float Value(ulong key)
    {
        uint rank = (uint)(key >> 32);
        if (rank == EmptyRank)
        {
            return 0f;
        }
        if (rank == NaNRank)
        {
            return float.NaN;
        }
        uint ascending = ~rank;
        uint bits = (ascending & 0x8000_0000) != 0 ? ascending & 0x7FFF_FFFF : ~ascending;
        return Interop.IntAsFloat(bits);
    }
}
