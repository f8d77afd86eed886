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
/// pool busy (another session on another thread) runs its job alone rather than waiting. The caller
/// waits for the helpers' last items by spinning and yielding, never blocking: helpers are then at most
/// one item from done, and a blocking wait on a thread-pool thread makes the runtime allocate.
/// </summary>
internal sealed class WorkerPool : IDisposable
{
    private readonly Thread[] _threads;
    private readonly SemaphoreSlim _start = new(0);
    private ParallelJob? _job;
    private int _count;
    private int _next;
    private int _running;
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
            _running = helpers;
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
            while (Volatile.Read(ref _running) != 0) // helpers still hold the job until they finish
            {
                spinner.SpinOnce(sleep1Threshold: -1);
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
        while (true)
        {
            _start.Wait();
            if (_disposed)
            {
                return;
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
            Interlocked.Decrement(ref _running);
        }
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
