namespace MoErging.Kernels;

/// <summary>
/// Which compiled storage variant a launch takes: the launchers hold their variants in this order (F32 before F16,
/// the activations' storage before the factors'), so one lookup replaces a chain of type tests per launcher. Each
/// test is constant for a given instantiation, so the JIT keeps one branch.
/// </summary>
internal static class StorageVariant
{
    /// <summary>0 for float (F32), 1 for ushort (F16 bits).</summary>
    /// <exception cref="NotSupportedException">Any other element type.</exception>
    public static int Of<T>() where T : unmanaged =>
        typeof(T) == typeof(float) ? 0
        : typeof(T) == typeof(ushort) ? 1
        : throw new NotSupportedException($"storage {typeof(T).Name}: only float (F32) and ushort (F16 bits)");

    /// <summary>The index of a pair among (F32, F32), (F32, F16), (F16, F32), (F16, F16).</summary>
    public static int Of<T1, T2>()
        where T1 : unmanaged
        where T2 : unmanaged => 2 * Of<T1>() + Of<T2>();
}
