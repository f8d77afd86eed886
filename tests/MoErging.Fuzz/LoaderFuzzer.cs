using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Fuzz;

/// <summary>How the loaders handled one case.</summary>
public enum FuzzOutcome
{
    /// <summary>The adapter loaded (eagerly and lazily, with identical results).</summary>
    Accepted,

    /// <summary>Every loader threw one of its documented exception types.</summary>
    Rejected,

    /// <summary>An undocumented exception, a hang, or eager and lazy loading disagreeing.</summary>
    Crashed,
}

/// <summary>The result of one case: its outcome and, unless accepted, the exception type and message (or what crashed).</summary>
public sealed record FuzzResult(FuzzCase Case, FuzzOutcome Outcome, string Detail);

/// <summary>Counts over a run, with the first crashes kept in full.</summary>
public sealed class FuzzSummary
{
    public long Tried;
    public long Rejected;
    public long Accepted;
    public long Crashed;
    public ConcurrentDictionary<string, long> RejectedBy { get; } = new(StringComparer.Ordinal);
    public ConcurrentQueue<FuzzResult> Crashes { get; } = new();
    public bool Hung { get; set; }
    public TimeSpan Elapsed { get; set; }
}

/// <summary>
/// Runs fuzz cases against the loaders. Each case is written as a real adapter directory and given to
/// (1) <see cref="SafeTensorsFile.FromBytes"/> with every tensor read back, (2) <see cref="PeftAdapter.Load"/> eagerly and
/// (3) lazily, with every module then decoded. A case is rejected cleanly when each loader throws only the exception
/// types it documents; anything else, a case that runs past the time limit, or eager and lazy loading that disagree
/// (in outcome, or in a single bit of the factors) is a crash.
/// </summary>
public sealed class LoaderFuzzer(int seed, string workDirectory)
{
    /// <summary>What the safetensors reader documents for malformed bytes.</summary>
    private static bool SafeTensorsRejection(Exception e) => e is InvalidDataException;

    /// <summary>What <see cref="PeftAdapter.Load"/> documents.</summary>
    private static bool AdapterRejection(Exception e) =>
        e is InvalidDataException or NotSupportedException or FileNotFoundException or DirectoryNotFoundException;

    public int Seed => seed;

    /// <summary>Where cases are written by default: /dev/shm when the system has it (the run is disk-bound otherwise), else the temp folder.</summary>
    public static string DefaultWorkRoot => Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();

