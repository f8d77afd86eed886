// The whole entry point: dotnet tool restore && dotnet cake --target=<Build|Native|NativeAot|Wheel|Test|Bench|Peers|Pack|PackageTests>
// Test is the default. It writes artifacts/test-summary.txt ("N passed, N failed"), which .ci/run prints last.
#load "./tests/packages/packages.cake"
using System.Xml.Linq;

var target = Argument("target", "Test");
var configuration = Argument("configuration", "Release");
var artifacts = MakeAbsolute(Directory("./artifacts"));
var results = artifacts.Combine("test-results");
// libmoerging.so with the managed side published next to it, where the library looks for it.
var native = artifacts.Combine("native");
var nativeBuild = artifacts.Combine("native-build");
// This machine's portable runtime identifier (the SDK's own RID may name a distribution, which has no ReadyToRun
// or NativeAOT packs); the NativeAOT build exists for x64 only (its instruction-set baseline is x86-64-v3).
var portableRid = $"linux-{System.Runtime.InteropServices.RuntimeInformation.OSArchitecture.ToString().ToLowerInvariant()}";
// The NativeAOT build of the same library: MoErging.Interop.so (the managed side compiled ahead of time) next to it.
var nativeAot = artifacts.Combine("native-aot");
var nativeAotBuild = artifacts.Combine("native-aot-build");
var packages = artifacts.Combine("packages");
var packagesReport = results.CombineWithFilePath("packages.xml");

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
    // ReadyToRun: the engine's and ILGPU's code is precompiled for this machine's processor family, so the first
    // calls JIT less (the C library's first use in bench/RESULTS.md). The publish folder is emptied first, so that
    // neither it nor an install of it carries files of an earlier publish.
    CleanDirectory(native);
    DotNetPublish("./interop/MoErging.Interop/MoErging.Interop.csproj", new DotNetPublishSettings
    {
        Configuration = configuration,
        Runtime = portableRid,
        SelfContained = false,
        NoLogo = true,
        OutputDirectory = native,
        MSBuildSettings = new DotNetMSBuildSettings().WithProperty("PublishReadyToRun", "true"),
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

// libmoerging.so in its NativeAOT build: no .NET runtime needed to use it; CPU only, on x86-64-v3 processors.
// The publish builds what it needs itself (with the RID, into its own output folders), so Build is not needed first.
Task("NativeAot")
    .Does(() =>
{
    var published = nativeAotBuild.Combine("managed");
    DotNetPublish("./interop/MoErging.Interop/MoErging.Interop.csproj", new DotNetPublishSettings
    {
        Configuration = configuration,
        Runtime = "linux-x64",
        NoLogo = true,
        OutputDirectory = published,
        MSBuildSettings = new DotNetMSBuildSettings().WithProperty("MoErgingNativeAot", "true"),
    });
    Run("cmake", new ProcessArgumentBuilder()
        .Append("-S").AppendQuoted("./interop/native")
        .Append("-B").AppendQuoted(nativeAotBuild.FullPath)
        .Append("-DCMAKE_BUILD_TYPE=Release")
        .Append("-DMOE_MANAGED=aot")
        .AppendQuoted($"-DMOE_AOT_LIBRARY={published.CombineWithFilePath("MoErging.Interop.so").FullPath}")
        .AppendQuoted($"-DMOE_OUTPUT_DIR={nativeAot.FullPath}")
        .AppendQuoted($"-DMOE_TEST_RESULTS={results.FullPath}"));
    Run("cmake", new ProcessArgumentBuilder().Append("--build").AppendQuoted(nativeAotBuild.FullPath).Append("--parallel"));
    Information($"libmoerging.so and MoErging.Interop.so (NativeAOT) are in {nativeAot}");
});

// The Python wheel (artifacts/python): the package with the NativeAOT library bundled, so that pip install of that one
// file gives a working `import moerging` with no .NET and no environment variables.
Task("Wheel")
    .IsDependentOn("NativeAot")
    .Does(() =>
{
    var wheels = artifacts.Combine("python");
    CleanDirectory(wheels);
    Run("python3", new ProcessArgumentBuilder()
        .AppendQuoted("./interop/python/build_wheel.py")
        .Append("--native").AppendQuoted(nativeAot.FullPath)
        .Append("--out").AppendQuoted(wheels.FullPath));
});

// The Test target's totals. AddJUnit counts a JUnit report (its root's tests, failures and errors; one test case per
// case) and returns how many of its cases failed, or null when there is no report, for the caller to count as it knows.
// Failures names each failed case with the first line of its message, printed again beside the summary: a log's
// tail then says what failed.
sealed class TestTotals
{
    public int Passed { get; private set; }
    public int Failed { get; private set; }
    public int Skipped { get; private set; }
    public List<string> Failures { get; } = new();

    public void AddFailure(string name, string message) =>
        Failures.Add($"{name}: {(message ?? "").Trim().Split('\n')[0]}");

    public void Add(int passed = 0, int failed = 0, int skipped = 0) => (Passed, Failed, Skipped) = (Passed + passed, Failed + failed, Skipped + skipped);

    public int? AddJUnit(FilePath report)
    {
        if (!System.IO.File.Exists(report.FullPath)) return null;
        var suite = XDocument.Load(report.FullPath).Root;
        int cases = (int)suite.Attribute("tests"), failures = (int)suite.Attribute("failures") + (int)suite.Attribute("errors");
        Add(passed: cases - failures, failed: failures);
        foreach (var testCase in suite.Descendants("testcase"))
        {
            if ((testCase.Element("failure") ?? testCase.Element("error")) is { } failure)
            {
                AddFailure((string)testCase.Attribute("name"), (string)failure.Attribute("message") ?? failure.Value);
            }
        }
        return failures;
    }
}

// Runs CTest in one native build directory. Its tests (the C API test program, the Python package's tests and the
// install check) each write <ctest test name>.xml (JUnit, one test case per case) into the results; every case
// counts, and a program that fails without saying why counts as one failure.
void RunNativeTests(DirectoryPath build, IDictionary<string, string> environment, TestTotals totals)
{
    var ctestXml = build.CombineWithFilePath("ctest.xml");
    if (FileExists(ctestXml)) DeleteFile(ctestXml);
    StartProcess("ctest", new ProcessSettings
    {
        Arguments = new ProcessArgumentBuilder()
            .Append("--test-dir").AppendQuoted(build.FullPath)
            .Append("--output-on-failure")
            .Append("--output-junit").AppendQuoted(ctestXml.FullPath),
        EnvironmentVariables = environment,
    });
    var programs = FileExists(ctestXml) ? XDocument.Load(ctestXml.FullPath).Descendants("testcase").ToList() : new List<XElement>();
    if (programs.Count == 0)
    {
        totals.Add(failed: 1);
    }
    foreach (var program in programs)
    {
        string name = (string)program.Attribute("name");
        bool programFailed = (string)program.Attribute("status") != "run";
        // Every program writes its report; one that wrote none failed, whatever its exit status said.
        int casesFailed = totals.AddJUnit(results.CombineWithFilePath($"{name}.xml")) ?? -1;
        if (casesFailed == -1 || (programFailed && casesFailed == 0))
        {
            totals.Add(failed: 1);
        }
    }
}

Task("Test")
    .IsDependentOn("Build")
    .IsDependentOn("Native")
    .IsDependentOn("NativeAot")
    .IsDependentOn("Wheel")
    .IsDependentOn("Pack")
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

    var totals = new TestTotals();
    if (FileExists(xml))
    {
        foreach (var assembly in XDocument.Load(xml.FullPath).Descendants("assembly"))
        {
            totals.Add((int)assembly.Attribute("passed"), (int)assembly.Attribute("failed") + (int)assembly.Attribute("errors"),
                (int)assembly.Attribute("skipped"));
        }
        foreach (var test in XDocument.Load(xml.FullPath).Descendants("test").Where(t => (string)t.Attribute("result") == "Fail"))
        {
            totals.AddFailure((string)test.Attribute("name"), (string)test.Element("failure")?.Element("message"));
        }
    }
    if (exit != 0 && totals.Failed == 0)
    {
        totals.Add(failed: 1); // the runner itself failed: count it, never report a clean run
    }

    // The hosted and the NativeAOT library, each through its own C, Python and install tests.
    foreach (var build in new[] { nativeBuild, nativeAotBuild })
    {
        RunNativeTests(build, environment, totals);
    }

    // The package checks (tests/packages), on what the Pack target just wrote. Checks that stopped short count as
    // one failure unless their report already shows one, as for the programs above.
    bool packageChecksStopped = false;
    try
    {
        RunPackageChecks(MakeAbsolute(Directory(".")), packages, packagesReport);
    }
    catch (Exception e)
    {
        packageChecksStopped = true;
        Error("the package checks stopped: {0}", e.Message);
    }
    int? packageChecksFailed = totals.AddJUnit(packagesReport);
    if (packageChecksFailed is null || (packageChecksStopped && packageChecksFailed == 0))
    {
        totals.Add(failed: 1);
    }

    foreach (string failure in totals.Failures)
    {
        Error("failed: {0}", failure);
    }
    string summary = $"{totals.Passed} passed, {totals.Failed} failed";
    System.IO.File.WriteAllText(summaryFile.FullPath, summary + "\n");
    Information($"{summary} ({totals.Skipped} skipped)");
    if (totals.Failed > 0)
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
    CleanDirectory(packages);
    DotNetPack("./Engine.sln", new DotNetPackSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoLogo = true,
        OutputDirectory = packages,
    });
});

// The package checks alone (tests/packages/packages.cake): install and use what Pack wrote, as a consumer would.
Task("PackageTests")
    .IsDependentOn("Pack")
    .Does(() =>
{
    if (FileExists(packagesReport)) DeleteFile(packagesReport);
    RunPackageChecks(MakeAbsolute(Directory(".")), packages, packagesReport);
    var totals = new TestTotals();
    if (totals.AddJUnit(packagesReport) is null)
    {
        totals.Add(failed: 1);
    }
    Information($"package checks: {totals.Passed} passed, {totals.Failed} failed ({packagesReport})");
    if (totals.Failed > 0)
    {
        throw new Exception($"package checks failed: {totals.Passed} passed, {totals.Failed} failed");
    }
});

RunTarget(target);
