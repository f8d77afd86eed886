using MoErging.Execution;
using MoErging.Experts;

namespace MoErging.Cli;

/// <summary>
/// The experts of a command, given as <c>DIR</c> or <c>NAME=DIR</c>, with <c>--strict</c> to refuse experts of
/// different base models. The library's warnings go to stderr once, as it loads.
/// </summary>
internal static class ExpertsOption
{
    public const string Help = """
          --experts [NAME=]DIR...
                              PEFT LoRA adapter directories, in expert order; NAME=DIR names an expert (by
                              default its directory's name, lengthened by parents to tell same-named ones apart)
          --strict            refuse experts whose configs name different base models (a warning otherwise)
        """;

    /// <summary>Adds --experts and --strict to a command's options.</summary>
    public static void AddTo(IDictionary<string, OptionKind> options)
    {
        options["experts"] = OptionKind.Many;
        options["strict"] = OptionKind.Flag;
    }

    /// <summary>Splits <c>NAME=DIR</c> specs; a spec that is itself an existing directory is a directory, '=' and all.</summary>
    public static (string[] Directories, string?[] Names) Parse(IReadOnlyList<string> specs)
    {
        var dirs = new string[specs.Count];
        var names = new string?[specs.Count];
        for (int i = 0; i < specs.Count; i++)
        {
            string spec = specs[i];
            int eq = spec.IndexOf('=');
            if (eq <= 0 || Directory.Exists(spec))
            {
                dirs[i] = spec;
                continue;
            }
            names[i] = spec[..eq];
            dirs[i] = spec[(eq + 1)..];
            if (dirs[i].Length == 0)
            {
                throw new UsageException($"expert '{names[i]}' has no directory after '='");
            }
        }
        return (dirs, names);
    }

    /// <summary>
    /// Loads --experts (at least one), their factors held at <paramref name="precision"/> (an engine's, so that it converts
    /// none of them), and prints the library's warnings to stderr.
    /// </summary>
    public static (ExpertLibrary Library, string[] Directories) Load(CommandLine line, TextWriter stderr, bool lazy = false,
        WeightPrecision precision = WeightPrecision.Float32)
    {
        IReadOnlyList<string> specs = line.Many("experts");
        if (specs.Count == 0)
        {
            throw new UsageException("--experts is required");
        }
        var (dirs, names) = Parse(specs);
        ExpertLibrary library = ExpertLibrary.Load(dirs, new ExpertLibraryOptions
        {
            Lazy = lazy,
            Names = names,
            RequireSameBaseModel = line.Flag("strict"),
            WeightPrecision = precision,
        });
        foreach (string warning in library.Warnings)
        {
            stderr.WriteLine($"moerge: warning: {warning}");
        }
        return (library, dirs);
    }
}
