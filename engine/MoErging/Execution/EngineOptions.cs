namespace MoErging.Execution;

/// <summary>Options for <see cref="Engine.Create"/>.</summary>
public sealed record EngineOptions
{
    /// <summary>The backend to use; <see cref="Backend.Auto"/> picks the best one present.</summary>
    public Backend Backend { get; init; } = Backend.Auto;

    /// <summary>
    /// CPU threads, the calling thread included; 0 uses every processor. At most <see cref="MaxCpuThreads"/>
    /// (4 × <see cref="Environment.ProcessorCount"/>); more, or a negative count, is refused by
    /// <see cref="Engine.Create"/>. CPU backend only.
    /// </summary>
    public int CpuThreads { get; init; }

    /// <summary>
    /// The most <see cref="CpuThreads"/> takes: 4 × <see cref="Environment.ProcessorCount"/>. Oversubscription beyond
    /// that only slows a forward down, and a count in the thousands exhausts the process's threads.
    /// </summary>
    public static int MaxCpuThreads => 4 * Environment.ProcessorCount;

    /// <summary>
    /// How the engine stores expert factors and linear routers' prototypes for its forwards (default float32). Load the
    /// library at it (<see cref="Experts.ExpertLibraryOptions.WeightPrecision"/>), so that nothing is rounded twice. The
    /// CPU copies each expert's A and Bᵀ, the first time a forward runs it, at this precision into the panels its shrink
    /// and expand kernels stream (converting them where the library holds another precision); the copies are freed by
    /// <see cref="Engine.Release(Experts.AdaptedModule)"/>. A GPU converts while uploading.
    /// </summary>
    public WeightPrecision WeightPrecision { get; init; } = WeightPrecision.Float32;

    /// <summary>
    /// Which GPU device to open: an index from <c>moerge devices</c> (<see cref="Kernels.Devices.List"/>) or a
    /// case-insensitive part of one device's name, platform or vendor ("llvmpipe", "rusticl", "pocl"). Null takes the first usable device of the backend
    /// (with <see cref="Backend.Auto"/>: CUDA, then an OpenCL GPU). With <see cref="Backend.Auto"/> a named device
    /// decides the backend. Not used by <see cref="Backend.Cpu"/> or <see cref="Backend.GpuSimulator"/>.
    /// </summary>
    public string? Device { get; init; }

    /// <summary>
    /// Warps per group of the simulated device (<see cref="Backend.GpuSimulator"/> only; 1 to 32). One is fastest;
    /// more run the multi-warp code paths a GPU runs.
    /// </summary>
    public int SimulatorWarpsPerGroup { get; init; } = 1;
}
