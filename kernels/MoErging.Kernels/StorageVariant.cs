namespace MoErging.Kernels;

/// <summary>
/// Which compiled storage variant a launch takes: the launchers hold their variants in this order (activations F32
/// before F16; within each, factors or prototypes F32, F16, BF16), so one lookup replaces a chain of type tests per
/// launcher. Each test is constant for a given instantiation, so the JIT keeps one branch.
/// </summary>
internal static class StorageVariant
{
    /// <summary>Storages a factor or prototype buffer may have: F32, F16, BF16.</summary>
    public const int Weights = 3;

    /// <summary>0 for float (F32), 1 for ushort (F16 bits), 2 for <see cref="BFloat16Bits"/> (BF16).</summary>
    /// <exception cref="NotSupportedException">Any other element type.</exception>
    public static int Of<T>() where T : unmanaged =>
        typeof(T) == typeof(float) ? 0
        : typeof(T) == typeof(ushort) ? 1
        : typeof(T) == typeof(BFloat16Bits) ? 2
        : throw new NotSupportedException($"storage {typeof(T).Name}: only float (F32), ushort (F16 bits) and BFloat16Bits (BF16)");

    /// <summary>
    /// The index of an (activations, weights) pair among (F32, F32), (F32, F16), (F32, BF16), (F16, F32), (F16, F16), (F16, BF16).
    /// </summary>
    /// <exception cref="NotSupportedException">Activations other than float (F32) or ushort (F16 bits), or weights of another type.</exception>
    public static int Of<TX, TW>()
        where TX : unmanaged
        where TW : unmanaged => Weights * Activations<TX>() + Of<TW>();

    private static int Activations<T>() where T : unmanaged =>
        typeof(T) == typeof(float) ? 0
        : typeof(T) == typeof(ushort) ? 1
        : throw new NotSupportedException($"activations of {typeof(T).Name}: only float (F32) and ushort (F16 bits)");
}
