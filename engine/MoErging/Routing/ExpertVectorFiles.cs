using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Routing;

/// <summary>
/// Files of one <c>[d_in]</c> vector per module that an expert directory may ship for a router
/// (PHATGOOSE gates, centroids): tensor <c>&lt;full module name&gt;&lt;suffix&gt;</c> in a safetensors file
/// of a fixed name. Reading checks every expert has a finite vector of the module's width and names the
/// expert, file and tensor when one does not.
/// </summary>
internal static class ExpertVectorFiles
{
    /// <summary>The vector of every expert for a module, row-major <c>[E, d_in]</c>, from the directories the library loaded its experts from.</summary>
    /// <param name="module">The module routed.</param>
    /// <param name="fileName">The file in each directory.</param>
    /// <param name="suffix">Appended to the module's full name to form the tensor name.</param>
    /// <param name="what">What the vectors are, for messages ("PHATGOOSE gate").</param>
    /// <exception cref="ArgumentException">An expert was built in memory, so it has no directory.</exception>
    public static float[] Read(AdaptedModule module, string fileName, string suffix, string what)
    {
        ArgumentNullException.ThrowIfNull(module);
        IReadOnlyList<Expert> experts = module.Library.Experts;
        return Read(module, e => experts[e].Directory ?? throw new ArgumentException(
            $"expert '{experts[e].Name}' was built in memory, not loaded from a directory, so it has no {what} file; give the experts' directories", nameof(module)),
            fileName, suffix, what);
    }

    /// <summary>The vector of every expert for a module, row-major <c>[E, d_in]</c>.</summary>
    /// <param name="module">The module routed.</param>
    /// <param name="expertDirectories">One directory per expert, in expert order; each directory's name must be the expert's.</param>
    /// <param name="fileName">The file in each directory.</param>
    /// <param name="suffix">Appended to the module's full name to form the tensor name.</param>
    /// <param name="what">What the vectors are, for messages ("PHATGOOSE gate").</param>
    public static float[] Read(AdaptedModule module, IReadOnlyList<string> expertDirectories, string fileName, string suffix, string what)
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(expertDirectories);
        int experts = module.ExpertCount;
        if (expertDirectories.Count != experts)
        {
            throw new ArgumentException($"{experts} experts need {experts} directories, got {expertDirectories.Count}", nameof(expertDirectories));
        }
        return Read(module, e =>
        {
            string expert = module.Library.Experts[e].Name, dir = expertDirectories[e];
            ArgumentException.ThrowIfNullOrEmpty(dir, nameof(expertDirectories));
            if (Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir))) != expert)
            {
                throw new ArgumentException($"directory {e} ('{dir}') is not expert {e} ('{expert}'); give the directories in expert order", nameof(expertDirectories));
            }
            return dir;
        }, fileName, suffix, what);
    }

    private static float[] Read(AdaptedModule module, Func<int, string> directoryOf, string fileName, string suffix, string what)
    {
        int experts = module.ExpertCount, n = module.InputDim;
        string tensorName = module.Name + suffix;
        var vectors = new float[experts * n];
        for (int e = 0; e < experts; e++)
        {
            string expert = module.Library.Experts[e].Name, dir = directoryOf(e);
            string path = Path.Combine(dir, fileName);
            if (!File.Exists(path))
            {
                throw new FileNotFoundException($"expert '{expert}' has no {what} file: {path} does not exist", path);
            }
            using SafeTensorsFile file = SafeTensorsFile.Open(path);
            if (!file.TryGetTensor(tensorName, out TensorInfo? tensor))
            {
                throw new InvalidDataException($"{file.Label}: expert '{expert}' has no {what} for module '{module.Name}' (no tensor '{tensorName}')");
            }
            if (tensor.Rank != 1 || tensor.Shape[0] != n)
            {
                throw new InvalidDataException($"{file.Label}: tensor '{tensorName}' has shape {tensor.ShapeText}; module '{module.Name}' has d_in = {n}, so it must be [{n}]");
            }
            Span<float> row = vectors.AsSpan(e * n, n);
            file.ReadSingles(tensor, row);
            for (int i = 0; i < n; i++)
            {
                if (!float.IsFinite(row[i]))
                {
                    throw new InvalidDataException($"{file.Label}: tensor '{tensorName}' element {i} is {row[i]}; a {what} must be finite");
                }
            }
        }
        return vectors;
    }

    /// <summary>Writes one vector per module into <paramref name="directory"/>/<paramref name="fileName"/>, atomically.</summary>
    public static void Write(string directory, string fileName, string suffix, IReadOnlyDictionary<string, float[]> vectorsByModule)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(vectorsByModule);
        if (vectorsByModule.Count == 0)
        {
            throw new ArgumentException("at least one module's vector is needed", nameof(vectorsByModule));
        }
        var writer = new SafeTensorsWriter();
        foreach (var (module, vector) in vectorsByModule)
        {
            ArgumentException.ThrowIfNullOrEmpty(module, nameof(vectorsByModule));
            ArgumentNullException.ThrowIfNull(vector, nameof(vectorsByModule));
            writer.Add(module + suffix, vector, [vector.Length]);
        }
        Directory.CreateDirectory(directory);
        writer.WriteTo(Path.Combine(directory, fileName));
    }
}
