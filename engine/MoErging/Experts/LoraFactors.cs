using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using MoErging.Formats;

namespace MoErging.Experts;

/// <summary>
/// One expert's LoRA update of one linear module: ΔW = s · B A with A <c>[r, d_in]</c> and B <c>[d_out, r]</c>
/// in PEFT's layout and s the scaling (lora_alpha / r, or / sqrt(r) with rsLoRA).
/// </summary>
/// <remarks>
/// Both factors live on the pinned object heap, so the backends read them in place without pinning per call.
/// B is kept transposed (<c>[r, d_out]</c>, rank-major like A) because the expand step of the forward
/// pass streams it row by row along d_out; <see cref="CopyB"/> gives PEFT's layout back.
/// Factors loaded lazily (<see cref="ExpertLibrary.Load(IEnumerable{string}, bool)"/>) know their shape and scaling
/// from the start and decode their values on first use of <see cref="A"/>, <see cref="BTransposed"/> or
/// <see cref="CopyB"/> (or a forward pass), once, thread-safely; <see cref="IsLoaded"/> tells which.
/// </remarks>
public sealed unsafe class LoraFactors
{
    private readonly Func<(float[] A, float[] BTransposed)>? _load;
    private readonly Lock? _loading;
    private volatile Storage? _storage;

    /// <summary>Copies A <c>[rank, inputDim]</c> and B <c>[outputDim, rank]</c>, both row-major as PEFT stores them.</summary>
    /// <param name="a">A, row-major <c>[rank, inputDim]</c>.</param>
    /// <param name="b">B, row-major <c>[outputDim, rank]</c>.</param>
    /// <param name="rank">r, at least 1.</param>
    /// <param name="inputDim">d_in, at least 1.</param>
    /// <param name="outputDim">d_out, at least 1.</param>
    /// <param name="scaling">s, finite.</param>
    /// <param name="alpha">lora_alpha as configured, for display (defaults to s · r).</param>
    /// <param name="storageType">How the factors were stored on disk, for display.</param>
    public LoraFactors(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inputDim, int outputDim, float scaling,
        float? alpha = null, TensorDType storageType = TensorDType.F32)
        : this(Copy(a, (long)rank * inputDim, "A", $"rank × d_in = {rank} × {inputDim}", nameof(a)),
               Transpose(b, rank, outputDim, nameof(b)), rank, inputDim, outputDim, scaling, alpha, storageType)
    {
    }

    /// <summary>Takes ownership of A <c>[rank, inputDim]</c> and Bᵀ <c>[rank, outputDim]</c>, both from <see cref="AllocatePinned"/>.</summary>
    internal LoraFactors(float[] a, float[] bTransposed, int rank, int inputDim, int outputDim, float scaling,
        float? alpha, TensorDType storageType)
    {
        CheckShape(rank, inputDim, outputDim, scaling);
        if (a.Length != (long)rank * inputDim || bTransposed.Length != (long)rank * outputDim)
        {
            throw new ArgumentException($"factors of rank {rank} for d_in {inputDim}, d_out {outputDim} have the wrong sizes ({a.Length}, {bTransposed.Length})");
        }
        _storage = new Storage(a, bTransposed);
        (Rank, InputDim, OutputDim, Scaling, Alpha, StorageType) = (rank, inputDim, outputDim, scaling, alpha ?? scaling * rank, storageType);
    }

    /// <summary>
    /// Lazy factors: <paramref name="load"/> returns A <c>[rank, inputDim]</c> and Bᵀ <c>[rank, outputDim]</c> (both from
    /// <see cref="AllocatePinned"/>) on first use, and may throw; a failed load is retried on the next use.
    /// </summary>
    internal LoraFactors(Func<(float[] A, float[] BTransposed)> load, int rank, int inputDim, int outputDim, float scaling,
        float alpha, TensorDType storageType)
    {
        ArgumentNullException.ThrowIfNull(load);
        CheckShape(rank, inputDim, outputDim, scaling);
        _load = load;
        _loading = new Lock();
        (Rank, InputDim, OutputDim, Scaling, Alpha, StorageType) = (rank, inputDim, outputDim, scaling, alpha, storageType);
    }

    private static void CheckShape(int rank, int inputDim, int outputDim, float scaling)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rank, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(inputDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(outputDim, 1);
        if (!float.IsFinite(scaling))
        {
            throw new ArgumentOutOfRangeException(nameof(scaling), scaling, "scaling must be finite");
        }
    }

