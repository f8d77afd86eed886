// The whole entry point: dotnet tool restore && dotnet cake --target=<Build|Native|Test|Bench|Peers|Pack>
// Test is the default. It writes artifacts/test-summary.txt ("N passed, N failed"), which .ci/run prints last.
using System.Xml.Linq;

var target = Argument("target", "Test");
var configuration = Argument("configuration", "Release");
var artifacts = MakeAbsolute(Directory("./artifacts"));
var results = artifacts.Combine("test-results");
// libmoerging.so with the managed side published next to it, where the library looks for it.
var native = artifacts.Combine("native");
var nativeBuild = artifacts.Combine("native-build");

void Run(string tool, ProcessArgumentBuilder arguments)
{
    int exit = StartProcess(tool, new ProcessSettings { Arguments = arguments });
    if (exit != 0)
    {
        throw new Exception($"{tool} {arguments.Render()} exited with {exit}");
    }
}

Task("Build")
    .Does(() =>
{
    DotNetBuild("./Engine.sln", new DotNetBuildSettings
    {
        Configuration = configuration,
        NoLogo = true,
    });
});

Task("Native")
    .IsDependentOn("Build")
    .Does(() =>
{
    DotNetPublish("./interop/MoErging.Interop/MoErging.Interop.csproj", new DotNetPublishSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoLogo = true,
        OutputDirectory = native,
    });
    Run("cmake", new ProcessArgumentBuilder()
        .Append("-S").AppendQuoted("./interop/native")
        .Append("-B").AppendQuoted(nativeBuild.FullPath)
        .Append("-DCMAKE_BUILD_TYPE=Release")
        .AppendQuoted($"-DMOE_OUTPUT_DIR={native.FullPath}")
        .AppendQuoted($"-DMOE_TEST_RESULTS={results.FullPath}"));
    Run("cmake", new ProcessArgumentBuilder().Append("--build").AppendQuoted(nativeBuild.FullPath).Append("--parallel"));
    Information($"libmoerging.so and its managed side are in {native}");
});

Task("Test")
    .IsDependentOn("Build")
    .IsDependentOn("Native")
    .Does(() =>
{
    EnsureDirectoryExists(results);
    var xml = results.CombineWithFilePath("MoErging.Tests.xml");
    var summaryFile = artifacts.CombineWithFilePath("test-summary.txt");
    if (FileExists(summaryFile)) DeleteFile(summaryFile);
    DeleteFiles(GetFiles($"{results.FullPath}/*.xml")); // a stale report must never count

    // The OpenCL test classes run on rusticl's llvmpipe device, which it lists only when asked to.
    var environment = new Dictionary<string, string> { ["RUSTICL_ENABLE"] = EnvironmentVariable("RUSTICL_ENABLE") ?? "llvmpipe" };

    // xunit v3 test projects are executables: run the built assembly, no test host needed.
    int exit = StartProcess("dotnet", new ProcessSettings
    {
        Arguments = new ProcessArgumentBuilder()
            .AppendQuoted($"./tests/MoErging.Tests/bin/{configuration}/net10.0/MoErging.Tests.dll")
            .Append("-noColor")
            .Append("-result-xml").AppendQuoted(xml.FullPath),
        EnvironmentVariables = environment,
    });

    int passed = 0, failed = 0, skipped = 0;
    if (FileExists(xml))
    {
        foreach (var assembly in XDocument.Load(xml.FullPath).Descendants("assembly"))
        {
            passed += (int)assembly.Attribute("passed");
            failed += (int)assembly.Attribute("failed") + (int)assembly.Attribute("errors");
            skipped += (int)assembly.Attribute("skipped");
        }
    }
    if (exit != 0 && failed == 0)
    {
        failed = 1; // the runner itself failed: count it, never report a clean run
    }

    // CTest runs the C API test program and the Python package's tests; each writes <name>.xml (JUnit, one
    // test case per case) into the results. A program that fails without saying why counts as one failure.
    var ctestXml = nativeBuild.CombineWithFilePath("ctest.xml");
    if (FileExists(ctestXml)) DeleteFile(ctestXml);
    StartProcess("ctest", new ProcessSettings
    {
        Arguments = new ProcessArgumentBuilder()
            .Append("--test-dir").AppendQuoted(nativeBuild.FullPath)
            .Append("--output-on-failure")
            .Append("--output-junit").AppendQuoted(ctestXml.FullPath),
        EnvironmentVariables = environment,
    });
    var programs = FileExists(ctestXml) ? XDocument.Load(ctestXml.FullPath).Descendants("testcase").ToList() : new List<XElement>();
    if (programs.Count == 0)
    {
        failed += 1;
    }
    foreach (var program in programs)
    {
        string name = (string)program.Attribute("name");
        bool programFailed = (string)program.Attribute("status") != "run";
        var report = results.CombineWithFilePath($"{name}.xml");
        int casesFailed = 0;
        if (FileExists(report))
        {
            var suite = XDocument.Load(report.FullPath).Root;
            int cases = (int)suite.Attribute("tests");
            casesFailed = (int)suite.Attribute("failures") + (int)suite.Attribute("errors");
            passed += cases - casesFailed;
            failed += casesFailed;
        }
        if (programFailed && casesFailed == 0)
        {
            failed += 1;
        }
    }
    string summary = $"{passed} passed, {failed} failed";
    System.IO.File.WriteAllText(summaryFile.FullPath, summary + "\n");
    Information($"{summary} ({skipped} skipped)");
    if (failed > 0)
    {
        throw new Exception($"tests failed: {summary}");
    }
});

