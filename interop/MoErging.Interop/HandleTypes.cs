using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Interop;

/// <summary>What a moe_engine handle stands for: the engine and how many of its sessions are alive.</summary>
internal sealed class EngineHandle(Engine engine)
{
    public Engine Engine { get; } = engine;

    /// <summary>Live sessions; guarded by locking this object, so the engine cannot be freed under them.</summary>
    public int Sessions { get; set; }
}

/// <summary>What a moe_session handle stands for: a session and the routing decision its forwards reuse.</summary>
internal sealed class SessionHandle(EngineHandle owner, Session session)
{
    private int _inUse;
    private float[] _staged = [];

    public EngineHandle Owner { get; } = owner;

    public Session Session { get; } = session;

    /// <summary>Reused by every forward, so warm calls allocate nothing.</summary>
    public RoutingDecision Decision { get; } = new();

    /// <summary>base copied into the session's own buffer (grown to the largest y seen), for a forward whose y is not its base.</summary>
    public Span<float> Stage(ReadOnlySpan<float> bases)
    {
        if (_staged.Length < bases.Length)
        {
            _staged = new float[bases.Length];
        }
        Span<float> staged = _staged.AsSpan(0, bases.Length);
        bases.CopyTo(staged);
        return staged;
    }

    /// <summary>Claims the session for one call; the whole call, routing and forward, runs under one claim.</summary>
    public Claim Enter()
    {
        if (Interlocked.Exchange(ref _inUse, 1) != 0)
        {
            throw new ArgumentException("session is in use on another thread; use one session per thread");
        }
        return new Claim(this);
    }

    public readonly struct Claim(SessionHandle session) : IDisposable
    {
        public void Dispose() => Volatile.Write(ref session._inUse, 0);
    }
}

/// <summary>What a moe_library handle stands for: the library and one handle per module, owned by it.</summary>
internal sealed class LibraryHandle(ExpertLibrary library, nint[] modules)
{
    public ExpertLibrary Library { get; } = library;

    /// <summary>Module handles by module index.</summary>
    public nint[] Modules { get; } = modules;
}
