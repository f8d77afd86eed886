using MoErging.Execution;
using MoErging.Formats;

namespace MoErging.Experts;

/// <summary>
/// One expert's LoRA update of one linear module: ΔW = s · B A with A <c>[r, d_in]</c> and B <c>[d_out, r]</c>
/// in PEFT's layout and s the scaling (lora_alpha / r, or / sqrt(r) with rsLoRA).
/// </summary>
/// <remarks>
/// Both factors live on the pinned object heap, so the backends read them in place without pinning per call, at
/// the factors' <see cref="Precision"/>: float32, or the bit patterns of a 16-bit format (half the memory and half the
/// bytes a forward reads). B is kept transposed (<c>[r, d_out]</c>, rank-major like A) because the GPUs' expand streams
/// it row by row along d_out (the CPU engine packs it into column panels of its own); <see cref="CopyB"/> gives PEFT's
/// layout back.
/// Factors loaded lazily (<see cref="ExpertLibrary.Load(IEnumerable{string}, bool)"/>) know their shape and scaling
/// from the start and decode their values on first use of <see cref="A"/>, <see cref="BTransposed"/>,
/// <see cref="CopyB"/>, the bit accessors (or a forward pass), once, thread-safely; <see cref="IsLoaded"/> tells which.
/// </remarks>
public sealed class LoraFactors
{
    private readonly Func<(Array A, Array BTransposed)>? _load;
    private readonly Lock? _loading;
    private volatile Storage? _storage;

    /// <summary>
    /// Copies A <c>[rank, inputDim]</c> and B <c>[outputDim, rank]</c>, both row-major as PEFT stores them, at
    /// <paramref name="precision"/> (a 16-bit precision rounds each value to nearest, ties to even, once).
    /// </summary>
    /// <param name="a">A, row-major <c>[rank, inputDim]</c>.</param>
    /// <param name="b">B, row-major <c>[outputDim, rank]</c>.</param>
    /// <param name="rank">r, at least 1.</param>
    /// <param name="inputDim">d_in, at least 1.</param>
    /// <param name="outputDim">d_out, at least 1.</param>
    /// <param name="scaling">s, finite.</param>
    /// <param name="alpha">lora_alpha as configured, for display (defaults to s · r).</param>
    /// <param name="storageType">How the factors were stored on disk, for display.</param>
    /// <param name="precision">How the factors are held in memory.</param>
    public LoraFactors(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inputDim, int outputDim, float scaling,
        float? alpha = null, TensorDType storageType = TensorDType.F32, WeightPrecision precision = WeightPrecision.Float32)
        : this(Stored(a, (long)rank * inputDim, "A", $"rank × d_in = {rank} × {inputDim}", nameof(a), precision),
               StoredTransposed(b, rank, outputDim, nameof(b), precision), rank, inputDim, outputDim, scaling, alpha, storageType, precision)
    {
    }

    /// <summary>Takes ownership of float32 A <c>[rank, inputDim]</c> and Bᵀ <c>[rank, outputDim]</c>, both from <see cref="AllocatePinned"/>.</summary>
    internal LoraFactors(float[] a, float[] bTransposed, int rank, int inputDim, int outputDim, float scaling,
        float? alpha, TensorDType storageType)
        : this((Array)a, bTransposed, rank, inputDim, outputDim, scaling, alpha, storageType, WeightPrecision.Float32)
    {
    }

    /// <summary>
    /// Takes ownership of A <c>[rank, inputDim]</c> and Bᵀ <c>[rank, outputDim]</c>, pinned arrays of the precision's
    /// type (<see cref="WeightStorage"/>).
    /// </summary>
    internal LoraFactors(Array a, Array bTransposed, int rank, int inputDim, int outputDim, float scaling,
        float? alpha, TensorDType storageType, WeightPrecision precision)
    {
        CheckShape(rank, inputDim, outputDim, scaling);
        WeightStorage.Check(precision, nameof(precision));
        if (!WeightStorage.Holds(a, precision) || !WeightStorage.Holds(bTransposed, precision))
        {
            throw new ArgumentException($"factors held as {precision} need arrays of {(precision == WeightPrecision.Float32 ? "float" : "ushort")}, got {a.GetType().Name} and {bTransposed.GetType().Name}");
        }
        if (a.Length != (long)rank * inputDim || bTransposed.Length != (long)rank * outputDim)
        {
            throw new ArgumentException($"factors of rank {rank} for d_in {inputDim}, d_out {outputDim} have the wrong sizes ({a.Length}, {bTransposed.Length})");
        }
        _storage = new Storage(a, bTransposed);
        (Rank, InputDim, OutputDim, Scaling, Alpha, StorageType, Precision) =
            (rank, inputDim, outputDim, scaling, alpha ?? scaling * rank, storageType, precision);
    }

