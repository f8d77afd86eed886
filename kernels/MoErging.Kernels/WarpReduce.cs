using ILGPU;

namespace MoErging.Kernels;

/// <summary>Butterfly reductions over a warp: every lane ends with the result, in a fixed order.</summary>
internal static class WarpReduce
{
    public static float Sum(float value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset >>= 1)
        {
            value += Warp.ShuffleXor(value, offset);
        }
        return value;
    }

    public static ulong Min(ulong value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset >>= 1)
        {
            ulong other = Warp.ShuffleXor(value, offset);
            value = other < value ? other : value;
        }
        return value;
    }
}
