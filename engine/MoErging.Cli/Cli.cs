using System.Reflection;
using System.Text.RegularExpressions;
using MoErging.Execution;

namespace MoErging.Cli;

/// <summary>
/// The <c>moerge</c> command line. Errors go to stderr as one line (the stack trace only with
/// <c>--verbose</c>); exit codes: 0 success, 1 failure, 2 usage error.
/// </summary>
internal static partial class Cli
{
    /// <summary>A command: what it does, and how it runs (options, stdout, stderr).</summary>
    private sealed record Command(string Summary, Func<string[], TextWriter, TextWriter, int> Run);

    /// <summary>Every command, in the order the usage lists them.</summary>
    private static readonly (string Name, Command Command)[] Commands =
    [
        ("demo", new("write a synthetic library of PEFT adapters, load it, route tokens with Arrow, and time the forward", (a, o, _) => DemoCommand.Run(a, o))),
        ("devices", new("list the CUDA and OpenCL devices, and whether the engine runs on each or why not", (a, o, _) => DevicesCommand.Run(a, o))),
        ("inspect", new("list each expert's modules, ranks, alpha, scaling and dtype", InspectCommand.Run)),
        ("forward", new("route the rows of a safetensors input among experts and write y and the routing decision", ForwardCommand.Run)),
        ("route", new("route the rows of a safetensors input and report the routing (statistics, JSON, pictures)", RouteCommand.Run)),
        ("evaluate", new("compare every applicable router on a labelled routing set (or a synthetic one), side by side", EvaluateCommand.Run)),
        ("centroids", new("compute each expert's centroids from sample hidden states, for the centroid router", CentroidsCommand.Run)),
        ("train-router", new("train a classifier router on a labelled routing set", TrainRouterCommand.Run)),
        ("merge", new("merge experts into one PEFT adapter (cat, linear, svd, ties, dare_*, magnitude_prune), or into base weights", MergeCommand.Run)),
    ];

    private static string Usage
    {
        get
        {
            int width = Commands.Max(c => c.Name.Length);
            string list = string.Join("\n", Commands.Select(c => $"  {c.Name.PadRight(width)}  {c.Command.Summary}"));
            return $"""
                moerge: route tokens among LoRA experts and add their weighted outputs

                usage: moerge COMMAND [options]   (moerge COMMAND --help for its options)

                commands:
                {list}

                global options:
                  --verbose   print stack traces with errors
                  --version   print the version
                """;
        }
    }

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        bool verbose = args.Contains("--verbose");
        string[] rest = [.. args.Where(a => a != "--verbose")];
        if (rest.Length == 0 || rest[0] is "--help" or "-h" or "help")
        {
            (rest.Length == 0 ? stderr : stdout).WriteLine(Usage);
            return rest.Length == 0 ? 2 : 0;
        }
        if (rest[0] == "--version")
        {
            stdout.WriteLine($"moerge {Version}");
            return 0;
        }
        string name = rest[0];
        Command? command = Commands.FirstOrDefault(c => c.Name == name).Command;
        try
        {
            return command is null
                ? throw new UsageException($"unknown command '{name}'")
                : command.Run(rest[1..], stdout, stderr);
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"moerge: {OneLine(Plain(e))}");
            stderr.WriteLine(command is not null ? $"run 'moerge {name} --help' for its options" : "run 'moerge --help' for the commands");
            return 2;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"moerge: error: {OneLine(Paths.Describe(e, rest) ?? Plain(e))}");
            if (verbose)
            {
                stderr.WriteLine(e);
            }
            return 1;
        }
    }

    /// <summary>The engine's version (Directory.Build.props), without the commit a source-linked build appends after '+'.</summary>
    public static string Version =>
        typeof(Engine).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "unknown";

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

    /// <summary>
    /// The message without the parameter name ArgumentException appends (" (Parameter 'name')", also where a
    /// message was wrapped into another), which means nothing on the command line, and with
    /// ArgumentOutOfRangeException's "Actual value was v." as " (got v)"; also for usage errors, which may carry
    /// such a message from the options' own check. A null argument's message is only
    /// "Value cannot be null" without the name, so it stays whole.
    /// </summary>
    private static string Plain(Exception e) =>
        e is ArgumentNullException ? e.Message : ActualValue().Replace(ParameterName().Replace(e.Message, ""), " (got $1)");

    [GeneratedRegex(@" \(Parameter '[^']*'\)")]
    private static partial Regex ParameterName();

    [GeneratedRegex(@"\r?\nActual value was (.*)\.")]
    private static partial Regex ActualValue();
}
