using ILGPU;
using MoErging.Execution.Gpu;
using MoErging.Routing;

namespace MoErging.Execution;

/// <summary>
/// A routing decision that stays on the GPU, for hosts whose activations live there: the gating kernel
/// writes it and the expert kernels read it with no copy. Same layout and order as
/// <see cref="RoutingDecision"/>. Belongs to the session that created it, and uses it like any call of that session
/// (a second thread using either at once gets an exception); it may be disposed after the session.
/// </summary>
public sealed class DeviceRoutingDecision : IDisposable
{
    private readonly Session _session;
    private readonly GpuExecutor _executor;
    private readonly DeviceBuffer<int> _ids;
    private readonly DeviceBuffer<float> _weights;
    private readonly RoutingDecision _host = new();

    internal DeviceRoutingDecision(Session session, GpuExecutor executor)
    {
        _session = session;
        _executor = executor;
        _ids = new DeviceBuffer<int>(executor.Accelerator, executor.Stream);
        _weights = new DeviceBuffer<float>(executor.Accelerator, executor.Stream);
    }

    /// <summary>The session's executor whose stream writes and reads this decision.</summary>
    internal GpuExecutor Owner => _executor;

    /// <summary>T.</summary>
    public int TokenCount { get; private set; }

    /// <summary>k.</summary>
    public int TopK { get; private set; }

    /// <summary>E.</summary>
    public int ExpertCount { get; private set; }

    /// <summary>Expert ids on the device, <c>[T, k]</c>.</summary>
    public ArrayView<int> Ids => _ids.View((long)TokenCount * TopK);

    /// <summary>Weights on the device, <c>[T, k]</c>.</summary>
    public ArrayView<float> Weights => _weights.View((long)TokenCount * TopK);

    /// <summary>Uploads host-given assignments (validated and ordered as <see cref="RoutingDecision.Assign"/> does).</summary>
    public void Assign(ReadOnlySpan<int> expertIds, ReadOnlySpan<float> weights, int topK, int expertCount)
    {
        using var _ = _session.Enter(); // the upload goes through the session's staging
        _host.Assign(expertIds, weights, topK, expertCount);
        Resize(_host.TokenCount, topK, expertCount);
        _executor.UploadDecision(_host, Ids, Weights);
    }

    /// <summary>Copies the decision to the host (waits for the session's queued work).</summary>
    public void CopyTo(RoutingDecision destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        using var _ = _session.Enter();
        destination.Reset(TokenCount, TopK, ExpertCount);
        _executor.DownloadDecision(Ids, Weights, destination);
    }

    internal void Resize(int tokens, int topK, int expertCount)
    {
        TokenCount = tokens;
        TopK = topK;
        ExpertCount = expertCount;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _ids.Dispose();
        _weights.Dispose();
    }
}
