using System.Globalization;
using System.Text.Json;
using MoErging.Kernels;

namespace MoErging.Bench.Gpu;

/// <summary>
/// <c>ptx DIR</c>: the compiled CUDA code, without a GPU. Writes every kernel variant's PTX (sm_90, PTX ISA 7.8) as
/// <c>DIR/&lt;kernel&gt;_&lt;variant&gt;.ptx</c> and <c>DIR/launches.json</c>: for each standard workload the launches
/// one forward makes on a CUDA device (warp 32, 1,024 threads per group), in order, from the same functions the
/// launchers size their grids with. <c>bench/kernels-report.sh</c> assembles and summarises them.
/// </summary>
internal static class PtxCommand
{
    public static int Run(string[] args)
    {
        if (args.Length != 2)
        {
            throw new ArgumentException("usage: ptx DIR");
        }
        string dir = args[1];
        Directory.CreateDirectory(dir);
        foreach (CompiledKernel kernel in KernelCode.Ptx())
        {
            File.WriteAllText(Path.Combine(dir, kernel.Name + ".ptx"), kernel.Code);
            Console.WriteLine($"{kernel.Name}.ptx  ({kernel.Method})");
        }
        LaunchShape shape = LaunchShape.Cuda();
        var workloads = Workload.Standard(small: false).Select(w => new
        {
            name = w.Name,
            tokens = w.Tokens,
            experts = Workload.Experts,
            top_k = w.TopK,
            rank = Workload.Rank,
            d = Workload.Dim,
            routed = w.Routed,
            launches = shape.Forward(w.Tokens, Workload.Experts, w.TopK, Workload.Rank, Workload.Dim, w.Routed).Select(l => new
            {
                kernel = l.Kernel,
                groups = l.Groups,
                group_size = l.GroupSize,
                shared_bytes = l.SharedBytes,
                bulk = l.Bulk,
            }),
        });
        string json = JsonSerializer.Serialize(new { device = "CUDA, warp 32, 1024 threads per group", workloads }, new JsonSerializerOptions { WriteIndented = true });
        File.WriteAllText(Path.Combine(dir, "launches.json"), json + "\n");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"launches.json ({workloads.Count()} workloads)"));
        return 0;
    }
}
