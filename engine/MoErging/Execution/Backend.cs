namespace MoErging.Execution;

/// <summary>Where the engine runs.</summary>
public enum Backend
{
    /// <summary>The best backend present; the engine reports which it chose and why.</summary>
    Auto,

    /// <summary>The CPU: SIMD, multithreaded across tokens and experts.</summary>
    Cpu,
}
