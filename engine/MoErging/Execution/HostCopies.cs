using System.Runtime.CompilerServices;

namespace MoErging.Execution;

/// <summary>
/// A backend's own copies of host objects (a module's experts, a linear router's prototypes): a GPU's uploads, or the
/// CPU's packed modules (Bᵀ in the expand's panels, A converted where the engine's precision differs from the library's)
/// and packed prototypes. Each copy is made once, on first
/// use, by the first session that needs it while others wait for it alone; it is freed when its host object has been
/// collected (checked whenever something new is copied), on <see cref="Release"/>, or at disposal, each time after
/// <c>drain</c> has waited for the work that may still read it. A copy that is <see cref="IDisposable"/> is disposed
/// then; any other is left to the garbage collector. Thread-safe; finding a copy takes no lock and allocates nothing.
/// </summary>
internal sealed class HostCopies(Action drain) : IDisposable
{
    private readonly ConditionalWeakTable<object, Entry> _byHost = new();
    private readonly List<Entry> _entries = []; // every live copy, for freeing
    private readonly Lock _gate = new();

    /// <summary>Copies held (for tests and reports).</summary>
    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>The copy of <paramref name="host"/> once made, else null.</summary>
    public T? Find<T>(object host) where T : class =>
        _byHost.TryGetValue(host, out Entry? entry) ? (T?)entry.Value : null;

    /// <summary>The copy of <paramref name="host"/>, made by <paramref name="make"/> the first time (which may throw; the next use tries again).</summary>
    public T GetOrMake<T>(object host, Func<T> make) where T : class => (T)EntryOf(host).Make(make);

    /// <summary>Frees the copy of <paramref name="host"/> now, and those whose hosts were collected; false when <paramref name="host"/> has none.</summary>
    public bool Release(object host)
    {
        List<Entry> freed;
        lock (_gate)
        {
            freed = _entries.Where(u => u.Holds(host) || !u.Alive).ToList();
            if (freed.Count == 0)
            {
                return false;
            }
            drain();
            _entries.RemoveAll(freed.Contains);
            _byHost.Remove(host);
        }
        bool found = false;
        foreach (Entry entry in freed)
        {
            found |= entry.Holds(host);
            entry.Dispose();
        }
        return found;
    }

    /// <summary>Frees every copy (after <c>drain</c>).</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            drain();
            foreach (Entry entry in _entries)
            {
                entry.Dispose();
            }
            _entries.Clear();
        }
    }

    /// <summary>The host object's entry, made (after freeing what no host holds any more) the first time.</summary>
    private Entry EntryOf(object host)
    {
        // The table reads without a lock, so a warm call never waits behind another session's drain.
        if (_byHost.TryGetValue(host, out Entry? entry))
        {
            return entry;
        }
        List<Entry>? collected = null;
        lock (_gate)
        {
            if (!_byHost.TryGetValue(host, out entry))
            {
                // Something new is copied: first free what no host holds any more.
                collected = _entries.Where(u => !u.Alive).ToList();
                if (collected.Count > 0)
                {
                    drain();
                    _entries.RemoveAll(collected.Contains);
                }
                entry = new Entry(host);
                _byHost.Add(host, entry);
                _entries.Add(entry);
            }
        }
        if (collected is not null)
        {
            foreach (Entry freed in collected)
            {
                freed.Dispose();
            }
        }
        return entry;
    }

    /// <summary>One host object's copy: made once, by the first session that needs it, while others wait for it alone.</summary>
    private sealed class Entry(object host) : IDisposable
    {
        private readonly WeakReference _host = new(host);
        private readonly Lock _gate = new();
        private object? _value;

        public bool Alive => _host.IsAlive;

        public bool Holds(object host) => ReferenceEquals(_host.Target, host);

        /// <summary>The copy once made (a published reference: readers need no lock).</summary>
        public object? Value => Volatile.Read(ref _value);

        public object Make(Func<object> create)
        {
            lock (_gate)
            {
                if (_value is null)
                {
                    Volatile.Write(ref _value, create());
                }
                return _value;
            }
        }

        public void Dispose()
        {
            lock (_gate)
            {
                (_value as IDisposable)?.Dispose();
                _value = null;
            }
        }
    }
}
