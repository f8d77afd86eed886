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

/// <summary>How expert factors (and, in BF16, routers' prototypes) are stored on a GPU (the CPU backend always uses float32).</summary>
public enum WeightPrecision
{
    /// <summary>float32.</summary>
    Float32,

    /// <summary>IEEE binary16 factors, rounded to nearest even once at upload; prototypes stay float32; arithmetic stays float32.</summary>
    Float16,

    /// <summary>
    /// bfloat16 factors and prototypes (the top 16 bits of a float32: its range, 8 significant bits), rounded to nearest even
    /// once at upload, a NaN kept as a quiet NaN; the kernels widen them with a shift and compute in float32. Router biases stay float32.
    /// </summary>
    BFloat16,
}

/// <summary>
/// The backend asked for is not present on this machine, or its device does not run the kernels; the message says
/// what was looked for, or the driver's own error and build log, and the inner exception is the driver's or compiler's.
/// </summary>
public sealed class BackendUnavailableException(string message, Exception? inner = null) : Exception(message, inner);
