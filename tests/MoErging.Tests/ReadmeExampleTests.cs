using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using MoErging.Formats;

namespace MoErging.Tests;

/// <summary>
/// The README's C# example ("Using the library"), as the README has it, compiled and run as a console program: with the
/// implicit usings of a console project, nullable on and every warning an error, against the library built here. It
/// leaves its inputs to the host (x, y, xv, yv, ids, weights), which the harness reads from files before the example's
/// statements and whose outputs it writes after them; it runs in its own process, in a directory holding the three
/// adapters it names, and its y and yv are checked against the float64 Arrow top-2 reference.
/// </summary>
public sealed partial class ReadmeExampleTests(ITestOutputHelper output)
{
    private const int InputDim = 64, OutputDim = 48, Tokens = 6, TopK = 2;
    private static readonly string[] ExpertNames = ["math", "code", "legal"];
    private static readonly string[] Modules = ["base_model.model.layers.0.self_attn.q_proj", "base_model.model.layers.0.self_attn.v_proj"];

    // What `dotnet new console` gives a program without writing it (ImplicitUsings).
    private const string ImplicitUsings = """
        global using System;
        global using System.Collections.Generic;
        global using System.IO;
        global using System.Linq;
        global using System.Net.Http;
        global using System.Threading;
        global using System.Threading.Tasks;
        """;

    private const string Host = """
        using System.Runtime.InteropServices;

        static class ExampleHost
        {
            public static T[] Read<T>(string name) where T : unmanaged => MemoryMarshal.Cast<byte, T>(File.ReadAllBytes(name + ".bin")).ToArray();

            public static void Write(string name, float[] values) => File.WriteAllBytes(name + ".bin", MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
        }
        """;

