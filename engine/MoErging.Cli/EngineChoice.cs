using MoErging.Execution;

namespace MoErging.Cli;

/// <summary>The options every command that runs an engine takes: --backend, --device and --weight-precision.</summary>
internal static class EngineChoice
{
    public const string Help = """
          --backend           auto (default: CUDA, then an OpenCL GPU, then the CPU), cpu, cuda, opencl, or
                              gpu-simulator (the GPU kernels on ILGPU's CPU accelerator: slow, for debugging)
          --device            a GPU device: an index from 'moerge devices', or a case-insensitive part of a
                              device's name, platform or vendor, such as rusticl or pocl (default: the
                              backend's first usable device)
          --weight-precision  f32 (default), bf16 or f16: how the engine stores the experts' factors and the
                              routers' prototypes, rounded once; the experts are loaded at it, and a factor
                              stored in that format is kept bit for bit
        """;

    /// <summary>The option names, added to a command's own.</summary>
    public static Dictionary<string, OptionKind> With(Dictionary<string, OptionKind> options)
    {
        options["backend"] = OptionKind.Single;
        options["device"] = OptionKind.Single;
        options["weight-precision"] = OptionKind.Single;
        return options;
    }

    /// <summary>The engine options the command line asks for.</summary>
    public static EngineOptions Options(CommandLine line, int cpuThreads = 0)
    {
        Backend backend = Cli.ParseBackend(line.Single("backend"));
        string? device = line.Single("device");
        if (device is not null && backend is Backend.Cpu or Backend.GpuSimulator)
        {
            throw new UsageException($"--device chooses a GPU device; --backend {line.Single("backend")} takes none");
        }
        WeightPrecision precision = line.Single("weight-precision") switch
        {
            null or "f32" => WeightPrecision.Float32,
            "bf16" => WeightPrecision.BFloat16,
            "f16" => WeightPrecision.Float16,
            string other => throw new UsageException($"--weight-precision must be f32, bf16 or f16, got '{other}'"),
        };
        return new EngineOptions { Backend = backend, Device = device, WeightPrecision = precision, CpuThreads = cpuThreads };
    }
}
