using System.Numerics.Tensors;
using MoErging.Execution;
using MoErging.Experts;

namespace MoErging.Samples;

/// <summary>
/// Seeded synthetic experts and tokens for demos, benchmarks and router evaluation. Each expert e has a task
/// direction u_e (a random unit vector in R^d_in) that dominates the row space of its A, so its Arrow
/// prototype lies close to u_e; a token of task e is c · u_e plus unit Gaussian noise, which a good router
/// sends to e. Its owner's PHATGOOSE gate lies near u_e too (<see cref="Gates"/>). Held-out tasks
/// (<see cref="RoutingSet"/>) lie between one expert's direction and a direction no expert has.
/// </summary>
public sealed class SyntheticExperts
{
    private readonly float[] _directions;

    private SyntheticExperts(ExpertLibrary library, float[] directions, int inputDim, int seed)
    {
        Library = library;
        _directions = directions;
        InputDim = inputDim;
        Seed = seed;
    }

    /// <summary>The experts.</summary>
    public ExpertLibrary Library { get; }

    /// <summary>d_in of every module.</summary>
    public int InputDim { get; }

    /// <summary>The seed everything was drawn from.</summary>
    public int Seed { get; }

    /// <summary>u_e, row-major <c>[E, d_in]</c>.</summary>
    public ReadOnlySpan<float> TaskDirections => _directions;

