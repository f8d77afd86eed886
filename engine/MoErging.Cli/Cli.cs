using MoErging.Execution;

namespace MoErging.Cli;

/// <summary>
/// The <c>moerge</c> command line. Errors go to stderr as one line (the stack trace only with
/// <c>--verbose</c>); exit codes: 0 success, 1 failure, 2 usage error.
/// </summary>
internal static class Cli
{
    private const string Usage = """
        moerge: route tokens among LoRA experts and add their weighted outputs

        usage: moerge COMMAND [options]   (moerge COMMAND --help for its options)

        commands:
          demo          write a synthetic library of PEFT adapters, load it, route tokens with Arrow, and time the forward
          inspect       list each expert's modules, ranks, alpha, scaling and dtype
          forward       route the rows of a safetensors input among experts and write y and the routing decision
          route         route the rows of a safetensors input and report the routing (statistics, JSON, pictures)
          evaluate      compare every applicable router on a labelled routing set (or a synthetic one), side by side
          centroids     compute each expert's centroids from sample hidden states, for the centroid router
          train-router  train a classifier router on a labelled routing set

        global options:
          --verbose   print stack traces with errors
        """;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        bool verbose = args.Contains("--verbose");
        string[] rest = [.. args.Where(a => a != "--verbose")];
        if (rest.Length == 0 || rest[0] is "--help" or "-h" or "help")
        {
            (rest.Length == 0 ? stderr : stdout).WriteLine(Usage);
            return rest.Length == 0 ? 2 : 0;
        }
        string command = rest[0];
        string[] options = rest[1..];
        try
        {
            return command switch
            {
                "demo" => DemoCommand.Run(options, stdout),
                "inspect" => InspectCommand.Run(options, stdout),
                "forward" => ForwardCommand.Run(options, stdout),
                "route" => RouteCommand.Run(options, stdout),
                "evaluate" => EvaluateCommand.Run(options, stdout),
                "centroids" => CentroidsCommand.Run(options, stdout),
                "train-router" => TrainRouterCommand.Run(options, stdout),
                _ => throw new UsageException($"unknown command '{command}'"),
            };
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"moerge: {e.Message}");
            stderr.WriteLine(command is "demo" or "inspect" or "forward" or "route" or "evaluate" or "centroids" or "train-router" ? $"run 'moerge {command} --help' for its options" : "run 'moerge --help' for the commands");
            return 2;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"moerge: error: {OneLine(e.Message)}");
            if (verbose)
            {
                stderr.WriteLine(e);
            }
            return 1;
        }
    }

    /// <summary>Whether the arguments ask for help; prints it if so.</summary>
    public static bool Help(string[] args, string text, TextWriter stdout)
    {
        if (args.Contains("--help") || args.Contains("-h"))
        {
            stdout.WriteLine(text);
            return true;
        }
        return false;
    }

    /// <summary>Parses --backend.</summary>
    public static Backend ParseBackend(string? text) => text switch
    {
        null or "auto" => Backend.Auto,
        "cpu" => Backend.Cpu,
        "cuda" => Backend.Cuda,
        "opencl" => Backend.OpenCL,
        "gpu-simulator" => Backend.GpuSimulator,
        _ => throw new UsageException($"--backend must be auto, cpu, cuda, opencl or gpu-simulator, got '{text}'"),
    };

    private static string OneLine(string message) => message.ReplaceLineEndings(" ");
}
