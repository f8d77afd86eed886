using System.Diagnostics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace MoErging.Samples;

/// <summary>
/// The machine's copy bandwidth, the yardstick a forward's bytes are measured against (the demo and the benchmarks):
/// one buffer copied into another by <see cref="Threads"/> threads at once, each its own contiguous part. The buffers
/// are pinned and written before the first copy, and the threads are dedicated and released by a barrier, so a copy
/// times only the copying. Bandwidth counts bytes read plus bytes written, the same accounting as a forward's minimum bytes.
/// <see cref="Read"/> measures the other yardstick, reading alone (a forward's bytes are almost all reads), the same way.
/// </summary>
public sealed class ParallelCopy : IDisposable
{
    private readonly byte[] _source;
    private readonly byte[] _destination;
    private readonly Thread[] _workers;
    private readonly Barrier _start;
    private readonly Barrier _done;
    private volatile bool _stop;
    private volatile bool _reading;
    private int _checksum;

    /// <summary>Allocates both buffers and starts the threads (the calling thread is the first of them).</summary>
    /// <param name="bytes">Size of each buffer; far beyond the caches for a memory bandwidth.</param>
    /// <param name="threads">Threads copying at once, at least 1.</param>
    public ParallelCopy(int bytes, int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bytes, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        Bytes = bytes;
        Threads = threads;
        _source = GC.AllocateUninitializedArray<byte>(bytes, pinned: true);
        _destination = GC.AllocateUninitializedArray<byte>(bytes, pinned: true);
        new Random(1).NextBytes(_source);
        _destination.AsSpan().Fill(1);
        _start = new Barrier(threads);
        _done = new Barrier(threads);
        _workers = [.. Enumerable.Range(1, threads - 1).Select(p => new Thread(() => Worker(p)) { IsBackground = true })];
        foreach (Thread t in _workers)
        {
            t.Start();
        }
    }

    /// <summary>Size of each buffer.</summary>
    public int Bytes { get; }

    /// <summary>Bytes read plus written by one <see cref="Copy"/>.</summary>
    public long BytesMoved => 2L * Bytes;

    /// <summary>Threads copying at once.</summary>
    public int Threads { get; }

    /// <summary>One copy of the whole buffer, by every thread; returns when all are done.</summary>
    public void Copy()
    {
        ObjectDisposedException.ThrowIf(_stop, this);
        _start.SignalAndWait();
        CopyPart(0);
        _done.SignalAndWait();
    }

    /// <summary>One read of the whole source buffer, by every thread (each sums its part); returns when all are done.</summary>
    public void Read()
    {
        ObjectDisposedException.ThrowIf(_stop, this);
        _reading = true;
        _start.SignalAndWait();
        ReadPart(0);
        _done.SignalAndWait();
        _reading = false;
    }

    /// <summary>The best of <paramref name="runs"/> copies, in GB/s (10⁹ bytes read plus written per second).</summary>
    public double BestGigabytesPerSecond(int runs) => Best(runs, Copy, BytesMoved);

    /// <summary>The best of <paramref name="runs"/> reads, in GB/s (10⁹ bytes read per second).</summary>
    public double BestReadGigabytesPerSecond(int runs) => Best(runs, Read, Bytes);

    private static double Best(int runs, Action pass, long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(runs, 1);
        double best = double.MaxValue;
        for (int run = 0; run < runs; run++)
        {
            long start = Stopwatch.GetTimestamp();
            pass();
            best = Math.Min(best, Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
        return bytes / best / 1e9;
    }

    /// <summary>Stops the threads.</summary>
    public void Dispose()
    {
        if (_stop)
        {
            return;
        }
        _stop = true;
        _start.SignalAndWait();
        foreach (Thread t in _workers)
        {
            t.Join();
        }
        _start.Dispose();
        _done.Dispose();
    }

    private void Worker(int part)
    {
        while (true)
        {
            _start.SignalAndWait();
            if (_stop)
            {
                return;
            }
            if (_reading)
            {
                ReadPart(part);
            }
            else
            {
                CopyPart(part);
            }
            _done.SignalAndWait();
        }
    }

    /// <summary>Part p of Threads; the last takes the remainder, so every byte is copied once.</summary>
    private void CopyPart(int part)
    {
        (int start, int length) = Part(part);
        _source.AsSpan(start, length).CopyTo(_destination.AsSpan(start, length));
    }

    /// <summary>Part p summed as integers (whole ones; a remainder under 4 bytes is left unread), kept so that the read stays.</summary>
    private void ReadPart(int part)
    {
        (int start, int length) = Part(part);
        Interlocked.Add(ref _checksum, TensorPrimitives.Sum<int>(MemoryMarshal.Cast<byte, int>(_source.AsSpan(start, length))));
    }

    private (int Start, int Length) Part(int part)
    {
        int chunk = Bytes / Threads, start = part * chunk;
        return (start, part == Threads - 1 ? Bytes - start : chunk);
    }
}