// Benchmark tables are kept per machine under bench/results/<machine>/.
string machine = EnvironmentVariable("MOERGING_MACHINE")
    ?? $"{System.Runtime.InteropServices.RuntimeInformation.OSArchitecture}-{System.Environment.ProcessorCount}core".ToLowerInvariant();

Task("Bench")
    .IsDependentOn("Build")
    .Does(() =>
{
    var output = artifacts.Combine("bench");
    DotNetRun("./bench/MoErging.Bench/MoErging.Bench.csproj", new ProcessArgumentBuilder()
        .Append("--filter").AppendQuoted(Argument("filter", "*"))
        .Append("--artifacts").AppendQuoted(output.FullPath),
        new DotNetRunSettings { Configuration = configuration, NoBuild = true });
    var destination = Directory($"./bench/results/{machine}");
    EnsureDirectoryExists(destination);
    CopyFiles(GetFiles($"{output.FullPath}/results/*.md"), destination);
    Information($"benchmark tables copied to {destination}");
});

// Our CPU backend against TorchSharp in one BenchmarkDotNet run (bench/MoErging.Bench.Peers, outside Engine.sln:
// libtorch is about 500 MB, so neither the default build nor CI fetches it). The full table and the scaling plots go
// to bench/results/<machine>/, the headline ratios into bench/RESULTS.md. --short=true: a 3-iteration check run.
Task("Peers")
    .Does(() =>
{
    var arguments = new ProcessArgumentBuilder()
        .Append("--machine").AppendQuoted(machine)
        .Append("--results").AppendQuoted(MakeAbsolute(Directory($"./bench/results/{machine}")).FullPath)
        .Append("--summary").AppendQuoted(MakeAbsolute(File("./bench/RESULTS.md")).FullPath)
        .Append("--artifacts").AppendQuoted(artifacts.Combine("bench-peers").FullPath);
    if (HasArgument("filter")) arguments.Append("--filter").AppendQuoted(Argument<string>("filter"));
    if (Argument("short", false)) arguments.Append("--short");
    DotNetRun("./bench/MoErging.Bench.Peers/MoErging.Bench.Peers.csproj", arguments,
        new DotNetRunSettings { Configuration = configuration });
});

// Every packable project of the solution: MoErging, MoErging.Kernels and the moerge tool (MoErging.Cli), each with its
// .snupkg. The folder is emptied first, so it holds exactly what a consumer needs of this version.
Task("Pack")
    .IsDependentOn("Build")
    .Does(() =>
{
    CleanDirectory(artifacts.Combine("packages"));
    DotNetPack("./Engine.sln", new DotNetPackSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoLogo = true,
        OutputDirectory = artifacts.Combine("packages"),
    });
});

RunTarget(target);
