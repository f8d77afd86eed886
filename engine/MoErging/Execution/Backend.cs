namespace MoErging.Execution;

/// <summary>Where the engine runs.</summary>
public enum Backend
{
    /// <summary>
    /// The best backend present: CUDA, then an OpenCL GPU, then the CPU (an OpenCL driver that runs on the CPU is
    /// never preferred to the CPU backend); the engine reports which and why.
    /// </summary>
    Auto,

    /// <summary>The CPU: SIMD, multithreaded across tokens and experts.</summary>
    Cpu,

    /// <summary>An NVIDIA GPU through ILGPU's CUDA backend.</summary>
    Cuda,

    /// <summary>An OpenCL device through ILGPU's OpenCL backend: any device whose driver compiles the kernels (see the README).</summary>
    OpenCL,

    /// <summary>The GPU kernels on ILGPU's CPU accelerator: slow, for testing and debugging kernels without a GPU.</summary>
    GpuSimulator,
}

/// <summary>
/// How an engine stores expert factors and router prototypes: on a GPU in its device copy, on the CPU in the
/// arrays its dot and axpy loops stream. The 16-bit formats halve the bytes a forward reads; each value is rounded
/// to nearest, ties to even, once (when the library loads it at that precision, or when an engine of this
/// precision first uses a library held at another), and widened to float32 in registers: arithmetic and
/// accumulation stay float32, in the same order as for <see cref="Float32"/>, so a 16-bit run gives exactly the
/// float32 run on the widened values.
/// </summary>
public enum WeightPrecision
{
    /// <summary>float32.</summary>
    Float32,

    /// <summary>
    /// IEEE binary16: 5 exponent bits, 10 mantissa bits (range ±65,504; larger values become infinity). Expert factors
    /// and linear routers' prototypes; router biases stay float32.
    /// </summary>
    Float16,

    /// <summary>
    /// bfloat16: the upper half of a float32 (8 exponent bits, 7 mantissa bits; float32's range), a NaN kept as a quiet
    /// NaN. Widened with a 16-bit shift. Expert factors and linear routers' prototypes; router biases stay float32.
    /// </summary>
    BFloat16,
}

/// <summary>
/// The backend asked for is not present on this machine, or its device does not run the kernels; the message says
/// what was looked for, or the driver's own error and build log, and the inner exception is the driver's or compiler's.
/// </summary>
public sealed class BackendUnavailableException(string message, Exception? inner = null) : Exception(message, inner);
