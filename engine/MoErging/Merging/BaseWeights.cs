using System.Numerics.Tensors;
using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Merging;

/// <summary>
/// Merging an expert into the base model: W' = W + s · B A for each adapted linear module, as PEFT's
/// <c>merge_and_unload</c> does. The base weight of module <c>base_model.model.X</c> is the tensor <c>X.weight</c>,
/// <c>[d_out, d_in]</c>, or <c>[d_in, d_out]</c> for a Conv1D base layer (PEFT's <c>fan_in_fan_out</c>), where ΔW is
/// added transposed.
/// </summary>
public static class BaseWeights
{
    /// <summary>
    /// Adds s · B A to <paramref name="weight"/>, row-major <c>[d_out, d_in]</c> (or <c>[d_in, d_out]</c> with
    /// <paramref name="fanInFanOut"/>). Each entry is W + Σ_k s B_ok A_ki summed in float64 and rounded once to float32.
    /// </summary>
    /// <exception cref="ArgumentException">The weight does not hold d_out × d_in values.</exception>
    public static void AddDelta(LoraFactors factors, float[] weight, bool fanInFanOut = false)
    {
        ArgumentNullException.ThrowIfNull(factors);
        ArgumentNullException.ThrowIfNull(weight);
        int n = factors.InputDim, m = factors.OutputDim, rank = factors.Rank;
        if (weight.Length != (long)m * n)
        {
            throw new ArgumentException($"the weight must hold d_out × d_in = {m} × {n} values, got {weight.Length}", nameof(weight));
        }
        double[] a = new double[rank * n];
        TensorPrimitives.ConvertTruncating(factors.A, a.AsSpan()); // exact
        float[] bTransposed = factors.BTransposed.ToArray();
        double s = factors.Scaling;
        Parallel.For(0, m, o =>
        {
            var delta = new double[n];
            for (int k = 0; k < rank; k++)
            {
                double coefficient = s * bTransposed[k * m + o];
                if (coefficient != 0)
                {
                    TensorPrimitives.MultiplyAdd(a.AsSpan(k * n, n), coefficient, delta, delta);
                }
            }
            for (int i = 0; i < n; i++)
            {
                long at = fanInFanOut ? (long)i * m + o : (long)o * n + i;
                weight[at] = (float)(weight[at] + delta[i]);
            }
        });
    }

    /// <summary>
    /// Reads a safetensors file of base weights and writes <paramref name="outputFile"/> with every tensor copied
    /// unchanged except the weights of the expert's modules (all of them, or only <paramref name="module"/>, found by
    /// full name or dot-boundary suffix), which get W + ΔW in their own dtype (F32, F16 or BF16; rounded to float32
    /// first, then to the dtype), and the base's <c>__metadata__</c> over the default <c>{"format": "pt"}</c>.
    /// The output is written atomically and held in memory while it is built.
    /// Returns the names of the tensors that changed.
    /// </summary>
    /// <exception cref="KeyNotFoundException">The base has no weight for a module, or no module matches <paramref name="module"/>.</exception>
    /// <exception cref="InvalidDataException">A malformed base file, or a base weight of the wrong shape or dtype.</exception>
    public static IReadOnlyList<string> MergeInto(Expert expert, string baseFile, string outputFile, string? module = null, bool fanInFanOut = false)
    {
        ArgumentNullException.ThrowIfNull(expert);
        ArgumentException.ThrowIfNullOrEmpty(baseFile);
        ArgumentException.ThrowIfNullOrEmpty(outputFile);
        IEnumerable<string> modules = module is null ? expert.Modules.Keys : [new ExpertLibrary([expert]).Module(module).Name];
        var writer = new SafeTensorsWriter();
        var changed = new List<string>();
        using (SafeTensorsFile file = SafeTensorsFile.Open(baseFile))
        {
            foreach (var (key, value) in file.Metadata)
            {
                writer.Metadata[key] = value;
            }
            var merged = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (string name in modules)
            {
                merged.Add(PeftAdapter.BaseName(name) + ".weight", name);
            }
            foreach (string key in merged.Keys.Where(k => !file.TryGetTensor(k, out _)))
            {
                throw new KeyNotFoundException($"{baseFile}: no tensor '{key}' for module '{merged[key]}'");
            }
            foreach (TensorInfo t in file.Tensors)
            {
                if (!merged.TryGetValue(t.Name, out string? name))
                {
                    var raw = new byte[checked((int)t.ByteCount)];
                    file.ReadBytes(t, raw);
                    writer.Add(t.Name, t.DType, t.Shape, raw);
                    continue;
                }
                LoraFactors f = expert.Modules[name];
                long[] expected = fanInFanOut ? [f.InputDim, f.OutputDim] : [f.OutputDim, f.InputDim];
                if (!t.Shape.SequenceEqual(expected) || !TensorDTypes.IsFloatingPoint(t.DType))
                {
                    throw new InvalidDataException(
                        $"{baseFile}: tensor '{t.Name}' is {TensorDTypes.Name(t.DType)} {t.ShapeText}; module '{name}' needs F32, F16 or BF16 {TensorInfo.FormatShape(expected)}{(fanInFanOut ? " (fan_in_fan_out)" : "")}");
                }
                float[] w = file.ReadSingles(t);
                AddDelta(f, w, fanInFanOut);
                writer.Add(t.Name, w, t.Shape, t.DType);
                changed.Add(t.Name);
            }
        }
        writer.WriteTo(outputFile);
        return changed;
    }
}
