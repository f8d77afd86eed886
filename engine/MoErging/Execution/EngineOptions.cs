namespace MoErging.Execution;

/// <summary>Options for <see cref="Engine.Create"/>.</summary>
public sealed record EngineOptions
{
    /// <summary>The backend to use; <see cref="Backend.Auto"/> picks the best one present.</summary>
    public Backend Backend { get; init; } = Backend.Auto;

    /// <summary>CPU threads, the calling thread included; 0 uses every processor. CPU backend only.</summary>
    public int CpuThreads { get; init; }

    /// <summary>How expert factors are stored on a GPU.</summary>
    public WeightPrecision WeightPrecision { get; init; } = WeightPrecision.Float32;
}
