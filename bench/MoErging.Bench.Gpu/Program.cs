using MoErging.Bench.Gpu;

// MoErging.Bench.Gpu [--backend cuda|opencl|gpu-simulator] [--device D] [--iterations N] [--out FILE] [--small]
try
{
    return GpuBenchmark.Run(args);
}
catch (Exception e) when (e is ArgumentException or MoErging.Execution.BackendUnavailableException)
{
    Console.Error.WriteLine($"MoErging.Bench.Gpu: {e.Message}");
    return 2;
}
