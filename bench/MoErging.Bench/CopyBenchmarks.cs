using BenchmarkDotNet.Attributes;

namespace MoErging.Bench;

/// <summary>
/// The machine's copy bandwidth, measured in the same run as the forward: 256 MB copied by every
/// processor in parallel (each its own contiguous part), far beyond any cache. GB/s counts bytes read
/// plus bytes written, the same accounting as the forward's minimum bytes.
/// </summary>
[MemoryDiagnoser]
public class CopyBenchmarks
{
    public const long Bytes = 256L << 20;

    /// <summary>Bytes read plus written per call.</summary>
    public const long BytesMoved = 2 * Bytes;

    private byte[] _source = [];
    private byte[] _destination = [];
    private Thread[] _workers = [];
    private Barrier? _start;
    private Barrier? _done;
    private volatile bool _stop;

    [GlobalSetup]
    public void Setup()
    {
        _source = GC.AllocateUninitializedArray<byte>((int)Bytes, pinned: true);
        _destination = GC.AllocateUninitializedArray<byte>((int)Bytes, pinned: true);
        new Random(1).NextBytes(_source);
        _destination.AsSpan().Fill(1);
        int parts = Environment.ProcessorCount;
        _start = new Barrier(parts);
        _done = new Barrier(parts);
        // Dedicated threads, released by a barrier: the copy itself is all that is timed.
        _workers = [.. Enumerable.Range(1, parts - 1).Select(p => new Thread(() => Worker(p, parts)) { IsBackground = true })];
        foreach (Thread t in _workers)
        {
            t.Start();
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _stop = true;
        _start?.SignalAndWait();
        foreach (Thread t in _workers)
        {
            t.Join();
        }
    }

    [Benchmark(Description = "copy 256 MB (all cores)")]
    public void Copy()
    {
        int parts = _workers.Length + 1;
        _start!.SignalAndWait();
        CopyPart(0, parts);
        _done!.SignalAndWait();
    }

    private void Worker(int part, int parts)
    {
        while (true)
        {
            _start!.SignalAndWait();
            if (_stop)
            {
                return;
            }
            CopyPart(part, parts);
            _done!.SignalAndWait();
        }
    }

    private void CopyPart(int part, int parts)
    {
        long chunk = Bytes / parts;
        _source.AsSpan((int)(part * chunk), (int)chunk).CopyTo(_destination.AsSpan((int)(part * chunk), (int)chunk));
    }
}
