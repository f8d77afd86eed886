using System.Globalization;
using System.Text.Json;
using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Cli;

/// <summary><c>moerge inspect [NAME=]DIR... [--json]</c>: each expert's modules, ranks, alpha, scaling and dtype, and each bad directory's error.</summary>
internal static class InspectCommand
{
    private const string Help = """
        usage: moerge inspect [NAME=]DIR... [--json]

        Validates each PEFT LoRA adapter directory and lists its modules with rank, lora_alpha,
        scaling, storage dtype and shape (d_in → d_out), and the tensors it saved whole
        (modules_to_save, such as a classification head), which LoRA forwards do not apply.
        Factors are not decoded, so large libraries list quickly. Every directory is reported:
        one that does not load is listed with its error, and the exit code is then 1.

          --json   print JSON instead of a table ("error" in place of the modules of a bad directory)
        """;

    private static readonly Dictionary<string, OptionKind> Options = new() { ["json"] = OptionKind.Flag, ["help"] = OptionKind.Flag };

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
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
        var (dirs, names) = ExpertsOption.Parse(line.Positionals);
        // Lazy: every file is validated, but no factor is decoded; inspect needs only shapes, scalings and dtypes.
        var results = dirs.Select((dir, i) => Inspect(dir, names[i])).ToList();
        if (line.Flag("json"))
        {
            WriteJson(results, stdout);
        }
        else
        {
            WriteTable(results, stdout);
        }
        var failed = results.Where(r => r.Error is not null).ToList();
        foreach (var (dir, _, error) in failed)
        {
            stderr.WriteLine($"moerge: error: {dir}: {error}");
        }
        return failed.Count == 0 ? 0 : 1;
    }

    private static (string Dir, Expert? Expert, string? Error) Inspect(string dir, string? name)
    {
        try
        {
            return (dir, Expert.Load(dir, lazy: true, name), null);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or NotSupportedException or UnauthorizedAccessException or ArgumentException)
        {
            // The message names the file already when it is about one; say which directory it was given as.
            string message = e.Message.StartsWith(dir, StringComparison.Ordinal) ? e.Message[dir.Length..].TrimStart(':', ' ') : e.Message;
            return (dir, null, message.ReplaceLineEndings(" "));
        }
    }

    private static void WriteTable(List<(string Dir, Expert? Expert, string? Error)> results, TextWriter stdout)
    {
        foreach (var (dir, expert, error) in results)
        {
            if (expert is null)
            {
                stdout.WriteLine($"{dir}  error: {error}");
                continue;
            }
            stdout.WriteLine($"{expert.Name}  ({dir})  {expert.Modules.Count} module{(expert.Modules.Count == 1 ? "" : "s")}");
            int width = expert.Modules.Keys.Max(k => k.Length);
            foreach (var (name, f) in expert.Modules.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {name.PadRight(width)}  r={f.Rank,-4} alpha={f.Alpha,-8:G6} scaling={f.Scaling,-9:G6} {TensorDTypes.Name(f.StorageType),-4}  {f.InputDim} → {f.OutputDim}"));
            }
            if (expert.SavedTensors.Count > 0)
            {
                stdout.WriteLine($"  saved whole, not applied by LoRA forwards (modules_to_save): {expert.SavedTensors.Count} tensor{(expert.SavedTensors.Count == 1 ? "" : "s")}");
                foreach (SavedTensor t in expert.SavedTensors)
                {
                    stdout.WriteLine($"    {t.Name}  {TensorDTypes.Name(t.DType)}  [{string.Join(", ", t.Shape)}]");
                }
            }
        }
    }

    private static void WriteJson(List<(string Dir, Expert? Expert, string? Error)> results, TextWriter stdout)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartArray();
            foreach (var (dir, expert, error) in results)
            {
                w.WriteStartObject();
                if (expert is null)
                {
                    w.WriteString("path", dir);
                    w.WriteString("error", error);
                    w.WriteEndObject();
                    continue;
                }
                w.WriteString("name", expert.Name);
                w.WriteString("path", dir);
                w.WriteString("task_type", expert.Config?.TaskType);
                w.WriteString("base_model", expert.Config?.BaseModelName);
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
                w.WriteStartArray("saved_tensors");
                foreach (SavedTensor t in expert.SavedTensors)
                {
                    w.WriteStartObject();
                    w.WriteString("name", t.Name);
                    w.WriteString("module", t.Module);
                    w.WriteString("dtype", TensorDTypes.Name(t.DType));
                    w.WriteStartArray("shape");
                    foreach (long d in t.Shape)
                    {
                        w.WriteNumberValue(d);
                    }
                    w.WriteEndArray();
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