    /// <summary>
    /// Draws <paramref name="experts"/> experts named <c>expert-000</c>, ... adapting each of
    /// <paramref name="modules"/> (d_in = d_out = <paramref name="dim"/>) at rank <paramref name="rank"/>,
    /// with lora_alpha = 2r (scaling 2), as PEFT trains them by default, their factors held at <paramref name="precision"/>
    /// (drawn in float32, then rounded once).
    /// </summary>
    public static SyntheticExperts Create(int experts, int dim, int rank, IReadOnlyList<string> modules, int seed,
        WeightPrecision precision = WeightPrecision.Float32)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(experts, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(dim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(rank, 1);
        ArgumentNullException.ThrowIfNull(modules);
        if (modules.Count == 0)
        {
            throw new ArgumentException("at least one module is needed", nameof(modules));
        }
        var rng = new Random(seed);
        var directions = new float[experts * dim];
        var list = new Expert[experts];
        var a = new float[rank * dim];
        var b = new float[dim * rank];
        for (int e = 0; e < experts; e++)
        {
            Span<float> u = directions.AsSpan(e * dim, dim);
            FillNormal(rng, u, 1);
            float norm = MathF.Sqrt(TensorPrimitives.SumOfSquares(u));
            TensorPrimitives.Divide(u, norm, u);
            var factors = new List<KeyValuePair<string, LoraFactors>>(modules.Count);
            foreach (string module in modules)
            {
                // Small random rows plus the task direction in row 0: ΔW's top right singular vector ≈ u_e.
                FillNormal(rng, a, 0.2 / Math.Sqrt(dim));
                for (int i = 0; i < dim; i++)
                {
                    a[i] += u[i];
                }
                FillNormal(rng, b, 1 / Math.Sqrt(rank));
                factors.Add(new(module, new LoraFactors(a, b, rank, dim, dim, scaling: 2f, alpha: 2f * rank, precision: precision)));
            }
            list[e] = new Expert($"expert-{e:D3}", factors);
        }
        return new SyntheticExperts(new ExpertLibrary(list), directions, dim, seed);
    }

    /// <summary>
    /// Fills <paramref name="x"/> (row-major <c>[T, d_in]</c>) with tokens of the given tasks:
    /// x_t = <paramref name="strength"/> · u_task[t] + N(0, 1) noise, seeded.
    /// </summary>
    public void Tokens(ReadOnlySpan<int> tasks, float strength, int seed, Span<float> x)
    {
        for (int t = 0; t < tasks.Length; t++)
        {
            if ((uint)tasks[t] >= (uint)Library.ExpertCount)
            {
                throw new ArgumentOutOfRangeException(nameof(tasks), tasks[t], $"task of token {t} must be an expert index");
            }
        }
        Fill(_directions, tasks, strength, new Random(seed), x);
    }

    /// <summary>
    /// PHATGOOSE gates as an expert's owner would have trained them (a gate that fires on its task's inputs
    /// points along the task direction): g_e = u_e + N(0, 0.3² / d_in) per entry, row-major <c>[E, d_in]</c>,
    /// seeded. The same gate serves every module (the modules share the task directions).
    /// </summary>
    public float[] Gates(int seed)
    {
        var gates = new float[_directions.Length];
        FillNormal(new Random(seed), gates, 0.3 / Math.Sqrt(InputDim));
        for (int i = 0; i < gates.Length; i++)
        {
            gates[i] += _directions[i];
        }
        return gates;
    }

    /// <summary>
    /// A labelled routing set: <paramref name="rowsPerTask"/> tokens of each expert's own task (task e, label e),
    /// then as many of each of <paramref name="heldOutTasks"/> held-out tasks. Held-out task h is served best by
    /// expert e = h mod E: its direction is (u_e + w_h) / √2, w_h a random unit vector orthogonal to u_e, so
    /// it is 45° from the nearest expert and no expert was trained on it. Rows are
    /// <paramref name="strength"/> · direction + N(0, 1) noise; everything is drawn from <paramref name="seed"/>.
    /// </summary>
    public RoutingDataset RoutingSet(int rowsPerTask, int heldOutTasks, float strength, int seed)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rowsPerTask, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(heldOutTasks);
        int experts = Library.ExpertCount, n = InputDim, taskCount = experts + heldOutTasks;
        var rng = new Random(seed);
        var directions = new float[taskCount * n];
        _directions.CopyTo(directions, 0);
        var names = Library.Experts.Select(e => e.Name).ToList();
        for (int h = 0; h < heldOutTasks; h++)
        {
            int e = h % experts;
            ReadOnlySpan<float> u = _directions.AsSpan(e * n, n);
            Span<float> v = directions.AsSpan((experts + h) * n, n);
            FillNormal(rng, v, 1);
            TensorPrimitives.MultiplyAdd(u, -TensorPrimitives.Dot(v, u), v, v); // orthogonal to u_e
            TensorPrimitives.Divide(v, MathF.Sqrt(TensorPrimitives.SumOfSquares(v)) * MathF.Sqrt(2), v);
            TensorPrimitives.MultiplyAdd(u, 1 / MathF.Sqrt(2), v, v);
            names.Add($"held-out-{h} (near {Library.Experts[e].Name})");
        }
        int[] tasks = Enumerable.Range(0, taskCount * rowsPerTask).Select(i => i / rowsPerTask).ToArray();
        int[] labels = tasks.Select(task => task < experts ? task : (task - experts) % experts).ToArray();
        var rows = new float[tasks.Length * n];
        Fill(directions, tasks, strength, rng, rows);
        return new RoutingDataset(rows, n, labels, tasks, names);
    }

    /// <summary>x_t = strength · direction[task[t]] + N(0, 1).</summary>
    private void Fill(ReadOnlySpan<float> directions, ReadOnlySpan<int> tasks, float strength, Random rng, Span<float> x)
    {
        if (x.Length != (long)tasks.Length * InputDim)
        {
            throw new ArgumentException($"x must hold {tasks.Length} rows of {InputDim}, got {x.Length} values", nameof(x));
        }
        FillNormal(rng, x, 1);
        for (int t = 0; t < tasks.Length; t++)
        {
            Span<float> row = x.Slice(t * InputDim, InputDim);
            TensorPrimitives.MultiplyAdd(directions.Slice(tasks[t] * InputDim, InputDim), strength, row, row);
        }
    }

    private static void FillNormal(Random rng, Span<float> values, double scale)
    {
        for (int i = 0; i < values.Length; i++)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            values[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
    }
}
