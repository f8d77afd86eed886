// The whole entry point: dotnet tool restore && dotnet cake --target=<Build|Test|Bench|Pack>
// Test is the default. It writes artifacts/test-summary.txt ("N passed, N failed"), which .ci/run prints last.
using System.Xml.Linq;

var target = Argument("target", "Test");
var configuration = Argument("configuration", "Release");
var artifacts = MakeAbsolute(Directory("./artifacts"));

Task("Build")
    .Does(() =>
{
    DotNetBuild("./Engine.sln", new DotNetBuildSettings
    {
        Configuration = configuration,
        NoLogo = true,
    });
});

Task("Test")
    .IsDependentOn("Build")
    .Does(() =>
{
    var results = artifacts.Combine("test-results");
    EnsureDirectoryExists(results);
    var xml = results.CombineWithFilePath("MoErging.Tests.xml");
    var summaryFile = artifacts.CombineWithFilePath("test-summary.txt");
    if (FileExists(summaryFile)) DeleteFile(summaryFile);
    if (FileExists(xml)) DeleteFile(xml);

    // xunit v3 test projects are executables: run the built assembly, no test host needed.
    int exit = StartProcess("dotnet", new ProcessSettings
    {
        Arguments = new ProcessArgumentBuilder()
            .AppendQuoted($"./tests/MoErging.Tests/bin/{configuration}/net10.0/MoErging.Tests.dll")
            .Append("-noColor")
            .Append("-result-xml").AppendQuoted(xml.FullPath),
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
    string summary = $"{passed} passed, {failed} failed";
    System.IO.File.WriteAllText(summaryFile.FullPath, summary + "\n");
    Information($"{summary} ({skipped} skipped)");
    if (failed > 0)
    {
        throw new Exception($"tests failed: {summary}");
    }
});

Task("Bench")
    .IsDependentOn("Build")
    .Does(() =>
{
    // BenchmarkDotNet writes markdown tables; they are kept per machine under bench/results/.
    string machine = EnvironmentVariable("MOERGING_MACHINE")
        ?? $"{System.Runtime.InteropServices.RuntimeInformation.OSArchitecture}-{System.Environment.ProcessorCount}core".ToLowerInvariant();
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

Task("Pack")
    .IsDependentOn("Build")
    .Does(() =>
{
    DotNetPack("./engine/MoErging/MoErging.csproj", new DotNetPackSettings
    {
        Configuration = configuration,
        NoBuild = true,
        OutputDirectory = artifacts.Combine("packages"),
    });
});

RunTarget(target);
