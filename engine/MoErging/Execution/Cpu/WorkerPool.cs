using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace MoErging.Execution.Cpu;

/// <summary>A unit of parallel work: items 0..count-1, each run exactly once on some thread.</summary>
internal abstract class ParallelJob
{
    public abstract void Execute(int item);
}

/// <summary>
/// Fork-join over dedicated threads, with the caller taking part. Unlike Parallel.For it allocates nothing
/// per call, which keeps a warm forward allocation-free. One job runs at a time; a caller that finds the
/// pool busy (another session on another thread) runs its job alone rather than waiting.
/// A helper joins a job only while it is open, and the caller waits only for the helpers that joined (by spinning and
/// yielding, never blocking: they are then at most one item from done, and a blocking wait on a thread-pool thread makes
/// the runtime allocate). A helper that wakes late finds the job closed and goes back to waiting, so the caller never
/// idles for a thread that has not started: waking a blocked thread measured 0.3 to 3 ms on a virtual machine, longer
/// than a whole decode-sized job. Between jobs a helper polls for <see cref="SpinTime"/> before it blocks, so the
/// several jobs of one forward, and forwards called back to back, find it awake; the semaphore's wake-ups are for the
/// blocked ones, and the caller takes back those left unused.
/// </summary>
internal sealed class WorkerPool : IDisposable
{
    /// <summary>How long an idle helper polls for the next job before it blocks: long enough to span a forward's gaps.</summary>
    private static readonly TimeSpan SpinTime = TimeSpan.FromMicroseconds(200);

    private const int Closed = -1;

    private readonly Thread[] _threads;
    private readonly SemaphoreSlim _start = new(0);
    private ParallelJob? _job;
    private int _count;
    private int _next;
    private int _members = Closed; // helpers inside the open job, or Closed
    private int _generation;       // jobs opened so far, which idle helpers poll
    private int _busy;
    private volatile bool _disposed;
    private ExceptionDispatchInfo? _failure;

    /// <param name="threads">Total threads including the caller; 1 runs everything on the caller.</param>
    public WorkerPool(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        Threads = threads;
        _threads = new Thread[threads - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            _threads[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"moerging-cpu-{i + 1}" };
            _threads[i].Start();
        }
    }

    /// <summary>Threads that work on a job, the caller included.</summary>
    public int Threads { get; }

    /// <summary>Runs items 0..count-1 of <paramref name="job"/> and returns when all are done.</summary>
    public void Run(ParallelJob job, int count)
    {
        if (count <= 0)
        {
            return;
        }
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (count == 1 || _threads.Length == 0 || Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            for (int i = 0; i < count; i++)
            {
                job.Execute(i);
            }
            return;
        }
        try
        {
            int helpers = Math.Min(_threads.Length, count - 1);
            _job = job;
            _count = count;
            _next = 0;
            _failure = null;
            Volatile.Write(ref _members, 0); // open: the job's fields are written before any helper can join
            Interlocked.Increment(ref _generation);
            _start.Release(helpers);
            ExceptionDispatchInfo? own = null;
            try
            {
                Drain(job, count);
            }
            catch (Exception e)
            {
                Interlocked.Exchange(ref _next, int.MaxValue / 2);
                own = ExceptionDispatchInfo.Capture(e);
            }
            var spinner = new SpinWait();
            while (Interlocked.CompareExchange(ref _members, Closed, 0) != 0) // close once the helpers inside have left
            {
                spinner.SpinOnce(sleep1Threshold: -1);
            }
            while (_start.Wait(0))
            {
                // Take back the wake-ups no blocked helper used: left over, they would wake a helper for a closed job.
            }
            (own ?? _failure)?.Throw();
        }
        finally
        {
            _job = null;
            Volatile.Write(ref _busy, 0);
        }
    }

    private void Drain(ParallelJob job, int count)
    {
        int i;
        while ((i = Interlocked.Increment(ref _next) - 1) < count)
        {
            job.Execute(i);
        }
    }

    private void WorkerLoop()
    {
        int seen = 0;
        while (true)
        {
            long idleSince = Stopwatch.GetTimestamp();
            var spinner = new SpinWait();
            while (Volatile.Read(ref _generation) == seen && !_disposed && Stopwatch.GetElapsedTime(idleSince) < SpinTime)
            {
                spinner.SpinOnce(sleep1Threshold: -1);
            }
            if (Volatile.Read(ref _generation) == seen && !_disposed)
            {
                _start.Wait(); // no job within the spin: block until one (or Dispose) releases a wake-up
            }
            if (_disposed)
            {
                return;
            }
            seen = Volatile.Read(ref _generation);
            if (!TryJoin())
            {
                continue; // the job this wake was for closed without this helper
            }
            try
            {
                Drain(_job!, _count);
            }
            catch (Exception e)
            {
                // Stop handing out items and report the first failure to the caller.
                Interlocked.Exchange(ref _next, int.MaxValue / 2);
                Interlocked.CompareExchange(ref _failure, ExceptionDispatchInfo.Capture(e), null);
            }
            Interlocked.Decrement(ref _members);
        }
    }

    /// <summary>Enters the open job, if one is open: the caller does not close it while a helper is inside.</summary>
    private bool TryJoin()
    {
        int members;
        while ((members = Volatile.Read(ref _members)) != Closed)
        {
            if (Interlocked.CompareExchange(ref _members, members + 1, members) == members)
            {
                return true;
            }
        }
        return false;
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        if (_threads.Length > 0)
        {
            _start.Release(_threads.Length);
        }
        foreach (Thread t in _threads)
        {
            t.Join();
        }
        _start.Dispose();
    }
}
