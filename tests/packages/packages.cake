// The package checks (the PackageTests target, and part of Test): what a consumer gets from artifacts/packages.
// RunPackageChecks writes one JUnit test case per check, the failing output in its failure message. Everything runs
// in a temporary folder outside the repository, with a private NuGet packages folder, so neither the repository's
// Directory.Build.props nor a stale MoErging of the same version in the user's global packages folder can take part;
// the installed assemblies are also compared, byte for byte, with the ones just packed.
using System.IO.Compression;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using System.Xml.Linq;

void RunPackageChecks(DirectoryPath repository, DirectoryPath packages, FilePath report)
{
    string root = repository.FullPath.TrimEnd('/');
    string version = XmlPeek(repository.CombineWithFilePath("Directory.Build.props"), "/Project/PropertyGroup/Version");
    string PackageVersion(string id) =>
        XmlPeek(repository.CombineWithFilePath("Directory.Packages.props"), $"/Project/ItemGroup/PackageVersion[@Include='{id}']/@Version");
    // Each package's dependencies, exactly: MoErging takes the kernels of its own version only (it sees their internals).
    var expected = new Dictionary<string, Dictionary<string, string>>
    {
        ["MoErging"] = new() { ["MoErging.Kernels"] = $"[{version}]", ["System.Numerics.Tensors"] = PackageVersion("System.Numerics.Tensors") },
        ["MoErging.Kernels"] = new() { ["ILGPU"] = PackageVersion("ILGPU"), ["ILGPU.Algorithms"] = PackageVersion("ILGPU.Algorithms") },
        ["MoErging.Cli"] = new(), // a .NET tool carries its dependencies inside
    };
    var (_, headOutput) = Captured("git", new ProcessArgumentBuilder().Append("rev-parse").Append("HEAD"), repository);
    string head = headOutput.Trim();
    var (originExit, originOutput) = Captured("git", new ProcessArgumentBuilder().Append("remote").Append("get-url").Append("origin"), repository);
    string origin = originExit == 0 ? originOutput.Trim() : "";
    // Published only for an http(s) origin, without credentials (Directory.Build.props).
    string repositoryUrl = Regex.IsMatch(origin, "^https?://") ? Regex.Replace(origin, "^(https?://)[^/@]*@", "$1") : null;

    string temp = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"moerging-packages-{Guid.NewGuid():N}");
    if ((temp + "/").StartsWith(root + "/", StringComparison.Ordinal))
    {
        throw new Exception($"the temporary folder {temp} is inside the repository {root}; set TMPDIR to a folder outside it");
    }
    System.IO.Directory.CreateDirectory(temp);
    var environment = new Dictionary<string, string>
    {
        ["NUGET_PACKAGES"] = System.IO.Path.Combine(temp, "nuget-packages"),
        ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
        ["DOTNET_NOLOGO"] = "1",
        ["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1",
    };
    var cases = new List<XElement>();
    var failed = new HashSet<string>(); // checks that failed, so the ones that need them say so instead of failing obscurely

    void Check(string name, Action body, params string[] needs)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        string failure = null;
        try
        {
            if (needs.FirstOrDefault(failed.Contains) is string need)
            {
                throw new Exception($"not run: it needs '{need}', which failed");
            }
            body();
        }
        catch (Exception e)
        {
            failure = e.Message;
            failed.Add(name);
        }
        var testCase = new XElement("testcase", new XAttribute("classname", "packages"), new XAttribute("name", name),
            new XAttribute("time", clock.Elapsed.TotalSeconds.ToString("F3", System.Globalization.CultureInfo.InvariantCulture)));
        if (failure is not null)
        {
            testCase.Add(new XElement("failure", new XAttribute("message", failure), failure));
        }
        cases.Add(testCase);
        // Messages go through "{0}": an output's braces are not a format.
        Information("package check {0}: {1} ({2:F1} s)", failure is null ? "passed" : "FAILED", name, clock.Elapsed.TotalSeconds);
        if (failure is not null)
        {
            Error("{0}", failure);
        }
    }

    // Runs a command in the temporary folder's environment; a non-zero exit is a failure carrying the whole output.
    string Run(string tool, ProcessArgumentBuilder arguments, string workingDirectory)
    {
        var (exit, output) = Captured(tool, arguments, workingDirectory, environment);
        if (exit != 0)
        {
            throw new Exception($"{tool} {arguments.Render()} exited with {exit}:\n{output}");
        }
        return output;
    }

    try
    {
        FilePath Nupkg(string id) => packages.CombineWithFilePath($"{id}.{version}.nupkg");

        string packed = $"artifacts/packages holds exactly MoErging, MoErging.Kernels and MoErging.Cli {version}, each with its .snupkg";
        Check(packed, () =>
        {
            var want = expected.Keys.SelectMany(id => new[] { $"{id}.{version}.nupkg", $"{id}.{version}.snupkg" }).OrderBy(f => f).ToList();
            var have = System.IO.Directory.Exists(packages.FullPath)
                ? System.IO.Directory.GetFiles(packages.FullPath).Select(System.IO.Path.GetFileName).OrderBy(f => f).ToList()
                : new List<string>();
            if (!want.SequenceEqual(have))
            {
                throw new Exception($"expected {string.Join(", ", want)}; found {(have.Count == 0 ? "nothing" : string.Join(", ", have))}");
            }
        });

        foreach (string id in expected.Keys)
        {
            Check($"{id}: nuspec metadata (licence, readme, authors, repository)", () =>
            {
                using var package = ZipFile.OpenRead(Nupkg(id).FullPath);
                var (metadata, ns) = Nuspec(package);
                var problems = new List<string>();
                void Expect(string what, string actual, string wanted)
                {
                    if (actual != wanted) problems.Add($"{what} is {(actual is null ? "missing" : $"'{actual}'")}, expected {(wanted is null ? "none" : $"'{wanted}'")}");
                }
                Expect("id", (string)metadata.Element(ns + "id"), id);
                Expect("version", (string)metadata.Element(ns + "version"), version);
                Expect("licence type", (string)metadata.Element(ns + "license")?.Attribute("type"), "expression");
                Expect("licence", (string)metadata.Element(ns + "license"), "Apache-2.0");
                Expect("authors", (string)metadata.Element(ns + "authors"), "MoErging contributors");
                var repositoryElement = metadata.Element(ns + "repository");
                Expect("repository type", (string)repositoryElement?.Attribute("type"), "git");
                Expect("repository commit", (string)repositoryElement?.Attribute("commit"), head);
                Expect("repository url", (string)repositoryElement?.Attribute("url"), repositoryUrl);
                if (string.IsNullOrWhiteSpace((string)metadata.Element(ns + "description"))) problems.Add("no description");
                if (string.IsNullOrWhiteSpace((string)metadata.Element(ns + "tags"))) problems.Add("no tags");
                string readme = (string)metadata.Element(ns + "readme");
                if (readme is null) problems.Add("no readme");
                else if (package.GetEntry(readme) is not ZipArchiveEntry entry || entry.Length == 0) problems.Add($"readme {readme} is not in the package");
                if (problems.Count > 0) throw new Exception(string.Join("\n", problems));
            }, packed);

            Check($"{id}: dependencies", () =>
            {
                using var package = ZipFile.OpenRead(Nupkg(id).FullPath);
                var (metadata, ns) = Nuspec(package);
                var groups = metadata.Element(ns + "dependencies")?.Elements(ns + "group").ToList() ?? new List<XElement>();
                var problems = new List<string>();
                if (groups.Any(g => (string)g.Attribute("targetFramework") != "net10.0"))
                {
                    problems.Add($"dependency groups for {string.Join(", ", groups.Select(g => (string)g.Attribute("targetFramework")))}, expected net10.0 only");
                }
                var actual = groups.SelectMany(g => g.Elements(ns + "dependency")).ToDictionary(d => (string)d.Attribute("id"), d => (string)d.Attribute("version"));
                foreach (var (dependency, wanted) in expected[id])
                {
                    if (!actual.TryGetValue(dependency, out string got)) problems.Add($"no dependency on {dependency} {wanted}");
                    else if (got != wanted) problems.Add($"depends on {dependency} {got}, expected {wanted}");
                }
                problems.AddRange(actual.Keys.Except(expected[id].Keys).Select(extra => $"unexpected dependency on {extra} {actual[extra]}"));
                if (id == "MoErging.Cli")
                {
                    // The tool carries ILGPU and System.Numerics.Tensors: their licences must travel with it.
                    if (package.GetEntry("THIRD-PARTY-NOTICES.txt") is not ZipArchiveEntry notices || notices.Length == 0)
                    {
                        problems.Add("THIRD-PARTY-NOTICES.txt is not in the tool's package");
                    }
                    // A .NET tool: its package type, and the command its settings file names.
                    string type = (string)metadata.Element(ns + "packageTypes")?.Element(ns + "packageType")?.Attribute("name");
                    if (type != "DotnetTool") problems.Add($"package type is {type ?? "missing"}, expected DotnetTool");
                    var settings = package.Entries.FirstOrDefault(e => e.FullName.EndsWith("/DotnetToolSettings.xml"));
                    var command = settings is null ? null : XDocument.Load(settings.Open()).Descendants("Command").FirstOrDefault();
                    if ((string)command?.Attribute("Name") != "moerge" || (string)command?.Attribute("EntryPoint") != "moerge.dll")
                    {
                        problems.Add($"DotnetToolSettings.xml {(settings is null ? "is missing" : $"names {command}")}, expected the command moerge running moerge.dll");
                    }
                }
                if (problems.Count > 0) throw new Exception(string.Join("\n", problems));
            }, packed);

            Check($"{id}: no build path in its files, PDB documents under /_/", () =>
            {
                var problems = new List<string>();
                byte[][] needles = { System.Text.Encoding.UTF8.GetBytes(root), System.Text.Encoding.Unicode.GetBytes(root) };
                int pdbs = 0;
                foreach (FilePath file in new[] { Nupkg(id), packages.CombineWithFilePath($"{id}.{version}.snupkg") })
                {
                    using var package = ZipFile.OpenRead(file.FullPath);
                    foreach (var entry in package.Entries)
                    {
                        var bytes = new System.IO.MemoryStream();
                        using (var stream = entry.Open()) stream.CopyTo(bytes);
                        byte[] content = bytes.ToArray();
                        string where = $"{file.GetFilename()}:{entry.FullName}";
                        if (needles.Any(n => content.AsSpan().IndexOf(n) >= 0)) problems.Add($"{where} contains {root}");
                        // Our own assemblies only: the tool also carries ILGPU's and the runtime's.
                        bool ours = entry.Name.StartsWith("MoErging", StringComparison.Ordinal) || entry.Name.StartsWith("moerge.", StringComparison.Ordinal);
                        if (ours && entry.Name.EndsWith(".dll"))
                        {
                            using var pe = new PEReader(new System.IO.MemoryStream(content));
                            var codeView = pe.ReadDebugDirectory().Where(d => d.Type == DebugDirectoryEntryType.CodeView).ToList();
                            if (codeView.Count == 0) problems.Add($"{where} names no PDB");
                            problems.AddRange(codeView.Select(d => pe.ReadCodeViewDebugDirectoryData(d).Path)
                                .Where(path => !path.StartsWith("/_/")).Select(path => $"{where} names its PDB {path}"));
                        }
                        if (ours && entry.Name.EndsWith(".pdb"))
                        {
                            pdbs++;
                            using var provider = MetadataReaderProvider.FromPortablePdbStream(new System.IO.MemoryStream(content));
                            var reader = provider.GetMetadataReader();
                            var documents = reader.Documents.Select(d => reader.GetString(reader.GetDocument(d).Name)).ToList();
                            if (documents.Count == 0) problems.Add($"{where} lists no source document");
                            problems.AddRange(documents.Where(d => !d.StartsWith("/_/")).Take(3).Select(d => $"{where} lists the source {d}"));
                        }
                    }
                }
                if (pdbs == 0) problems.Add("no PDB of ours in the package or its .snupkg");
                if (problems.Count > 0) throw new Exception(string.Join("\n", problems));
            }, packed);
        }

        // The test-data generators live in MoErging.Samples, which only the tool carries (for demo and evaluate).
        Check("MoErging: ships no test-data code (no MoErging.Samples assembly, no SyntheticExperts or RoutingDataset type)", () =>
        {
            using var package = ZipFile.OpenRead(Nupkg("MoErging").FullPath);
            var problems = package.Entries.Where(e => e.Name.StartsWith("MoErging.Samples", StringComparison.Ordinal))
                .Select(e => $"the package holds {e.FullName}").ToList();
            var entry = package.GetEntry("lib/net10.0/MoErging.dll") ?? throw new Exception("the package has no lib/net10.0/MoErging.dll");
            var bytes = new System.IO.MemoryStream();
            using (var stream = entry.Open()) stream.CopyTo(bytes);
            bytes.Position = 0;
            using var pe = new PEReader(bytes);
            var reader = pe.GetMetadataReader();
            var types = reader.TypeDefinitions.Select(h => reader.GetTypeDefinition(h))
                .Select(t => $"{reader.GetString(t.Namespace)}.{reader.GetString(t.Name)}").ToList();
            if (types.Count < 20) problems.Add($"MoErging.dll lists only {types.Count} types; the check reads the wrong assembly");
            problems.AddRange(types.Where(t => t.EndsWith(".SyntheticExperts") || t.EndsWith(".RoutingDataset") || t.StartsWith("MoErging.Samples."))
                .Select(t => $"MoErging.dll defines {t}"));
            if (problems.Count > 0) throw new Exception(string.Join("\n", problems));
        }, packed);

        // A consumer: a fresh console project outside the repository that takes MoErging from artifacts/packages,
        // beside the user's own sources (they give ILGPU and System.Numerics.Tensors).
        string consumer = System.IO.Path.Combine(temp, "consumer");
        string restored = $"consumer: a fresh console project adds MoErging {version} from artifacts/packages";
        Check(restored, () =>
        {
            Run("dotnet", new ProcessArgumentBuilder().Append("new").Append("console").Append("--name").Append("Consumer")
                .Append("--output").AppendQuoted(consumer).Append("--framework").Append("net10.0").Append("--no-restore"), temp);
            System.IO.File.WriteAllText(System.IO.Path.Combine(consumer, "nuget.config"), new XDocument(
                new XElement("configuration", new XElement("packageSources",
                    new XElement("add", new XAttribute("key", "moerging-artifacts"), new XAttribute("value", packages.FullPath)))))
                .ToString());
            System.IO.File.Copy(repository.CombineWithFilePath("tests/packages/consumer/Program.cs").FullPath,
                System.IO.Path.Combine(consumer, "Program.cs"), overwrite: true);
            Run("dotnet", new ProcessArgumentBuilder().Append("add").Append("package").Append("MoErging").Append("--version").Append(version), consumer);
        }, packed);

        string built = "consumer: builds against the packed MoErging, MoErging.Kernels (byte for byte the ones in artifacts/packages)";
        Check(built, () =>
        {
            Run("dotnet", new ProcessArgumentBuilder().Append("build").Append("--configuration").Append("Release")
                .Append("-p:TreatWarningsAsErrors=true"), consumer);
            SameBytes(System.IO.Path.Combine(consumer, "bin", "Release", "net10.0"), Nupkg("MoErging"), "lib/net10.0/MoErging.dll");
            SameBytes(System.IO.Path.Combine(consumer, "bin", "Release", "net10.0"), Nupkg("MoErging.Kernels"), "lib/net10.0/MoErging.Kernels.dll");
        }, restored);

        Check("consumer: Arrow and fixed-weight forwards (CPU, GPU kernels on ILGPU's CPU accelerator) match a float64 reference", () =>
        {
            Information("{0}", Run("dotnet", new ProcessArgumentBuilder().AppendQuoted(System.IO.Path.Combine(consumer, "bin", "Release", "net10.0", "Consumer.dll")), consumer).Trim());
        }, built);

        // The tool, installed as a user would, into a folder of its own.
        string tool = System.IO.Path.Combine(temp, "tool");
        string moerge = System.IO.Path.Combine(tool, "moerge");
        string installed = $"tool: dotnet tool install MoErging.Cli {version} from artifacts/packages (byte for byte the packed moerge)";
        Check(installed, () =>
        {
            Run("dotnet", new ProcessArgumentBuilder().Append("tool").Append("install").Append("--tool-path").AppendQuoted(tool)
                .Append("--add-source").AppendQuoted(packages.FullPath).Append("MoErging.Cli").Append("--version").Append(version), temp);
            string store = System.IO.Directory.GetFiles(tool, "moerge.dll", System.IO.SearchOption.AllDirectories).FirstOrDefault()
                ?? throw new Exception($"no moerge.dll under {tool}");
            SameBytes(System.IO.Path.GetDirectoryName(store), Nupkg("MoErging.Cli"), "tools/net10.0/any/moerge.dll");
            SameBytes(System.IO.Path.GetDirectoryName(store), Nupkg("MoErging.Cli"), "tools/net10.0/any/MoErging.dll");
        }, packed);

        Check($"tool: moerge --version prints {version}", () =>
        {
            string output = Run(moerge, new ProcessArgumentBuilder().Append("--version"), temp).Trim();
            if (output != $"moerge {version}") throw new Exception($"moerge --version printed '{output}', expected 'moerge {version}'");
        }, installed);

        Check("tool: moerge demo (8 experts, d 64, 32 tokens, CPU) routes nearly every token to its task's expert", () =>
        {
            string output = Run(moerge, new ProcessArgumentBuilder().Append("demo")
                .Append("--experts 8 --dim 64 --rank 4 --tokens 32 --iterations 3 --backend cpu"), temp);
            // Each token is drawn along its task's direction at strength 6 over unit noise, so Arrow's top 1 is
            // that task's expert for all but a rare token.
            var routed = Regex.Match(output, @"top-1 expert is the token's task for (\d+) of (\d+) tokens");
            if (!output.Contains("8 experts (d = 64, r = 4") || !routed.Success || routed.Groups[2].Value != "32" || int.Parse(routed.Groups[1].Value) < 29)
            {
                throw new Exception($"expected 8 experts at d = 64 and the task's expert on top for at least 29 of 32 tokens:\n{output}");
            }
        }, installed);
    }
    finally
    {
        EnsureDirectoryExists(report.GetDirectory());
        int failures = cases.Count(c => c.Element("failure") is not null);
        new XDocument(new XElement("testsuite", new XAttribute("name", "packages"), new XAttribute("tests", cases.Count),
            new XAttribute("failures", failures), new XAttribute("errors", 0), new XAttribute("skipped", 0), cases)).Save(report.FullPath);
        System.IO.Directory.Delete(temp, recursive: true);
    }
}

