using System.Text.Json;
using MoErging.Formats;
using MoErging.Routing;

namespace MoErging.Samples;

/// <summary>
/// A labelled routing set: hidden states at a module's input (rows <c>[N, d_in]</c>) with the true expert of
/// each row and the task it came from (a task is an expert's own task, or a held-out one whose label is the
/// expert that should serve it). Classifier routers train on one; <c>moerge evaluate</c> scores routers on one.
/// Stored as safetensors: <c>x</c> <c>[N, d_in]</c> (F32, F16 or BF16), <c>expert</c> <c>[N]</c> I32,
/// <c>task</c> <c>[N]</c> I32 with the task names as a JSON array in the metadata key <c>tasks</c>
/// (without <c>task</c>, each row's task is its expert and tasks are named <c>label-i</c>).
/// </summary>
public sealed class RoutingDataset
{
    private const string RowsTensor = "x", ExpertTensor = "expert", TaskTensor = "task", TasksKey = "tasks";

    private readonly float[] _rows;
    private readonly int[] _experts;
    private readonly int[] _tasks;
    private readonly string[] _taskNames;

    /// <summary>Creates a set, checking its shapes, its labels and that every value is finite.</summary>
    /// <param name="rows">Hidden states, row-major <c>[N, inputDim]</c>, finite (a NaN row would score NaN for every router).</param>
    /// <param name="inputDim">d_in.</param>
    /// <param name="experts">The true expert of each row (not negative).</param>
    /// <param name="tasks">The task of each row, an index into <paramref name="taskNames"/>.</param>
    /// <param name="taskNames">The tasks' names.</param>
    public RoutingDataset(ReadOnlySpan<float> rows, int inputDim, ReadOnlySpan<int> experts, ReadOnlySpan<int> tasks, IReadOnlyList<string> taskNames)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(inputDim, 1);
        ArgumentNullException.ThrowIfNull(taskNames);
        if (rows.Length % inputDim != 0 || rows.Length / inputDim != experts.Length || tasks.Length != experts.Length)
        {
            throw new ArgumentException($"{rows.Length} values, {experts.Length} expert labels and {tasks.Length} task labels are not N rows of d_in = {inputDim} with one label of each per row", nameof(rows));
        }
        for (int i = 0; i < rows.Length; i++)
        {
            if (!float.IsFinite(rows[i]))
            {
                throw new ArgumentException($"row {i / inputDim} holds {rows[i]} at column {i % inputDim}; every value of a routing set must be finite", nameof(rows));
            }
        }
        for (int t = 0; t < experts.Length; t++)
        {
            if (experts[t] < 0)
            {
                throw new ArgumentOutOfRangeException(nameof(experts), experts[t], $"the expert of row {t} must not be negative");
            }
            if ((uint)tasks[t] >= (uint)taskNames.Count)
            {
                throw new ArgumentOutOfRangeException(nameof(tasks), tasks[t], $"the task of row {t} must be in [0, {taskNames.Count})");
            }
        }
        InputDim = inputDim;
        _rows = rows.ToArray();
        _experts = experts.ToArray();
        _tasks = tasks.ToArray();
        _taskNames = [.. taskNames];
    }

    /// <summary>d_in.</summary>
    public int InputDim { get; }

    /// <summary>N.</summary>
    public int RowCount => _experts.Length;

    /// <summary>The hidden states, row-major <c>[N, d_in]</c>.</summary>
    public ReadOnlySpan<float> Rows => _rows;

    /// <summary>The true expert of each row.</summary>
    public ReadOnlySpan<int> Experts => _experts;

    /// <summary>The task of each row.</summary>
    public ReadOnlySpan<int> Tasks => _tasks;

    /// <summary>The tasks' names, by task index.</summary>
    public IReadOnlyList<string> TaskNames => _taskNames;

    /// <summary>Reads a set from safetensors.</summary>
    /// <exception cref="InvalidDataException">A missing tensor, shapes that disagree, a bad label or a non-finite value; the message names the file.</exception>
    public static RoutingDataset Load(string path)
    {
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        if (!file.TryGetTensor(RowsTensor, out TensorInfo? x) || !file.TryGetTensor(ExpertTensor, out TensorInfo? expert))
        {
            throw new InvalidDataException($"{file.Label}: a routing set needs tensors '{RowsTensor}' [N, d_in] and '{ExpertTensor}' [N] (I32)");
        }
        if (x.Rank != 2 || x.Shape[1] < 1 || expert.Rank != 1 || expert.Shape[0] != x.Shape[0])
        {
            throw new InvalidDataException($"{file.Label}: '{RowsTensor}' {x.ShapeText} and '{ExpertTensor}' {expert.ShapeText} must be [N, d_in] and [N]");
        }
        int[] experts = file.ReadInt32s(expert);
        int[] tasks = experts;
        string[] names = Enumerable.Range(0, experts.Length == 0 ? 0 : experts.Max() + 1).Select(i => $"label-{i}").ToArray();
        if (file.TryGetTensor(TaskTensor, out TensorInfo? task))
        {
            if (task.Rank != 1 || task.Shape[0] != x.Shape[0])
            {
                throw new InvalidDataException($"{file.Label}: '{TaskTensor}' {task.ShapeText} must be [{x.Shape[0]}]");
            }
            tasks = file.ReadInt32s(task);
            names = file.Metadata.TryGetValue(TasksKey, out string? json) ? TaskNamesFrom(file.Label, json)
                : Enumerable.Range(0, tasks.Length == 0 ? 0 : tasks.Max() + 1).Select(i => $"task-{i}").ToArray();
        }
        try
        {
            return new RoutingDataset(file.ReadSingles(x), (int)x.Shape[1], experts, tasks, names);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{file.Label}: {e.Message}");
        }
    }

    /// <summary>Writes the set as safetensors (atomically).</summary>
    public void Save(string path)
    {
        var writer = new SafeTensorsWriter();
        writer.Metadata[TasksKey] = JsonSerializer.Serialize(_taskNames, NameListJson.Default.StringArray);
        writer.Add(RowsTensor, _rows, [RowCount, InputDim]);
        writer.Add(ExpertTensor, _experts, [RowCount]);
        writer.Add(TaskTensor, _tasks, [RowCount]);
        writer.WriteTo(path);
    }

    private static string[] TaskNamesFrom(string label, string json)
    {
        try
        {
            return JsonSerializer.Deserialize(json, NameListJson.Default.StringArray) ?? throw new InvalidDataException($"{label}: metadata '{TasksKey}' is null");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{label}: metadata '{TasksKey}' is not a JSON array of names: {e.Message}");
        }
    }
}
