using BenchmarkDotNet.Attributes;
using MoErging.Samples;

namespace MoErging.Bench;

/// <summary>
/// The machine's copy bandwidth, measured in the same run as the forward: 256 MB copied by every
/// processor in parallel (each its own contiguous part), far beyond any cache (<see cref="ParallelCopy"/>, which
/// the demo measures with too). GB/s counts bytes read plus bytes written, the same accounting as the forward's minimum bytes.
/// The read of the same 256 MB, by every processor, is the other yardstick: a forward's bytes are almost all reads.
/// </summary>
[MemoryDiagnoser]
public class CopyBenchmarks
{
    public const int Bytes = 256 << 20;

    /// <summary>Bytes read plus written per call.</summary>
    public const long BytesMoved = 2L * Bytes;

    private ParallelCopy? _copy;

    [GlobalSetup]
    public void Setup() => _copy = new ParallelCopy(Bytes, Environment.ProcessorCount);

    [GlobalCleanup]
    public void Cleanup() => _copy?.Dispose();

    [Benchmark(Description = "copy 256 MB (all cores)")]
    public void Copy() => _copy!.Copy();

    [Benchmark(Description = "read 256 MB (all cores)")]
    public void Read() => _copy!.Read();
}