// Runs a command and returns its exit code with its standard output and then its standard error.
(int Exit, string Output) Captured(string tool, ProcessArgumentBuilder arguments, DirectoryPath workingDirectory, IDictionary<string, string> environment = null)
{
    int exit = StartProcess(tool, new ProcessSettings
    {
        Arguments = arguments,
        WorkingDirectory = workingDirectory,
        EnvironmentVariables = environment,
        RedirectStandardOutput = true,
        RedirectStandardError = true,
    }, out IEnumerable<string> stdout, out IEnumerable<string> stderr);
    return (exit, string.Join("\n", stdout.Concat(stderr)));
}

(XElement Metadata, XNamespace Ns) Nuspec(ZipArchive package)
{
    var entry = package.Entries.Single(e => !e.FullName.Contains('/') && e.Name.EndsWith(".nuspec"));
    var root = XDocument.Load(entry.Open()).Root;
    return (root.Element(root.Name.Namespace + "metadata"), root.Name.Namespace);
}

// The file an install put in folder is the one the package holds, so it is not a stale copy of the same version.
void SameBytes(string folder, FilePath nupkg, string entryName)
{
    using var package = ZipFile.OpenRead(nupkg.FullPath);
    var entry = package.GetEntry(entryName) ?? throw new Exception($"{nupkg.GetFilename()} has no {entryName}");
    using var stream = entry.Open();
    string installed = System.IO.Path.Combine(folder, System.IO.Path.GetFileName(entryName));
    if (!System.IO.File.Exists(installed))
    {
        throw new Exception($"{installed} is missing");
    }
    if (!SHA256.HashData(stream).AsSpan().SequenceEqual(SHA256.HashData(System.IO.File.ReadAllBytes(installed))))
    {
        throw new Exception($"{installed} differs from {entryName} in {nupkg.GetFilename()}: a stale package was used");
    }
}
