using System.Globalization;
using System.Text.Json;
using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Cli;

/// <summary><c>moerge inspect DIR... [--json]</c>: each expert's modules, ranks, alpha, scaling and dtype.</summary>
internal static class InspectCommand
{
    private const string Help = """
        usage: moerge inspect DIR... [--json]

        Validates each PEFT LoRA adapter directory and lists its modules with rank, lora_alpha,
        scaling, storage dtype and shape (d_in → d_out). Factors are not decoded, so large
        libraries list quickly.

          --json   print JSON instead of a table
        """;

    private static readonly Dictionary<string, OptionKind> Options = new() { ["json"] = OptionKind.Flag, ["help"] = OptionKind.Flag };

    public static int Run(string[] args, TextWriter stdout)
    {
        if (Cli.Help(args, Help, stdout))
        {
            return 0;
        }
        CommandLine line = CommandLine.Parse(args, Options);
        if (line.Positionals.Count == 0)
        {
            throw new UsageException("give at least one adapter directory");
        }
        // Lazy: every file is validated, but no factor is decoded; inspect needs only shapes, scalings and dtypes.
        var experts = line.Positionals.Select(dir => (Dir: dir, Expert: Expert.Load(dir, lazy: true))).ToList();
        if (line.Flag("json"))
        {
            WriteJson(experts, stdout);
        }
        else
        {
            WriteTable(experts, stdout);
        }
        return 0;
    }

    private static void WriteTable(List<(string Dir, Expert Expert)> experts, TextWriter stdout)
    {
        foreach (var (dir, expert) in experts)
        {
            stdout.WriteLine($"{expert.Name}  ({dir})  {expert.Modules.Count} module{(expert.Modules.Count == 1 ? "" : "s")}");
            int width = expert.Modules.Keys.Max(k => k.Length);
            foreach (var (name, f) in expert.Modules.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {name.PadRight(width)}  r={f.Rank,-4} alpha={f.Alpha,-8:G6} scaling={f.Scaling,-9:G6} {TensorDTypes.Name(f.StorageType),-4}  {f.InputDim} → {f.OutputDim}"));
            }
        }
    }

    private static void WriteJson(List<(string Dir, Expert Expert)> experts, TextWriter stdout)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartArray();
            foreach (var (dir, expert) in experts)
            {
                w.WriteStartObject();
                w.WriteString("name", expert.Name);
                w.WriteString("path", dir);
                w.WriteStartArray("modules");
                foreach (var (name, f) in expert.Modules.OrderBy(p => p.Key, StringComparer.Ordinal))
                {
                    w.WriteStartObject();
                    w.WriteString("name", name);
                    w.WriteNumber("rank", f.Rank);
                    w.WriteNumber("alpha", f.Alpha);
                    w.WriteNumber("scaling", f.Scaling);
                    w.WriteString("dtype", TensorDTypes.Name(f.StorageType));
                    w.WriteNumber("input_dim", f.InputDim);
                    w.WriteNumber("output_dim", f.OutputDim);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        stdout.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }
}
