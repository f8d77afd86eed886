namespace MoErging.Kernels;

/// <summary>One launch of a forward as planned: which kernel, its grid, its shared memory, and whether it does the bulk arithmetic.</summary>
/// <param name="Kernel">The kernel family and step: <c>gating_scores</c>, <c>gating_select</c>, <c>shrink</c>, <c>expand</c>.</param>
/// <param name="Groups">Groups in the grid.</param>
/// <param name="GroupSize">Threads per group.</param>
/// <param name="SharedBytes">Static shared memory per group.</param>
/// <param name="Bulk">True when the launch does the routing or expert arithmetic, false for a small bookkeeping step.</param>
public readonly record struct PlannedLaunch(string Kernel, int Groups, int GroupSize, int SharedBytes, bool Bulk);

/// <summary>
/// The group sizes a device's kernels run with, and from them the launches one forward makes. The launchers
/// size their grids with the same functions (<see cref="GatingKernel.ScoresGroups"/>, <see cref="ShrinkKernel.Groups"/>,
/// <see cref="ExpandKernel.Groups"/>), so a plan is what a device does. A routed forward is the scores, the
/// selection unless the shrink runs it (<see cref="GatingKernel.SelectsInShrink"/>), the shrink and the expand;
/// a forward with a decision given (fixed weights, host-assigned experts) is the shrink and the expand alone.
/// </summary>
/// <param name="ScoresGroupSize">Threads per scores group.</param>
/// <param name="SelectGroupSize">Threads per selection group.</param>
/// <param name="ShrinkGroupSize">Threads per shrink group.</param>
/// <param name="ShrinkRowsPerGroup">Rank rows per shrink group.</param>
/// <param name="ExpandGroupSize">Threads per expand group.</param>
public sealed record LaunchShape(int ScoresGroupSize, int SelectGroupSize, int ShrinkGroupSize, int ShrinkRowsPerGroup, int ExpandGroupSize)
{
    /// <summary>The shape on a CUDA device with the given warp size and per-kernel thread limit (1,024 on every NVIDIA GPU since Fermi).</summary>
    public static LaunchShape Cuda(int warpSize = 32, int kernelLimit = 1024)
    {
        TeamShape shrink = ShrinkKernel.CudaShape(warpSize, kernelLimit);
        return new LaunchShape(GatingKernel.ScoresGroupFor(kernelLimit), GatingKernel.SelectGroupFor(kernelLimit),
            shrink.GroupSize, ShrinkKernel.RowsFor(shrink.TeamsPerGroup), ExpandKernel.GroupFor(kernelLimit));
    }

    /// <summary>The launches of one forward, in order.</summary>
    /// <param name="tokens">T.</param>
    /// <param name="experts">E.</param>
    /// <param name="topK">k.</param>
    /// <param name="maxRank">The module's largest rank.</param>
    /// <param name="outputDim">d_out.</param>
    /// <param name="routed">True when a score-based router decides on the device; false when the decision is given.</param>
    public IReadOnlyList<PlannedLaunch> Forward(int tokens, int experts, int topK, int maxRank, int outputDim, bool routed)
    {
        var launches = new List<PlannedLaunch>();
        if (routed)
        {
            launches.AddRange(Route(tokens, experts, topK, forward: true));
        }
        launches.Add(new PlannedLaunch("shrink", ShrinkKernel.Groups(experts, maxRank, ShrinkRowsPerGroup), ShrinkGroupSize, ShrinkKernel.SharedBytes, true));
        launches.Add(new PlannedLaunch("expand", ExpandKernel.Groups(tokens, outputDim, ExpandGroupSize), ExpandGroupSize, 0, true));
        return launches;
    }

    /// <summary>The launches of routing alone (or of a forward's routing, when <paramref name="forward"/>: the shrink may select).</summary>
    public IReadOnlyList<PlannedLaunch> Route(int tokens, int experts, int topK, bool forward = false)
    {
        var launches = new List<PlannedLaunch>
        {
            new("gating_scores", GatingKernel.ScoresGroups(tokens, experts), ScoresGroupSize, GatingKernel.ScoresSharedBytes, true),
        };
        if (!forward || !GatingKernel.SelectsInShrink(tokens, experts, topK))
        {
            launches.Add(new PlannedLaunch("gating_select", GatingKernel.SelectGroups(tokens, SelectGroupSize), SelectGroupSize, 0, false));
        }
        return launches;
    }
}
