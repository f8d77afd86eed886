using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;

namespace MoErging.Cli;

/// <summary>
/// <c>moerge centroids</c>: computes each expert's centroid per module (the mean of sample hidden states from
/// the expert's own data) and writes it into the expert's <c>centroids.safetensors</c>.
/// </summary>
internal static class CentroidsCommand
{
    private const string Help = """
        usage: moerge centroids --experts [NAME=]DIR... --data FILE... | --data DATADIR [--module NAME...]

        --data gives one safetensors file per expert, in the order of --experts, or one directory holding
        <expert name>.safetensors for every expert. An expert's file holds its sample hidden states: per
        module, a tensor named by the module (its full name, or a suffix at a dot boundary) of shape
        [N, d_in], N ≥ 1 (F32, F16 or BF16). Each expert's
        centroid per module is the mean of its rows; it is written to DIR/centroids.safetensors as
        <full module name>.centroid [d_in], keeping the centroids of other modules already there.
        Everything is read and checked before any file is written, and every expert's file is replaced or none is.

          --module   only these modules (default: every module the data files name)
        """ + "\n" + ExpertsOption.Help;

    private static readonly Dictionary<string, OptionKind> Options = new()
    {
        ["experts"] = OptionKind.Many,
        ["strict"] = OptionKind.Flag,
        ["data"] = OptionKind.Many,
        ["module"] = OptionKind.Many,
        ["help"] = OptionKind.Flag,
    };

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (Cli.Help(args, Help, stdout))
        {
            return 0;
        }
        CommandLine line = CommandLine.Parse(args, Options);
        line.NoPositionals();
        IReadOnlyList<string> dirs = ExpertsOption.Parse(line.Many("experts")).Directories, data = line.Many("data");
        if (dirs.Count == 0 || data.Count == 0)
        {
            throw new UsageException("--experts and --data are required");
        }
        // One directory is a directory of <expert name>.safetensors even for a library of one expert.
        bool oneDirectory = data.Count == 1 && Directory.Exists(data[0]);
        if (dirs.Count != data.Count && !oneDirectory)
        {
            throw new UsageException($"--data needs one file per expert ({dirs.Count}) or one directory, got {data.Count} paths");
        }
        ExpertLibrary library = ExpertsOption.Load(line, stderr).Library;
        if (oneDirectory)
        {
            data = library.Experts.Select(e => Path.Combine(data[0], e.Name + ".safetensors")).ToArray();
        }
        HashSet<string>? only = line.Has("module") ? line.Many("module").Select(m => library.Module(m).Name).ToHashSet(StringComparer.Ordinal) : null;

        var centroids = new Dictionary<string, float[]>[dirs.Count];
        var samples = new int[dirs.Count];
        for (int e = 0; e < dirs.Count; e++)
        {
            centroids[e] = new Dictionary<string, float[]>(StringComparer.Ordinal);
            using SafeTensorsFile file = SafeTensorsFile.Open(data[e]);
            foreach (TensorInfo tensor in file.Tensors)
            {
                AdaptedModule module;
                try
                {
                    module = library.Module(tensor.Name);
                }
                catch (Exception error) when (error is KeyNotFoundException or ArgumentException)
                {
                    throw new InvalidDataException($"{file.Label}: tensor '{tensor.Name}' names no single module: {error.Message}");
                }
                if (only is not null && !only.Contains(module.Name))
                {
                    continue;
                }
                if (tensor.Rank != 2 || tensor.Shape[0] < 1 || tensor.Shape[1] != module.InputDim)
                {
                    throw new InvalidDataException($"{file.Label}: tensor '{tensor.Name}' has shape {tensor.ShapeText}; module '{module.Name}' needs [N, {module.InputDim}] with N ≥ 1");
                }
                if (!centroids[e].TryAdd(module.Name, Centroid(file, tensor, module)))
                {
                    throw new InvalidDataException($"{file.Label}: two tensors name module '{module.Name}'");
                }
                samples[e] = Math.Max(samples[e], (int)tensor.Shape[0]);
            }
            foreach (string module in only ?? [])
            {
                if (!centroids[e].ContainsKey(module))
                {
                    throw new InvalidDataException($"{file.Label}: no samples for module '{module}' (expert '{library.Experts[e].Name}')");
                }
            }
            if (centroids[e].Count == 0)
            {
                throw new InvalidDataException($"{file.Label}: no samples for any module of the library (expert '{library.Experts[e].Name}')");
            }
        }

        // Every expert's file, or none: a failure at one expert leaves all of them as they were.
        var outputs = new OutputFiles();
        var paths = new string[dirs.Count];
        for (int e = 0; e < dirs.Count; e++)
        {
            paths[e] = Path.Combine(dirs[e], CentroidRouter.CentroidFileName);
            var all = new Dictionary<string, float[]>(Existing(paths[e]), StringComparer.Ordinal);
            foreach (var (module, centroid) in centroids[e])
            {
                all[module] = centroid;
            }
            var writer = new SafeTensorsWriter();
            foreach (var (module, centroid) in all)
            {
                writer.Add(module + CentroidRouter.CentroidSuffix, centroid, [centroid.Length]);
            }
            outputs.Add(paths[e], writer.WriteTo);
        }
        outputs.Commit();
        for (int e = 0; e < dirs.Count; e++)
        {
            stdout.WriteLine($"{library.Experts[e].Name}: {centroids[e].Count} module{(centroids[e].Count == 1 ? "" : "s")} from up to {samples[e]} samples → {paths[e]}");
        }
        return 0;
    }

    private static float[] Centroid(SafeTensorsFile file, TensorInfo tensor, AdaptedModule module)
    {
        try
        {
            return CentroidRouter.Centroid(file.ReadSingles(tensor), module.InputDim);
        }
        catch (ArgumentException error)
        {
            throw new InvalidDataException($"{file.Label}: tensor '{tensor.Name}': {error.Message}");
        }
    }

    /// <summary>The centroids already in an expert's file, by module, so modules not recomputed are kept.</summary>
    private static Dictionary<string, float[]> Existing(string path)
    {
        var existing = new Dictionary<string, float[]>(StringComparer.Ordinal);
        if (!File.Exists(path))
        {
            return existing;
        }
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        foreach (TensorInfo tensor in file.Tensors)
        {
            if (tensor.Name.EndsWith(CentroidRouter.CentroidSuffix, StringComparison.Ordinal))
            {
                existing[tensor.Name[..^CentroidRouter.CentroidSuffix.Length]] = file.ReadSingles(tensor);
            }
        }
        return existing;
    }
}
