using System.Globalization;
using MoErging.Kernels;

namespace MoErging.Cli;

/// <summary><c>moerge devices</c>: every CUDA and OpenCL device, and whether the engine runs on it or exactly why not.</summary>
internal static class DevicesCommand
{
    private const string Help = """
        usage: moerge devices [--no-check]

        Lists every CUDA and OpenCL device the drivers report: its index (for --device), API, kind (GPU or
        CPU), memory, platform and name, and whether the engine runs on it. To know, each device is opened
        and every kernel compiled on it (about a second per device; PoCL takes a few); a device that fails
        says exactly why, in the driver's words. Then it says what --backend auto would take.

          --no-check   list the devices without opening them
        """;

    private static readonly Dictionary<string, OptionKind> Options = new() { ["no-check"] = OptionKind.Flag, ["help"] = OptionKind.Flag };

    public static int Run(string[] args, TextWriter stdout)
    {
        if (Cli.Help(args, Help, stdout))
        {
            return 0;
        }
        CommandLine line = CommandLine.Parse(args, Options);
        line.NoPositionals();
        bool check = !line.Flag("no-check");
        IReadOnlyList<DeviceInfo> devices = Devices.List();
        foreach (GpuApi api in new[] { GpuApi.Cuda, GpuApi.OpenCL })
        {
            if (Devices.Missing(api) is string missing)
            {
                stdout.WriteLine($"{Name(api)}: {missing}");
            }
        }
        if (devices.Count == 0)
        {
            stdout.WriteLine("no GPU device: the engine runs on the CPU backend");
            return 0;
        }
        var c = CultureInfo.InvariantCulture;
        var rows = new List<string[]> { new[] { "index", "api", "kind", "memory", "platform", "name", "engine" } };
        string? auto = null;
        foreach (DeviceInfo device in devices)
        {
            bool runs = false;
            string report = "";
            if (check)
            {
                runs = Devices.Check(device, out report);
            }
            string engine = !check ? "not checked" : runs ? $"runs ({report})" : $"does not run: {report}";
            rows.Add([
                device.Index.ToString(c), Name(device.Api), device.Kind.ToString().ToUpperInvariant(),
                string.Create(c, $"{device.MemoryBytes / 1e9:F1} GB"), device.Platform, device.Name, engine,
            ]);
            // Auto's rule: CUDA, then an OpenCL GPU; an OpenCL driver on the CPU never beats the CPU backend.
            if (runs && auto is null && (device.Api == GpuApi.Cuda || device.Kind == DeviceKind.Gpu))
            {
                auto = $"device {device.Index} ({device.Name}) on {Name(device.Api)}";
            }
        }
        int[] widths = Enumerable.Range(0, rows[0].Length - 1).Select(i => rows.Max(r => r[i].Length)).ToArray();
        foreach (string[] row in rows)
        {
            stdout.WriteLine(string.Join("  ", row.Take(widths.Length).Select((cell, i) => cell.PadRight(widths[i]))) + "  " + row[^1]);
        }
        if (check)
        {
            stdout.WriteLine($"--backend auto takes {auto ?? "the CPU backend (no usable CUDA device or OpenCL GPU)"}");
        }
        return 0;
    }

    private static string Name(GpuApi api) => api == GpuApi.Cuda ? "CUDA" : "OpenCL";
}
