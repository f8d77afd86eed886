using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Gpu;

/// <summary>
/// An engine's GPU: the device with its compiled kernels, the sessions' executors, and what has been uploaded
/// (each module's experts and each linear router's prototypes, once, on first use, on the stream of the session
/// that first needs it, so other sessions' work runs on). An upload is freed when its host object has been
/// collected (checked whenever something new is uploaded), on <see cref="Release"/>, or at disposal; never while
/// queued work may read it, since every session's stream is drained first. Thread-safe.
/// </summary>
internal sealed class GpuBackend : IBackend
{
    private readonly ConditionalWeakTable<object, Uploaded> _byHost = new();
    private readonly List<Uploaded> _uploads = []; // every live upload, for freeing
    private readonly List<GpuExecutor> _executors = [];
    private readonly object _gate = new();

    public GpuBackend(GpuDevice device, WeightPrecision precision)
    {
        Device = device;
        Precision = precision;
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
    public int UploadCount
    {
        get
        {
            lock (_gate)
            {
                return _uploads.Count;
            }
        }
    }

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
        (DeviceModule?)Entry(module).Value ?? UploadNew(module, stream);

    /// <summary>The router's prototypes and bias on the device, uploaded on <paramref name="stream"/> the first time.</summary>
    public DeviceRouter Upload(LinearRouter router, AcceleratorStream stream) =>
        (DeviceRouter?)Entry(router).Value ?? UploadNew(router, stream);

    // The first uploads live in methods of their own: a lambda's captures would allocate on every call.
    private DeviceModule UploadNew(AdaptedModule module, AcceleratorStream stream) =>
        (DeviceModule)Entry(module).Make(stream, s => new DeviceModule(Device.Accelerator, s, module, Precision));

    private DeviceRouter UploadNew(LinearRouter router, AcceleratorStream stream) =>
        (DeviceRouter)Entry(router).Make(stream, s => new DeviceRouter(Device.Accelerator, s, router, Precision));

    /// <summary>Frees the device copy of a module or router now; false when there is none. Waits for every session's queued work.</summary>
    public bool Release(object host)
    {
        List<Uploaded> freed;
        lock (_gate)
        {
            freed = _uploads.Where(u => u.Holds(host) || !u.Alive).ToList();
            if (freed.Count == 0)
            {
                return false;
            }
            Drain();
            _uploads.RemoveAll(freed.Contains);
            _byHost.Remove(host);
        }
        bool found = false;
        foreach (Uploaded upload in freed)
        {
            found |= upload.Holds(host);
            upload.Dispose();
        }
        return found;
    }

    public void Dispose()
    {
        lock (_gate)
        {
            Drain();
            foreach (Uploaded upload in _uploads)
            {
                upload.Dispose();
            }
            _uploads.Clear();
        }
        Device.Dispose();
    }

    /// <summary>The host object's upload entry, made (after freeing what no host holds any more) the first time.</summary>
    private Uploaded Entry(object host)
    {
        // The table reads without a lock, so a warm forward never waits behind another session's drain.
        if (_byHost.TryGetValue(host, out Uploaded? entry))
        {
            return entry;
        }
        List<Uploaded>? collected = null;
        lock (_gate)
        {
            if (!_byHost.TryGetValue(host, out entry))
            {
                // Something new goes to the device: first free what no host holds any more.
                collected = _uploads.Where(u => !u.Alive).ToList();
                if (collected.Count > 0)
                {
                    Drain();
                    _uploads.RemoveAll(collected.Contains);
                }
                entry = new Uploaded(host);
                _byHost.Add(host, entry);
                _uploads.Add(entry);
            }
        }
        if (collected is not null)
        {
            foreach (Uploaded upload in collected)
            {
                upload.Dispose();
            }
        }
        return entry;
    }

    /// <summary>Waits for the work every session has queued (call under the gate, before freeing).</summary>
    private void Drain()
    {
        foreach (GpuExecutor executor in _executors)
        {
            executor.Stream.Synchronize();
        }
    }

    /// <summary>One host object's device copy: made once, by the first session that needs it, while others wait for it alone.</summary>
    private sealed class Uploaded(object host) : IDisposable
    {
        private readonly WeakReference _host = new(host);
        private readonly object _gate = new();
        private IDisposable? _value;

        public bool Alive => _host.IsAlive;

        public bool Holds(object host) => ReferenceEquals(_host.Target, host);

        /// <summary>The device copy once made (a published reference: readers need no lock).</summary>
        public IDisposable? Value => Volatile.Read(ref _value);

        public IDisposable Make(AcceleratorStream stream, Func<AcceleratorStream, IDisposable> create)
        {
            lock (_gate)
            {
                if (_value is null)
                {
                    IDisposable value = create(stream);
                    try
                    {
                        stream.Synchronize(); // complete before any other session's stream reads it
                    }
                    catch
                    {
                        value.Dispose();
                        throw;
                    }
                    Volatile.Write(ref _value, value);
                }
                return _value;
            }
        }

        public void Dispose()
        {
            lock (_gate)
            {
                _value?.Dispose();
                _value = null;
            }
        }
    }
}
