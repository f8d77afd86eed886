using System.Diagnostics.CodeAnalysis;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>
/// An engine's GPU: the device with its compiled kernels, the sessions' executors, and what has been uploaded
/// (each module's experts and each linear router's prototypes, once, on first use, on the stream of the session
/// that first needs it, so other sessions' work runs on). An upload is freed when its host object has been
/// collected (checked whenever something new is uploaded), on <see cref="Release"/>, or at disposal (<see cref="HostCopies"/>);
/// never while queued work may read it, since every session's stream is drained first. Thread-safe.
/// </summary>
internal sealed class GpuBackend : IBackend
{
    private readonly HostCopies _uploads;
    private readonly List<GpuExecutor> _executors = [];
    private readonly object _gate = new();

    public GpuBackend(GpuDevice device, WeightPrecision precision)
    {
        Device = device;
        Precision = precision;
        _uploads = new HostCopies(Drain);
    }

    public GpuDevice Device { get; }

    /// <summary>How uploads store factors and prototypes.</summary>
    public WeightPrecision Precision { get; }

    public int CpuThreads => 0;

    DeviceInfo? IBackend.Device => Device.Info;

    public Accelerator Accelerator => Device.Accelerator;

    Accelerator? IBackend.Accelerator => Device.Accelerator;

    public IExecutor CreateExecutor() => new GpuExecutor(this);

    /// <summary>
    /// Every router kind and both aggregations run here; what can exceed the device is a launch's size. The shrink's
    /// grid is fixed by the module (E × the row groups of its largest rank); the gating and expand grids grow with
    /// the batch and are checked per call (<see cref="CheckBatch"/>).
    /// </summary>
    public bool Supports(Router? router, AdaptedModule module, Aggregation aggregation, [NotNullWhen(false)] out string? reason)
    {
        if (router is not (null or LinearRouter or FixedRouter))
        {
            reason = $"router type {router.GetType().Name} has no execution path";
            return false;
        }
        ShrinkKernel shrink = Device.Kernels.Shrink;
        reason = Exceeds("shrink", ShrinkKernel.Groups(module.ExpertCount, module.MaxRank, shrink.RowsPerGroup), shrink.GroupSize) is string limit
            ? $"module '{module.Name}' (E = {module.ExpertCount} experts, largest rank {module.MaxRank}) does not fit {Device.Info.Name}: {limit}"
            : null;
        return reason is null;
    }

    /// <summary>
    /// Refuses, before anything is queued, a batch whose gating (<paramref name="experts"/> &gt; 0) or expand
    /// (<paramref name="outputDim"/> &gt; 0) launch is larger than the device runs.
    /// </summary>
    /// <exception cref="NotSupportedException">The message names the launch and the limit.</exception>
    public void CheckBatch(int tokens, int experts, int outputDim)
    {
        KernelSet kernels = Device.Kernels;
        string? limit = experts > 0 ? Exceeds("gating scores", GatingKernel.ScoresGroups(tokens, experts), kernels.Gating.ScoresGroupSize) : null;
        limit ??= experts > 0 ? Exceeds("gating selection", GatingKernel.SelectGroups(tokens, kernels.Gating.SelectGroupSize), kernels.Gating.SelectGroupSize) : null;
        limit ??= outputDim > 0 ? Exceeds("expand", ExpandKernel.Groups(tokens, outputDim, kernels.Expand.GroupSize), kernels.Expand.GroupSize) : null;
        if (limit is not null)
        {
            throw new NotSupportedException($"a batch of {tokens} tokens does not fit {Device.Info.Name}: {limit}; split it into smaller batches");
        }
    }

    /// <summary>Null when a launch of <paramref name="groups"/> groups fits the device, else what it needs and what the device runs.</summary>
    internal string? Exceeds(string launch, long groups, int groupSize) =>
        LaunchLimit(launch, groups, groupSize, Device.Accelerator.MaxGridSize.X);

    /// <summary>
    /// The launch limits: at most <paramref name="maxGroups"/> groups (the device's grid), and a thread index that fits an
    /// int (ILGPU's grid index, which the kernels read), so groups × threads per group at most int.MaxValue.
    /// </summary>
    internal static string? LaunchLimit(string launch, long groups, int groupSize, int maxGroups) =>
        groups <= maxGroups && groups * groupSize <= int.MaxValue
            ? null
            : $"its {launch} launch needs {groups} groups of {groupSize} threads, and a launch runs at most {maxGroups} groups and {int.MaxValue} threads";

    /// <summary>Device buffers held by uploads (for tests and reports).</summary>
    public int UploadCount => _uploads.Count;

    public void Register(GpuExecutor executor)
    {
        lock (_gate)
        {
            _executors.Add(executor);
        }
    }

    public void Unregister(GpuExecutor executor)
    {
        lock (_gate)
        {
            _executors.Remove(executor);
        }
    }

    /// <summary>The module's experts on the device, uploaded on <paramref name="stream"/> the first time.</summary>
    public DeviceModule Upload(AdaptedModule module, AcceleratorStream stream) =>
        _uploads.Find<DeviceModule>(module) ?? UploadNew(module, stream);

    /// <summary>The router's prototypes and bias on the device, uploaded on <paramref name="stream"/> the first time.</summary>
    public DeviceRouter Upload(LinearRouter router, AcceleratorStream stream) =>
        _uploads.Find<DeviceRouter>(router) ?? UploadNew(router, stream);

    // The first uploads live in methods of their own: a lambda's captures would allocate on every call.
    private DeviceModule UploadNew(AdaptedModule module, AcceleratorStream stream) =>
        _uploads.GetOrMake(module, () => Completed(stream, new DeviceModule(Device.Accelerator, stream, module, Precision)));

    private DeviceRouter UploadNew(LinearRouter router, AcceleratorStream stream) =>
        _uploads.GetOrMake(router, () => Completed(stream, new DeviceRouter(Device.Accelerator, stream, router, Precision)));

    /// <summary>Waits for an upload queued on <paramref name="stream"/>, so that no other session's stream reads it before it is complete.</summary>
    private static T Completed<T>(AcceleratorStream stream, T upload) where T : IDisposable
    {
        try
        {
            stream.Synchronize();
        }
        catch
        {
            upload.Dispose();
            throw;
        }
        return upload;
    }

    /// <summary>Frees the device copy of a module or router now; false when there is none. Waits for every session's queued work.</summary>
    public bool Release(object host) => _uploads.Release(host);

    public void Dispose()
    {
        _uploads.Dispose();
        Device.Dispose();
    }

    /// <summary>Waits for the work every session has queued (before an upload is freed).</summary>
    private void Drain()
    {
        lock (_gate)
        {
            foreach (GpuExecutor executor in _executors)
            {
                executor.Stream.Synchronize();
            }
        }
    }
}