    /// <summary>
    /// Lazy factors: <paramref name="load"/> returns A <c>[rank, inputDim]</c> and Bᵀ <c>[rank, outputDim]</c> (pinned
    /// arrays of the precision's type) on first use, and may throw; a failed load is retried on the next use.
    /// </summary>
    internal LoraFactors(Func<(Array A, Array BTransposed)> load, int rank, int inputDim, int outputDim, float scaling,
        float alpha, TensorDType storageType, WeightPrecision precision)
    {
        ArgumentNullException.ThrowIfNull(load);
        CheckShape(rank, inputDim, outputDim, scaling);
        WeightStorage.Check(precision, nameof(precision));
        _load = load;
        _loading = new Lock();
        (Rank, InputDim, OutputDim, Scaling, Alpha, StorageType, Precision) = (rank, inputDim, outputDim, scaling, alpha, storageType, precision);
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

    /// <summary>A and Bᵀ as held: <c>float[]</c> for float32, <c>ushort[]</c> bit patterns otherwise.</summary>
    private sealed record Storage(Array A, Array BTransposed);

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
                    if (!WeightStorage.Holds(a, Precision) || !WeightStorage.Holds(bTransposed, Precision))
                    {
                        throw new InvalidOperationException($"the loader of factors held as {Precision} returned {a.GetType().Name} and {bTransposed.GetType().Name}");
                    }
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

    /// <summary>Transposes PEFT's B <c>[outputDim, rank]</c> into a new pinned <c>[rank, outputDim]</c> array.</summary>
    internal static float[] Transpose(ReadOnlySpan<float> b, int rank, int outputDim, string parameter = "b")
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rank, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(outputDim, 1);
        if (b.Length != (long)outputDim * rank)
        {
            throw new ArgumentException($"B must hold d_out × rank = {outputDim} × {rank} values, got {b.Length}", parameter);
        }
        return WeightStorage.Transposed(b, rank, outputDim);
    }

    /// <summary>A float32 array on the pinned object heap, for factor storage.</summary>
    internal static float[] AllocatePinned(int length) => GC.AllocateUninitializedArray<float>(length, pinned: true);

    private static Array Stored(ReadOnlySpan<float> values, long expected, string what, string shape, string parameter, WeightPrecision precision)
    {
        WeightStorage.Check(precision, nameof(precision));
        return values.Length == expected
            ? WeightStorage.From(values, precision)
            : throw new ArgumentException($"{what} must hold {shape} values, got {values.Length}", parameter);
    }

    private static Array StoredTransposed(ReadOnlySpan<float> b, int rank, int outputDim, string parameter, WeightPrecision precision)
    {
        float[] bTransposed = Transpose(b, rank, outputDim, parameter);
        return precision == WeightPrecision.Float32 ? bTransposed : WeightStorage.From(bTransposed, precision);
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

    /// <summary>The dtype the factors had on disk (they are held at <see cref="Precision"/>).</summary>
    public TensorDType StorageType { get; }

    /// <summary>How the factors are held in memory: float32, or the bit patterns of a 16-bit format.</summary>
    public WeightPrecision Precision { get; }

    /// <summary>
    /// A, row-major <c>[r, d_in]</c> (decoded on first use when loaded lazily; see <see cref="Load"/> for the exceptions).
    /// Float32 factors give their own storage; 16-bit factors are widened (exactly) into a new array on every call, an
    /// allocation of 4 · r · d_in bytes: read <see cref="ABits"/> for them in place.
    /// </summary>
    public ReadOnlySpan<float> A => Floats(Loaded.A);

    /// <summary>
    /// Bᵀ, row-major <c>[r, d_out]</c>: row k is column k of PEFT's B (decoded on first use when loaded lazily). As
    /// <see cref="A"/>: 16-bit factors are widened into a new array on every call.
    /// </summary>
    public ReadOnlySpan<float> BTransposed => Floats(Loaded.BTransposed);

    /// <summary>The bit patterns of A as held (<see cref="Precision"/> Float16 or BFloat16), in place.</summary>
    /// <exception cref="InvalidOperationException">The factors are held as float32 (read <see cref="A"/>).</exception>
    public ReadOnlySpan<ushort> ABits => Bits(Loaded.A);

    /// <summary>The bit patterns of Bᵀ as held (<see cref="Precision"/> Float16 or BFloat16), in place.</summary>
    /// <exception cref="InvalidOperationException">The factors are held as float32 (read <see cref="BTransposed"/>).</exception>
    public ReadOnlySpan<ushort> BTransposedBits => Bits(Loaded.BTransposed);

    private float[] Floats(Array stored)
    {
        if (stored is float[] floats)
        {
            return floats;
        }
        var widened = new float[stored.Length];
        WeightStorage.Widen((ushort[])stored, Precision, widened);
        return widened;
    }

    private ushort[] Bits(Array stored) => stored as ushort[]
        ?? throw new InvalidOperationException($"these factors are held as {Precision}; read A and BTransposed for their values");

    /// <summary>A and Bᵀ as held (pinned; <c>float[]</c> or <c>ushort[]</c> by <see cref="Precision"/>), decoding on first use.</summary>
    internal (Array A, Array BTransposed) Held
    {
        get
        {
            Storage loaded = Loaded;
            return (loaded.A, loaded.BTransposed);
        }
    }

    /// <summary>Copies B in PEFT's layout, row-major <c>[d_out, r]</c>, widening 16-bit factors as it goes (no allocation).</summary>
    public void CopyB(Span<float> destination)
    {
        Array bTransposed = Loaded.BTransposed;
        if (destination.Length != bTransposed.Length)
        {
            throw new ArgumentException($"destination must hold d_out × rank = {OutputDim} × {Rank} values, got {destination.Length}", nameof(destination));
        }
        float[]? floats = bTransposed as float[];
        ushort[]? bits = bTransposed as ushort[];
        for (int k = 0; k < Rank; k++)
        {
            for (int o = 0; o < OutputDim; o++)
            {
                int from = k * OutputDim + o;
                destination[o * Rank + k] = floats is not null ? floats[from] : WeightStorage.Widen(bits![from], Precision);
            }
        }
    }
}
