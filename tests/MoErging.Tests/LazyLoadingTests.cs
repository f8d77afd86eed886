using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using MoErging.Execution;
using MoErging.Execution.Cpu;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;

namespace MoErging.Tests;

/// <summary>
/// Lazily loaded libraries: validated in full at load, decoded on first use, bit-identical to eager loading,
/// thread-safe on first use, and a clear error when a weights file changed or vanished in between.
/// </summary>
public sealed class LazyLoadingTests
{
    private const string Q = "base_model.model.model.layers.0.self_attn.q_proj";
    private const string V = "base_model.model.model.layers.0.self_attn.v_proj";

    /// <summary>Three adapters stored as F32, F16 and BF16, with mixed ranks (rank_pattern) and scalings.</summary>
    private static string[] WriteLibrary(TestData data, TempDir tmp)
    {
        TensorDType[] storage = [TensorDType.F32, TensorDType.F16, TensorDType.BF16];
        var dirs = new string[3];
        for (int e = 0; e < 3; e++)
        {
            RawFactors q = data.Factors(2 + e, 24, 16), v = data.Factors(4, 24, 8);
            var expert = new Expert("x", [
                new(Q, new LoraFactors(q.A, q.B, q.Rank, 24, 16, q.Scaling)),
                new(V, new LoraFactors(v.A, v.B, v.Rank, 24, 8, v.Scaling)),
            ]);
            dirs[e] = tmp.Sub($"expert{e}");
            PeftAdapter.Write(dirs[e], expert, storage[e]);
        }
        return dirs;
    }

    private static void AssertBitsEqual(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        Assert.True(MemoryMarshal.AsBytes(expected).SequenceEqual(MemoryMarshal.AsBytes(actual)), $"{what}: values differ");
    }

    [Fact]
    public void LazyAndEagerLoadingGiveBitIdenticalFactorsAndForwards()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs = WriteLibrary(data, tmp);
        ExpertLibrary eager = ExpertLibrary.Load(dirs);
        ExpertLibrary lazy = ExpertLibrary.Load(dirs, lazy: true);

        foreach (AdaptedModule module in lazy.Modules)
        {
            for (int e = 0; e < 3; e++)
            {
                LoraFactors l = module.Factors(e)!, g = eager.Module(module.Name).Factors(e)!;
                Assert.False(l.IsLoaded, $"{module.Name}, expert {e}: decoded before first use");
                Assert.True(g.IsLoaded);
                // Shape, scaling, alpha and dtype come from the validated header and config, without decoding.
                Assert.True((l.Rank, l.InputDim, l.OutputDim, l.Scaling, l.Alpha, l.StorageType) ==
                    (g.Rank, g.InputDim, g.OutputDim, g.Scaling, g.Alpha, g.StorageType), $"{module.Name}, expert {e}");
                Assert.False(l.IsLoaded);
            }
        }