    /// <summary>Runs cases [first, first + count) on <paramref name="threads"/> workers; stops early on a hang.</summary>
    public FuzzSummary Run(long first, long count, int threads, TimeSpan limit, Action<long>? progress = null)
    {
        var summary = new FuzzSummary();
        var clock = Stopwatch.StartNew();
        long next = first - 1;
        void Work(int w)
        {
            string dir = Path.Combine(workDirectory, $"worker{w}", "adapter");
            long index;
            while (!summary.Hung && (index = Interlocked.Increment(ref next)) < first + count)
            {
                FuzzResult? result = null;
                long current = index;
                // A case runs on its own thread so a hang is noticed; a hung thread is left behind (background) and the run stops.
                var runner = new Thread(() => result = BuildAndRun(seed, current, dir)) { IsBackground = true };
                runner.Start();
                if (!runner.Join(limit))
                {
                    summary.Hung = true;
                    result = new FuzzResult(new FuzzCase(index, null, null, ["(still running)"], false, false), FuzzOutcome.Crashed,
                        $"did not finish within {limit.TotalSeconds:F0} s");
                }
                Count(summary, result!);
                progress?.Invoke(Interlocked.Read(ref summary.Tried));
            }
        }
        var workers = Enumerable.Range(0, threads).Select(w => new Thread(() => Work(w)) { IsBackground = true }).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => t.Join());
        summary.Elapsed = clock.Elapsed;
        return summary;
    }

    /// <summary>Builds and runs a case; a failure of the fuzzer itself (building or writing the case) is reported as a crash too.</summary>
    private static FuzzResult BuildAndRun(int seed, long index, string dir)
    {
        FuzzCase c = new(index, null, null, ["(not built)"], false, false);
        try
        {
            c = FuzzCase.Build(seed, index);
            return RunCase(c, dir);
        }
        catch (Exception e)
        {
            return new FuzzResult(c, FuzzOutcome.Crashed, $"fuzzer failed to build or write the case: {e}");
        }
    }

    private static void Count(FuzzSummary summary, FuzzResult result)
    {
        Interlocked.Increment(ref summary.Tried);
        switch (result.Outcome)
        {
            case FuzzOutcome.Accepted:
                Interlocked.Increment(ref summary.Accepted);
                break;
            case FuzzOutcome.Rejected:
                Interlocked.Increment(ref summary.Rejected);
                summary.RejectedBy.AddOrUpdate(result.Detail[..result.Detail.IndexOf(':')], 1, (_, n) => n + 1);
                break;
            default:
                Interlocked.Increment(ref summary.Crashed);
                if (summary.Crashes.Count < 20)
                {
                    summary.Crashes.Enqueue(result);
                }
                break;
        }
    }

    /// <summary>Writes the case into <paramref name="dir"/> (replacing what was there) and runs every loader on it.</summary>
    public static FuzzResult RunCase(FuzzCase c, string dir)
    {
        Write(c, dir);
        bool bytesRejected = false;
        if (c.Weights is not null)
        {
            try
            {
                using SafeTensorsFile file = SafeTensorsFile.FromBytes(c.Weights, "fuzz");
                foreach (TensorInfo t in file.Tensors)
                {
                    var bytes = new byte[t.ByteCount];
                    file.ReadBytes(t, bytes);
                    if (TensorDTypes.IsFloatingPoint(t.DType))
                    {
                        file.ReadSingles(t, new float[t.ElementCount]);
                    }
                }
            }
            catch (Exception e) when (!SafeTensorsRejection(e))
            {
                return new FuzzResult(c, FuzzOutcome.Crashed, $"safetensors reader: {e}");
            }
            catch (Exception)
            {
                bytesRejected = true; // cleanly; then the adapter loaders, reading the same bytes from the file, must reject it too
            }
        }

        (Expert? eager, Exception? eagerError) = Attempt(() => PeftAdapter.Load(dir));
        (Expert? lazy, Exception? lazyError) = Attempt(() =>
        {
            Expert expert = PeftAdapter.Load(dir, lazy: true);
            foreach (LoraFactors f in expert.Modules.Values)
            {
                f.Load();
            }
            foreach (SavedTensor t in expert.SavedTensors)
            {
                _ = t.ReadBytes();
            }
            return expert;
        });
        foreach (Exception? e in new[] { eagerError, lazyError })
        {
            if (e is not null && !AdapterRejection(e))
            {
                return new FuzzResult(c, FuzzOutcome.Crashed, $"adapter loader ({(e == eagerError ? "eager" : "lazy")}): {e}");
            }
        }
        if (eager is null || lazy is null)
        {
            return eagerError?.GetType() == lazyError?.GetType()
                ? new FuzzResult(c, FuzzOutcome.Rejected, $"{eagerError!.GetType().Name}: {eagerError.Message}")
                : new FuzzResult(c, FuzzOutcome.Crashed, $"eager and lazy loading disagree: {Name(eagerError)} against {Name(lazyError)}");
        }
        if (bytesRejected && !c.WeightsIsDirectory)
        {
            return new FuzzResult(c, FuzzOutcome.Crashed, "the in-memory reader rejected weights that the adapter loader accepted from the file");
        }
        string? difference = Difference(eager, lazy);
        return difference is null
            ? new FuzzResult(c, FuzzOutcome.Accepted, "")
            : new FuzzResult(c, FuzzOutcome.Crashed, $"eager and lazy loading disagree: {difference}");
    }

    private static string Name(Exception? e) => e is null ? "success" : $"{e.GetType().Name} ({e.Message})";

    private static (Expert?, Exception?) Attempt(Func<Expert> load)
    {
        try
        {
            return (load(), null);
        }
        catch (Exception e)
        {
            return (null, e);
        }
    }

    private static string? Difference(Expert eager, Expert lazy)
    {
        if (!eager.Modules.Keys.Order(StringComparer.Ordinal).SequenceEqual(lazy.Modules.Keys.Order(StringComparer.Ordinal)))
        {
            return "module names";
        }
        if (!eager.SavedTensors.Select(t => (t.Name, t.Module, t.DType)).SequenceEqual(lazy.SavedTensors.Select(t => (t.Name, t.Module, t.DType))))
        {
            return "saved tensors";
        }
        foreach (var (name, x) in eager.Modules)
        {
            LoraFactors y = lazy.Modules[name];
            if ((x.Rank, x.InputDim, x.OutputDim, x.Scaling, x.Alpha, x.StorageType) != (y.Rank, y.InputDim, y.OutputDim, y.Scaling, y.Alpha, y.StorageType)
                || !MemoryMarshal.AsBytes(x.A).SequenceEqual(MemoryMarshal.AsBytes(y.A))
                || !MemoryMarshal.AsBytes(x.BTransposed).SequenceEqual(MemoryMarshal.AsBytes(y.BTransposed)))
            {
                return $"module '{name}'";
            }
        }
        return null;
    }

    /// <summary>
    /// Lays the case out as an adapter directory, replacing what the previous case left. Files are overwritten in
    /// place and removed only when the case lacks them: deleting on every case made the run I/O-bound.
    /// </summary>
    public static void Write(FuzzCase c, string dir)
    {
        Directory.CreateDirectory(dir);
        Place(Path.Combine(dir, PeftAdapter.ConfigFileName), c.Config, asDirectory: false);
        Place(Path.Combine(dir, PeftAdapter.WeightsFileName), c.Weights, c.WeightsIsDirectory);
        Place(Path.Combine(dir, "adapter_model.bin"), c.PickleBeside ? [0x80, 0x02] : null, asDirectory: false);
    }

    private static void Place(string path, byte[]? bytes, bool asDirectory)
    {
        if (Directory.Exists(path) && !asDirectory)
        {
            Directory.Delete(path);
        }
        if (asDirectory)
        {
            if (File.Exists(path))
            {
                File.Delete(path);
            }
            Directory.CreateDirectory(path);
        }
        else if (bytes is null)
        {
            File.Delete(path);
        }
        else
        {
            File.WriteAllBytes(path, bytes);
        }
    }
}
