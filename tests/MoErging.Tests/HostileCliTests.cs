using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;
using static MoErging.Tests.CliTests;

namespace MoErging.Tests;

/// <summary>
/// Hostile inputs to the command line: outputs onto inputs, non-finite and empty sets, failures half-way through
/// writing several files, empty batches, temperatures whose reciprocal overflows, demos larger than the machine,
/// NaN in JSON and raw file-system errors. Each run is in-process on small files in a temporary directory.
/// </summary>
public sealed class HostileCliTests
{
    private const string Module = "base_model.model.layers.0.mlp.down_proj";
    private const int InputDim = 12, OutputDim = 7, Experts = 3;

    private sealed record Setup(TestData Data, TempDir Dir, TestLibrary Lib, string[] Dirs) : IDisposable
    {
        public void Dispose() => Dir.Dispose();
    }

    private static Setup Prepare()
    {
        var data = new TestData();
        var dir = new TempDir();
        TestLibrary lib = data.Library(experts: Experts, dIn: InputDim, dOut: OutputDim, ranks: [2]);
        return new Setup(data, dir, lib, lib.WriteTo(dir.Path));
    }

    /// <summary>The error printed as one line (plus, for usage errors, the hint line).</summary>
    private static string OneError(string error, int code)
    {
        string[] lines = error.TrimEnd('\n', '\r').Split('\n');
        Assert.Equal(code == 2 ? 2 : 1, lines.Length);
        return lines[0];
    }

    // ------------------------------------------------------------------ 7. messages

    [Fact]
    public void FileSystemErrorsNameTheUsersPathInOneLine()
    {
        using Setup s = Prepare();
        string loop = s.Dir.Sub("loop"), other = s.Dir.Sub("other");
        File.CreateSymbolicLink(loop, other);
        File.CreateSymbolicLink(other, loop);
        string[] common = ["--experts", .. s.Dirs, "--module", "down_proj", "--router", "uniform", "--backend", "cpu"];

        var (code, _, error) = Run(["route", .. common, "--input", loop]);
        Assert.Equal(1, code);
        Assert.Equal($"moerge: error: {loop}: too many levels of symbolic links", OneError(error, code));

        (code, _, error) = Run(["forward", .. common, $"--input={s.Dir.Sub("absent.safetensors")}", "--output", s.Dir.Sub("o.safetensors")]);
        Assert.Equal(1, code);
        Assert.Equal($"moerge: error: {s.Dir.Sub("absent.safetensors")}: does not exist", OneError(error, code));

        // A writer's temporary file is never the path named: the output is.
        Directory.CreateDirectory(s.Dir.Sub("taken"));
        var set = new RoutingDataset(s.Data.Normal(3 * InputDim), InputDim, [0, 1, 2], [0, 1, 2], ["a", "b", "c"]);
        set.Save(s.Dir.Sub("set.safetensors"));
        (code, _, error) = Run(["train-router", "--experts", .. s.Dirs, "--module", "down_proj", "--data", s.Dir.Sub("set.safetensors"), "--output", s.Dir.Sub("taken"),
            "--iterations", "2"]);
        Assert.Equal(1, code);
        Assert.StartsWith($"moerge: error: {s.Dir.Sub("taken")}: ", OneError(error, code));
        Assert.DoesNotContain(".tmp", error);
    }
}
