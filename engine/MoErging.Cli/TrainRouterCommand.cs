using System.Globalization;
using MoErging.Experts;
using MoErging.Routing;
using MoErging.Samples;

namespace MoErging.Cli;

/// <summary><c>moerge train-router</c>: trains a classifier router on a labelled routing set and saves it.</summary>
internal static class TrainRouterCommand
{
    private const string Help = """
        usage: moerge train-router --experts [NAME=]DIR... --module NAME --data SET.safetensors --output ROUTER.safetensors
                                   [--iterations N] [--l2 L]

        Trains softmax(W x + b) over the experts by softmax regression (full-batch gradient descent with a
        backtracking step, deterministic) on a labelled routing set: x [N, d_in] (hidden states at the
        module's input) and expert [N] I32 (the true expert of each row, in the order of --experts).
        The router is saved with the experts' names; use it with --router classifier --classifier FILE.

          --iterations   most gradient steps (default 300)
          --l2           weight of the L2 penalty on standardised inputs (default 0.001)
        """ + "\n" + ExpertsOption.Help;

    private static readonly Dictionary<string, OptionKind> Options = new()
    {
        ["experts"] = OptionKind.Many,
        ["strict"] = OptionKind.Flag,
        ["module"] = OptionKind.Single,
        ["data"] = OptionKind.Single,
        ["output"] = OptionKind.Single,
        ["iterations"] = OptionKind.Single,
        ["l2"] = OptionKind.Single,
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
        IReadOnlyList<string> dirs = ExpertsOption.Parse(line.Many("experts")).Directories;
        if (dirs.Count == 0)
        {
            throw new UsageException("--experts is required");
        }
        string moduleName = line.Required("module"), data = line.Required("data"), output = line.Required("output");
        int iterations = line.Int("iterations", 300, 1, 1_000_000);
        float l2 = line.Float("l2") ?? 1e-3f;
        if (!float.IsFinite(l2) || l2 < 0)
        {
            throw new UsageException($"--l2 must be a number ≥ 0, got {l2.ToString(CultureInfo.InvariantCulture)}");
        }

        ExpertLibrary library = ExpertsOption.Load(line, stderr).Library;
        AdaptedModule module = library.Module(moduleName);
        RoutingDataset set = RoutingChoice.LoadSet(data, module);
        ClassifierRouter router = ClassifierRouter.Train(set.Rows, set.Experts, set.InputDim, library.ExpertCount,
            new ClassifierTrainingOptions(iterations, l2), expertNames: [.. library.Experts.Select(e => e.Name)]);
        router.Save(output);
        ClassifierTrainingResult fit = router.Training!;
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"trained a classifier over {library.ExpertCount} experts on {set.RowCount} rows of {set.InputDim}: {fit.Iterations} steps, objective {fit.Objective:F4}, training accuracy {fit.TrainingAccuracy:P1}; wrote {output}"));
        return 0;
    }
}