    [Fact]
    public void TheCSharpExampleCompilesAndRoutes()
    {
        (string code, int firstLine) = Example();
        var data = new TestData();
        output.WriteLine(data.ToString());
        TestLibrary lib = data.Library(ExpertNames.Length, InputDim, OutputDim, [4, 8], Modules);
        RawFactors[] q = [.. lib.Raw[Modules[0]].Select(f => f!)], v = [.. lib.Raw[Modules[1]].Select(f => f!)];
        double[][] prototypes = [.. q.Select(Reference.TopRightSingularVectorByJacobi)];
        // Tokens whose top-2 is decided by a clear margin, so the reference's choice is the only right one.
        float[] x = DrawDecisive(data, prototypes);
        float[] y = data.Normal(Tokens * OutputDim), xv = data.Normal(Tokens * InputDim), yv = data.Normal(Tokens * OutputDim);
        int[] ids = [.. Enumerable.Range(0, Tokens).Select(_ => data.Rng.Next(ExpertNames.Length))];
        float[] weights = [.. Enumerable.Range(0, Tokens).Select(_ => 1f)];

        string root = Directory.CreateTempSubdirectory("moerging-readme-").FullName;
        try
        {
            for (int e = 0; e < ExpertNames.Length; e++)
            {
                PeftAdapter.Write(Path.Combine(root, "adapters", ExpertNames[e]), lib.Library.Experts[e]);
            }
            Write(root, "x", x);
            Write(root, "y", y);
            Write(root, "xv", xv);
            Write(root, "yv", yv);
            Write(root, "ids", ids);
            Write(root, "weights", weights);
            Run(Compile(code, firstLine, root), root);

            var chosen = new int[Tokens * TopK];
            var chosenWeights = new double[Tokens * TopK];
            for (int t = 0; t < Tokens; t++)
            {
                double[] scores = Scores(x, t, prototypes);
                int[] order = [.. Enumerable.Range(0, scores.Length).OrderByDescending(e => scores[e])];
                double[] w = Reference.Softmax([.. order[..TopK].Select(e => scores[e])]);
                for (int s = 0; s < TopK; s++)
                {
                    (chosen[t * TopK + s], chosenWeights[t * TopK + s]) = (order[s], w[s]);
                }
            }
            Reference.CheckFloat32(Read(root, "y"), Reference.Forward(q, x, y, Tokens, chosen, chosenWeights, TopK), y, TopK, $"README example, q_proj ({data})");
            Reference.CheckFloat32(Read(root, "yv"), Reference.Forward(v, xv, yv, Tokens, chosen, chosenWeights, TopK), yv, TopK, $"README example, v_proj ({data})");
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>The first C# block of the README's "Using the library" section, and the README line its code starts on.</summary>
    private static (string Code, int FirstLine) Example()
    {
        string readme = Path.Combine(RepositoryRoot(), "README.md");
        string text = File.ReadAllText(readme);
        int section = text.IndexOf("\n## Using the library\n", StringComparison.Ordinal);
        Assert.True(section >= 0, $"{readme} has no section 'Using the library'");
        Match block = CSharpBlock().Match(text, section);
        Assert.True(block.Success, $"{readme}: no ```csharp block after 'Using the library'");
        int firstLine = text[..block.Groups[1].Index].Count(c => c == '\n') + 1;
        return (block.Groups[1].Value, firstLine);
    }

    [GeneratedRegex(@"```csharp\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex CSharpBlock();

    private static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "Engine.sln")))
            {
                return directory.FullName;
            }
        }
        throw new DirectoryNotFoundException($"no Engine.sln above {AppContext.BaseDirectory}: the tests run from the repository's build output");
    }

    /// <summary>
    /// The program: the example's usings, the host's inputs, the example's statements (mapped back to README.md's lines,
    /// so an error names the README's line), the host's outputs. Writes example.dll and what it needs to run into
    /// <paramref name="directory"/>.
    /// </summary>
    private string Compile(string code, int firstLine, string directory)
    {
        string[] lines = code.Split('\n');
        int body = 0;
        while (body < lines.Length && (lines[body].StartsWith("using ", StringComparison.Ordinal) || lines[body].Length == 0))
        {
            body++;
        }
        string program = string.Join('\n', lines[..body]) + """

            float[] x = ExampleHost.Read<float>("x"), y = ExampleHost.Read<float>("y");
            float[] xv = ExampleHost.Read<float>("xv"), yv = ExampleHost.Read<float>("yv");
            int[] ids = ExampleHost.Read<int>("ids");
            float[] weights = ExampleHost.Read<float>("weights");

            """ + $"#line {firstLine + body} \"README.md\"\n" + string.Join('\n', lines[body..]) + """

            #line default
            ExampleHost.Write("y", y);
            ExampleHost.Write("yv", yv);
            """;
        var parse = new CSharpParseOptions(LanguageVersion.Latest);
        SyntaxTree[] trees = [.. new[] { program, ImplicitUsings, Host }.Select(source => CSharpSyntaxTree.ParseText(source, parse))];
        string[] platform = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator);
        string[] engine = [.. new[] { "MoErging", "MoErging.Kernels", "ILGPU", "ILGPU.Algorithms", "System.Numerics.Tensors" }
            .Select(name => Path.Combine(AppContext.BaseDirectory, name + ".dll")).Where(File.Exists)];
        var compilation = CSharpCompilation.Create("example", trees,
            [.. platform.Where(p => !p.StartsWith(AppContext.BaseDirectory, StringComparison.Ordinal)).Concat(engine).Select(p => MetadataReference.CreateFromFile(p))],
            new CSharpCompilationOptions(OutputKind.ConsoleApplication, nullableContextOptions: NullableContextOptions.Enable,
                generalDiagnosticOption: ReportDiagnostic.Error, allowUnsafe: false));
        string dll = Path.Combine(directory, "example.dll");
        Microsoft.CodeAnalysis.Emit.EmitResult emitted = compilation.Emit(dll);
        string[] problems = [.. emitted.Diagnostics.Where(d => d.Severity >= DiagnosticSeverity.Warning).Select(d => d.ToString())];
        output.WriteLine(string.Join('\n', problems));
        Assert.True(emitted.Success && problems.Length == 0, "the README's C# example does not compile as a program:\n" + string.Join('\n', problems));
        foreach (string reference in engine)
        {
            File.Copy(reference, Path.Combine(directory, Path.GetFileName(reference)));
        }
        string version = $"{Environment.Version.Major}.{Environment.Version.Minor}";
        File.WriteAllText(Path.Combine(directory, "example.runtimeconfig.json"),
            $"{{\"runtimeOptions\": {{\"tfm\": \"net{version}\", \"framework\": {{\"name\": \"Microsoft.NETCore.App\", \"version\": \"{version}.0\"}}}}}}");
        return dll;
    }

    /// <summary>Runs the example with the runtime the tests run on, in <paramref name="directory"/>; it must exit 0 within a minute.</summary>
    private void Run(string dll, string directory)
    {
        // <root>/shared/Microsoft.NETCore.App/<version>/ → <root>/dotnet
        string runtime = RuntimeEnvironment.GetRuntimeDirectory().TrimEnd(Path.DirectorySeparatorChar);
        string dotnet = Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(Path.GetDirectoryName(runtime)))!, "dotnet");
        var start = new ProcessStartInfo(dotnet, [dll]) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync(), stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(1)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail("the README's C# example did not finish within a minute");
        }
        output.WriteLine(stdout.Result + stderr.Result);
        Assert.True(process.ExitCode == 0, $"the README's C# example exited with {process.ExitCode}:\n{stdout.Result}{stderr.Result}");
    }

    private static float[] DrawDecisive(TestData data, double[][] prototypes)
    {
        var x = new float[Tokens * InputDim];
        for (int t = 0; t < Tokens; t++)
        {
            for (int attempt = 0; ; attempt++)
            {
                Assert.True(attempt < 1000, $"no token with a clear top-{TopK} in 1000 draws ({data})");
                data.Normal(InputDim).CopyTo(x, t * InputDim);
                double[] sorted = [.. Scores(x, t, prototypes).OrderDescending()];
                if (sorted[TopK - 1] - sorted[TopK] > 1e-3 * sorted[0])
                {
                    break;
                }
            }
        }
        return x;
    }

    /// <summary>Arrow's scores: |⟨x_t, p_e⟩| with each prototype of unit norm (the sign of a singular vector is arbitrary).</summary>
    private static double[] Scores(float[] x, int t, double[][] prototypes) =>
        [.. prototypes.Select(p => Math.Abs(Enumerable.Range(0, InputDim).Sum(i => x[t * InputDim + i] * p[i])))];

    private static void Write<T>(string directory, string name, T[] values) where T : unmanaged =>
        File.WriteAllBytes(Path.Combine(directory, name + ".bin"), MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    private static float[] Read(string directory, string name) =>
        MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(Path.Combine(directory, name + ".bin"))).ToArray();
}
