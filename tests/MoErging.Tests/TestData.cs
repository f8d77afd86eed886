using MoErging.Experts;
using MoErging.Formats;

namespace MoErging.Tests;

/// <summary>A library drawn at random together with the raw factors the reference uses.</summary>
public sealed record TestLibrary(ExpertLibrary Library, Dictionary<string, RawFactors?[]> Raw)
{
    public AdaptedModule Module(string name) => Library.Module(name);

    /// <summary>Writes every expert as a PEFT adapter directory under <paramref name="root"/>; returns the paths in expert order.</summary>
    public string[] WriteTo(string root) =>
        Library.Experts.Select(e =>
        {
            string path = Path.Combine(root, e.Name);
            PeftAdapter.Write(path, e);
            return path;
        }).ToArray();
}

/// <summary>
/// Fresh random inputs for every run; the seed is in every failure message, and MOERGING_TEST_SEED=N replays it
/// (every test then draws that seed).
/// </summary>
public sealed class TestData
{
    public TestData(int? seed = null)
    {
        Seed = seed ?? (int.TryParse(Environment.GetEnvironmentVariable("MOERGING_TEST_SEED"), out int replay) ? replay : Random.Shared.Next());
        Rng = new Random(Seed);
    }

    public int Seed { get; }

    public Random Rng { get; }

    public float[] Normal(int count, double scale = 1)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            // Box-Muller
            double u1 = 1 - Rng.NextDouble(), u2 = Rng.NextDouble();
            values[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return values;
    }

    public RawFactors Factors(int rank, int dIn, int dOut, float? scaling = null) =>
        new(Normal(rank * dIn, 1 / Math.Sqrt(dIn)), Normal(dOut * rank, 1 / Math.Sqrt(rank)), rank, dIn, dOut,
            scaling ?? (float)(0.5 + Rng.NextDouble()));

    /// <summary>
    /// Experts named e0, e1, ... over the given modules, with ranks cycling through <paramref name="ranks"/>.
    /// <paramref name="skip"/> lists (expert, module) pairs an expert does not adapt.
    /// </summary>
    public TestLibrary Library(int experts, int dIn, int dOut, int[] ranks, string[]? modules = null, (int Expert, string Module)[]? skip = null)
    {
        modules ??= ["base_model.model.layers.0.mlp.down_proj"];
        var raw = modules.ToDictionary(m => m, _ => new RawFactors?[experts]);
        var list = new List<Expert>();
        for (int e = 0; e < experts; e++)
        {
            var own = new List<KeyValuePair<string, LoraFactors>>();
            foreach (string m in modules)
            {
                if (skip?.Contains((e, m)) == true)
                {
                    continue;
                }
                RawFactors f = Factors(ranks[e % ranks.Length], dIn, dOut);
                raw[m][e] = f;
                own.Add(new(m, new LoraFactors(f.A, f.B, f.Rank, dIn, dOut, f.Scaling)));
            }
            list.Add(new Expert($"e{e}", own));
        }
        return new TestLibrary(new ExpertLibrary(list), raw);
    }

    public override string ToString() => $"seed {Seed}";
}
