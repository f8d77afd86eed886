using MoErging.Bench.Gpu;

// MoErging.Bench.Gpu [--backend cuda|opencl|gpu-simulator] [--device D] [--iterations N] [--out FILE] [--small]
// MoErging.Bench.Gpu ptx DIR        (the kernels' PTX and each workload's launches, without a GPU)
try
{
    return args.Length > 0 && args[0] == "ptx" ? PtxCommand.Run(args) : GpuBenchmark.Run(args);
}
catch (Exception e) when (e is ArgumentException or MoErging.Execution.BackendUnavailableException)
{
    Console.Error.WriteLine($"MoErging.Bench.Gpu: {e.Message}");
    return 2;
}