    /// <summary>A and Bᵀ, decoded.</summary>
    private sealed record Storage(float[] A, float[] BTransposed);

    /// <summary>The decoded factors, loading them on first use.</summary>
    private Storage Loaded
    {
        get
        {
            if (_storage is Storage loaded)
            {
                return loaded;
            }
            lock (_loading!)
            {
                if (_storage is null)
                {
                    var (a, bTransposed) = _load!();
                    _storage = new Storage(a, bTransposed);
                }
                return _storage;
            }
        }
    }

    /// <summary>False for lazily loaded factors whose values have not been decoded yet; true otherwise.</summary>
    public bool IsLoaded => _storage is not null;

    /// <summary>Decodes lazily loaded factors now (nothing for loaded ones), so that a later use cannot fail.</summary>
    /// <exception cref="FileNotFoundException">The adapter's weights file was removed since the library was loaded.</exception>
    /// <exception cref="InvalidDataException">The weights file changed since the library was loaded.</exception>
    public void Load() => _ = Loaded;

    /// <summary>Transposes PEFT's B <c>[outputDim, rank]</c> into a new <c>[rank, outputDim]</c> array.</summary>
    internal static float[] Transpose(ReadOnlySpan<float> b, int rank, int outputDim, string parameter = "b")
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rank, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(outputDim, 1);
        if (b.Length != (long)outputDim * rank)
        {
            throw new ArgumentException($"B must hold d_out × rank = {outputDim} × {rank} values, got {b.Length}", parameter);
        }
        float[] bTransposed = AllocatePinned(b.Length);
        for (int o = 0; o < outputDim; o++)
        {
            for (int k = 0; k < rank; k++)
            {
                bTransposed[k * outputDim + o] = b[o * rank + k];
            }
        }
        return bTransposed;
    }

    private static float[] Copy(ReadOnlySpan<float> values, long expected, string what, string shape, string parameter) =>
        values.Length == expected
            ? CopyPinned(values)
            : throw new ArgumentException($"{what} must hold {shape} values, got {values.Length}", parameter);

    /// <summary>An array on the pinned object heap, for factor storage.</summary>
    internal static float[] AllocatePinned(int length) => GC.AllocateUninitializedArray<float>(length, pinned: true);

    private static float[] CopyPinned(ReadOnlySpan<float> values)
    {
        float[] copy = AllocatePinned(values.Length);
        values.CopyTo(copy);
        return copy;
    }

    /// <summary>r.</summary>
    public int Rank { get; }

    /// <summary>d_in.</summary>
    public int InputDim { get; }

    /// <summary>d_out.</summary>
    public int OutputDim { get; }

    /// <summary>s, the factor ΔW = s · B A carries.</summary>
    public float Scaling { get; }

    /// <summary>lora_alpha as configured.</summary>
    public float Alpha { get; }

    /// <summary>The dtype the factors had on disk (they are held as float32).</summary>
    public TensorDType StorageType { get; }

    /// <summary>A, row-major <c>[r, d_in]</c> (decoded on first use when loaded lazily; see <see cref="Load"/> for the exceptions).</summary>
    public ReadOnlySpan<float> A => Loaded.A;

    /// <summary>Bᵀ, row-major <c>[r, d_out]</c>: row k is column k of PEFT's B (decoded on first use when loaded lazily).</summary>
    public ReadOnlySpan<float> BTransposed => Loaded.BTransposed;

    /// <summary>Address of A (stable: pinned), decoding on first use.</summary>
    internal float* APointer => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Loaded.A));

    /// <summary>Address of Bᵀ (stable: pinned), decoding on first use.</summary>
    internal float* BTransposedPointer => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Loaded.BTransposed));

    /// <summary>Copies B in PEFT's layout, row-major <c>[d_out, r]</c>.</summary>
    public void CopyB(Span<float> destination)
    {
        float[] bTransposed = Loaded.BTransposed;
        if (destination.Length != bTransposed.Length)
        {
            throw new ArgumentException($"destination must hold d_out × rank = {OutputDim} × {Rank} values, got {destination.Length}", nameof(destination));
        }
        for (int k = 0; k < Rank; k++)
        {
            for (int o = 0; o < OutputDim; o++)
            {
                destination[o * Rank + k] = bTransposed[k * OutputDim + o];
            }
        }
    }
}