        // A forward touches only the module it runs on; its result is bit-identical to the eager library's.
        const int tokens = 6;
        float[] x = data.Normal(tokens * 24), yEager = data.Normal(tokens * 16), yLazy = (float[])yEager.Clone();
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 2 });
        using Session session = engine.CreateSession();
        var options = new RoutingOptions(TopK: 2);
        session.Forward(eager.Module("q_proj"), new ArrowRouter(eager.Module("q_proj"), options), x, new RoutingDecision(), yEager);
        session.Forward(lazy.Module("q_proj"), new ArrowRouter(lazy.Module("q_proj"), options), x, new RoutingDecision(), yLazy);
        Assert.True(yEager.AsSpan().SequenceEqual(yLazy), $"{data}: lazy and eager forwards differ");
        Assert.All(Enumerable.Range(0, 3), e => Assert.False(lazy.Module("v_proj").Factors(e)!.IsLoaded));

        foreach (AdaptedModule module in lazy.Modules)
        {
            for (int e = 0; e < 3; e++)
            {
                LoraFactors l = module.Factors(e)!, g = eager.Module(module.Name).Factors(e)!;
                string what = $"{data}: {module.Name}, expert {e}";
                AssertBitsEqual(g.A, l.A, what + " A");
                AssertBitsEqual(g.BTransposed, l.BTransposed, what + " Bᵀ");
                Assert.True(l.IsLoaded, what);
            }
        }
    }

    /// <summary>
    /// A CPU engine packs an expert (and converts it, at another precision than the library's) the first time a forward
    /// runs it, so a lazy library decodes only the experts routed to. The forward is bit-identical to one on a library
    /// loaded at the engine's precision (the same rounding, once).
    /// </summary>
    [Theory]
    [InlineData(WeightPrecision.Float32)]
    [InlineData(WeightPrecision.BFloat16)]
    [InlineData(WeightPrecision.Float16)]
    public void ACpuEngineDecodesOnlyTheExpertsItRuns(WeightPrecision precision)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs = WriteLibrary(data, tmp);
        ExpertLibrary lazy = ExpertLibrary.Load(dirs, lazy: true);
        ExpertLibrary held = ExpertLibrary.Load(dirs, new ExpertLibraryOptions { WeightPrecision = precision });
        const int tokens = 5;
        float[] x = data.Normal(tokens * 24), yBase = data.Normal(tokens * 16);
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 2, WeightPrecision = precision });
        var cpu = (CpuBackend)engine.Implementation;
        using Session session = engine.CreateSession();
        AdaptedModule module = lazy.Module("q_proj");
        // A zero weight routes nothing: only the expert of weight 1 runs.
        foreach (int routed in new[] { 1, 0 })
        {
            var router = new FixedRouter([.. Enumerable.Range(0, 3).Select(e => e == routed ? 1f : 0f)]);
            float[] y = (float[])yBase.Clone(), expected = (float[])yBase.Clone();
            session.Forward(module, router, x, new RoutingDecision(), y);
            for (int e = 0; e < 3; e++)
            {
                bool decoded = module.Factors(e)!.IsLoaded;
                Assert.True(decoded == (e <= 1 && e >= routed), $"{data}: {precision} engine after expert {routed}'s forward: expert {e} decoded: {decoded}");
            }
            // One copy of the lazy module, filled expert by expert (and, the second time, the held module's).
            Assert.Equal(routed == 1 ? 1 : 2, cpu.CopyCount);
            session.Forward(held.Module("q_proj"), router, x, new RoutingDecision(), expected);
            Assert.True(expected.AsSpan().SequenceEqual(y), $"{data}: {precision} engine, expert {routed}: the lazy library's forward differs from the held one's");
        }
        Assert.False(module.Factors(2)!.IsLoaded);
    }

    /// <summary>
    /// A weights file that vanished before its expert's first conversion fails that forward with the loader's error and
    /// leaves y as it was; nothing half-converted is kept, and the forward succeeds once the file is back.
    /// </summary>
    [Fact]
    public void AConversionWhoseFileVanishedFailsTheForwardCleanlyAndRetries()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs = WriteLibrary(data, tmp);
        ExpertLibrary lazy = ExpertLibrary.Load(dirs, lazy: true);
        ExpertLibrary held = ExpertLibrary.Load(dirs, new ExpertLibraryOptions { WeightPrecision = WeightPrecision.BFloat16 });
        const int tokens = 3;
        float[] x = data.Normal(tokens * 24), yBase = data.Normal(tokens * 16);
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 2, WeightPrecision = WeightPrecision.BFloat16 });
        using Session session = engine.CreateSession();
        var router = new FixedRouter([0.25f, 0.75f, 0f]);
        string weights = Path.Combine(dirs[0], PeftAdapter.WeightsFileName), away = weights + ".away";
        File.Move(weights, away);
        float[] y = (float[])yBase.Clone();
        var gone = Assert.Throws<FileNotFoundException>(() => session.Forward(lazy.Module("q_proj"), router, x, new RoutingDecision(), y));
        Assert.Contains($"{weights}: removed since the adapter was loaded", gone.Message);
        Assert.True(yBase.AsSpan().SequenceEqual(y), $"{data}: a failed forward changed y");
        File.Move(away, weights); // the same file, modification time kept
        session.Forward(lazy.Module("q_proj"), router, x, new RoutingDecision(), y);
        float[] expected = (float[])yBase.Clone();
        session.Forward(held.Module("q_proj"), router, x, new RoutingDecision(), expected);
        Assert.True(expected.AsSpan().SequenceEqual(y), $"{data}: the retried forward differs from the held library's");
    }

    /// <summary>
    /// Eight sessions of a fresh CPU engine make its first forward at once, on a fresh lazy library, so the decoding and
    /// the packing of every expert race: each session's result is, bit for bit, that of an engine that ran the same call
    /// alone on a library held in memory. A reader that found one factor's panels published without the other's, or
    /// a half-packed panel, would differ.
    /// </summary>
    [Theory]
    [InlineData(WeightPrecision.Float32)]
    [InlineData(WeightPrecision.BFloat16)]
    [InlineData(WeightPrecision.Float16)]
    public void ACpuEnginesFirstForwardFromManySessionsAtOnceAgreesWithOneAlone(WeightPrecision precision)
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs = WriteLibrary(data, tmp);
        const int tokens = 4, sessions = 8;
        float[] x = data.Normal(tokens * 24), yBase = data.Normal(tokens * 16);
        var router = new FixedRouter([0.2f, 0.3f, 0.5f]);
        float[] expected = (float[])yBase.Clone();
        using (Engine alone = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 1, WeightPrecision = precision }))
        using (Session session = alone.CreateSession())
        {
            session.Forward(ExpertLibrary.Load(dirs, new ExpertLibraryOptions { WeightPrecision = precision }).Module("q_proj"), router, x,
                new RoutingDecision(), expected);
        }
        for (int round = 0; round < 10; round++)
        {
            AdaptedModule module = ExpertLibrary.Load(dirs, lazy: true).Module("q_proj");
            using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, CpuThreads = 1, WeightPrecision = precision });
            var results = new float[sessions][];
            var failures = new System.Collections.Concurrent.ConcurrentQueue<Exception>();
            using var start = new Barrier(sessions);
            var threads = Enumerable.Range(0, sessions).Select(s => new Thread(() =>
            {
                try
                {
                    using Session session = engine.CreateSession();
                    float[] y = (float[])yBase.Clone();
                    start.SignalAndWait();
                    session.Forward(module, router, x, new RoutingDecision(), y);
                    results[s] = y;
                }
                catch (Exception e)
                {
                    failures.Enqueue(e);
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
            Assert.True(failures.IsEmpty, $"{data}: {precision}, round {round}: {failures.FirstOrDefault()}");
            for (int s = 0; s < sessions; s++)
            {
                Assert.True(expected.AsSpan().SequenceEqual(results[s]), $"{data}: {precision}, round {round}: session {s}'s first forward differs from the call alone");
            }
        }
    }

    [Fact]
    public void FirstUseFromManyThreadsDecodesOnce()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs = WriteLibrary(data, tmp);
        for (int round = 0; round < 5; round++)
        {
            LoraFactors f = ExpertLibrary.Load(dirs, lazy: true).Module("q_proj").Factors(round % 3)!;
            // The factors live in pinned arrays, so an address identifies the decoding a thread saw.
            var addresses = new nint[8];
            using var start = new Barrier(addresses.Length);
            var threads = Enumerable.Range(0, addresses.Length).Select(t => new Thread(() =>
            {
                start.SignalAndWait();
                unsafe
                {
                    addresses[t] = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(f.A));
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
            Assert.True(addresses.Distinct().Count() == 1, $"round {round}: threads saw {addresses.Distinct().Count()} different decodings");
        }
    }

    [Fact]
    public void AChangedOrVanishedFileIsAClearErrorOnFirstUse()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs = WriteLibrary(data, tmp);
        string weights = Path.Combine(dirs[0], PeftAdapter.WeightsFileName);

        // Rewritten with other contents (a longer header).
        ExpertLibrary library = ExpertLibrary.Load(dirs, lazy: true);
        Expert original = PeftAdapter.Load(dirs[0]);
        var longer = new SafeTensorsWriter();
        longer.Metadata["note"] = "retrained";
        foreach (var (module, f) in original.Modules)
        {
            var b = new float[f.OutputDim * f.Rank];
            f.CopyB(b);
            longer.Add(module + ".lora_A.weight", f.A, [f.Rank, f.InputDim]).Add(module + ".lora_B.weight", b, [f.OutputDim, f.Rank]);
        }
        longer.WriteTo(weights);
        var changed = Assert.Throws<InvalidDataException>(() => library.Module("q_proj").Factors(0)!.A.Length);
        Assert.Contains($"{weights}: changed since the adapter was loaded, so module '{Q}' cannot be read", changed.Message);
        Assert.False(library.Module("q_proj").Factors(0)!.IsLoaded);

        // Same length and entries, other modification time: still refused (the data may differ).
        library = ExpertLibrary.Load(dirs, lazy: true);
        File.SetLastWriteTimeUtc(weights, File.GetLastWriteTimeUtc(weights).AddSeconds(-5));
        Assert.Contains("changed since the adapter was loaded", Assert.Throws<InvalidDataException>(() => library.Module("v_proj").Factors(0)!.Load()).Message);

        // Truncated: no longer a valid file; the message says both.
        library = ExpertLibrary.Load(dirs, lazy: true);
        byte[] bytes = File.ReadAllBytes(weights);
        File.WriteAllBytes(weights, bytes[..^4]);
        var truncated = Assert.Throws<InvalidDataException>(() => library.Module("v_proj").Factors(0)!.Load());
        Assert.Contains("changed since the adapter was loaded", truncated.Message);
        Assert.Contains("the file holds only", truncated.Message);

        // Vanished.
        File.WriteAllBytes(weights, bytes);
        library = ExpertLibrary.Load(dirs, lazy: true);
        File.Delete(weights);
        var gone = Assert.Throws<FileNotFoundException>(() => library.Module("q_proj").Factors(0)!.Load());
        Assert.Contains($"{weights}: removed since the adapter was loaded, so module '{Q}' cannot be read", gone.Message);
        // Other experts' files are untouched and still load.
        library.Module("q_proj").Factors(1)!.Load();
    }

    [Fact]
    public void LazyLoadingIsStillAllOrNothing()
    {
        var data = new TestData();
        using var tmp = new TempDir();
        string[] dirs = WriteLibrary(data, tmp);
        // Expert 2's q_proj lora_A stored as I32: nothing a header check alone would catch, but the loader must.
        string bad = PeftAdapterTests.WriteAdapter(tmp.Sub("ints"), "{\"r\":2,\"target_modules\":[\"q_proj\"]}", w =>
        {
            w.Add(Q + ".lora_A.weight", new int[48], [2, 24]);
            w.Add(Q + ".lora_B.weight", data.Normal(32), [16, 2]);
        });
        foreach (bool lazy in new[] { false, true })
        {
            ExpertLibrary? library = null;
            var e = Assert.Throws<InvalidDataException>(() => library = ExpertLibrary.Load([dirs[0], dirs[1], bad], lazy));
            Assert.Contains("dtype I32", e.Message);
            Assert.Null(library);
            // Nothing of the failed load lives on: not even an open file (a successful lazy load holds none either).
            Assert.Equal(0, OpenFilesUnder(tmp.Path));
        }
        ExpertLibrary loaded = ExpertLibrary.Load(dirs, lazy: true);
        Assert.Equal(0, OpenFilesUnder(tmp.Path));

        // A truncated weights file in the middle: the lazy load throws at load, not at first use.
        File.WriteAllBytes(Path.Combine(dirs[1], PeftAdapter.WeightsFileName), File.ReadAllBytes(Path.Combine(dirs[1], PeftAdapter.WeightsFileName))[..^1]);
        Assert.Throws<InvalidDataException>(() => ExpertLibrary.Load(dirs, lazy: true));
        Assert.Equal(0, OpenFilesUnder(tmp.Path));
        GC.KeepAlive(loaded);
    }

    /// <summary>This process's open file descriptors on files under <paramref name="directory"/> (Linux; 0 elsewhere).</summary>
    private static int OpenFilesUnder(string directory)
    {
        if (!OperatingSystem.IsLinux())
        {
            return 0;
        }
        int count = 0;
        foreach (string fd in Directory.GetFiles("/proc/self/fd"))
        {
            try
            {
                count += new FileInfo(fd).LinkTarget?.StartsWith(directory + "/", StringComparison.Ordinal) == true ? 1 : 0;
            }
            catch (IOException)
            {
                // the descriptor closed while it was being read: another test's file
            }
        }
        return count;
    }
}
