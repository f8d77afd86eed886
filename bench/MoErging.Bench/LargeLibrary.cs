using System.Diagnostics;
using System.Globalization;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Samples;

namespace MoErging.Bench;

/// <summary>
/// The large-library measurement: E synthetic PEFT adapters (one q_proj module each, d_in = d_out = D, rank R, F32)
/// written once, then loaded in a fresh process, eagerly or lazily, reporting load time and memory.
/// <c>library write DIR [E] [D] [R]</c> writes them; <c>library load DIR eager|lazy</c> measures one load.
/// </summary>
internal static class LargeLibrary
{
    private const string Module = "base_model.model.model.layers.0.self_attn.q_proj";

    public static int Run(string[] args)
    {
        if (args is ["write", string dir, ..])
        {
            int experts = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 1000;
            int dim = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 4096;
            int rank = args.Length > 4 ? int.Parse(args[4], CultureInfo.InvariantCulture) : 16;
            Write(dir, experts, dim, rank);
            return 0;
        }
        if (args is ["load", string root, "eager" or "lazy"])
        {
            Load(root, args[2] == "lazy");
            return 0;
        }
        Console.Error.WriteLine("usage: library write DIR [experts] [dim] [rank] | library load DIR eager|lazy");
        return 2;
    }

    private static void Write(string dir, int experts, int dim, int rank)
    {
        var clock = Stopwatch.StartNew();
        for (int e = 0; e < experts; e++)
        {
            // One expert at a time, so writing a large library needs the memory of one adapter.
            Expert expert = SyntheticExperts.Create(1, dim, rank, [Module], seed: 1000 + e).Library.Experts[0];
            PeftAdapter.Write(Path.Combine(dir, $"expert-{e:D4}"), expert);
        }
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wrote {experts} adapters (d = {dim}, r = {rank}, F32, {2L * rank * dim * 4 / 1024} KiB of factors each) to {dir} in {clock.Elapsed.TotalSeconds:F1} s"));
    }

    private static void Load(string root, bool lazy)
    {
        string[] dirs = Directory.GetDirectories(root).Order(StringComparer.Ordinal).ToArray();
        long heapBefore = GC.GetTotalMemory(forceFullCollection: true);
        long workingSetBefore = Environment.WorkingSet;
        var clock = Stopwatch.StartNew();
        ExpertLibrary library = ExpertLibrary.Load(dirs, lazy);
        double loadSeconds = clock.Elapsed.TotalSeconds;
        Report($"{(lazy ? "lazy" : "eager")} load of {library.ExpertCount} adapters: {loadSeconds:F2} s", heapBefore, workingSetBefore);
        if (!lazy)
        {
            return;
        }
        AdaptedModule module = library.Modules[0];
        clock.Restart();
        module.Factors(0)!.Load();
        Report($"first use of one expert's factors: {clock.Elapsed.TotalMilliseconds:F2} ms", heapBefore, workingSetBefore);
        clock.Restart();
        for (int e = 0; e < module.ExpertCount; e++)
        {
            module.Factors(e)!.Load();
        }
        Report($"first use of all the others: {clock.Elapsed.TotalSeconds:F2} s", heapBefore, workingSetBefore);
    }

    private static void Report(string what, long heapBefore, long workingSetBefore)
    {
        long heap = GC.GetTotalMemory(forceFullCollection: true) - heapBefore;
        using var process = Process.GetCurrentProcess();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{what}; managed heap +{heap / 1048576.0:F1} MiB, working set +{(process.WorkingSet64 - workingSetBefore) / 1048576.0:F1} MiB (peak {process.PeakWorkingSet64 / 1048576.0:F1} MiB)"));
    }
}
