using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace MoErging.Bench.Peers;

/// <summary>
/// TorchSharp 0.107's <c>libLibTorchSharp.so</c> was linked against GCC 13's libstdc++ and needs one symbol of
/// version GLIBCXX_3.4.32, <c>std::ios_base_library_init()</c>. Distributions with GCC 12 (Debian 12) lack that
/// version, so the library fails to load. There, before TorchSharp is touched, this marks that one version
/// requirement weak in this program's own copy of the library (the copy in its output folder, never the NuGet
/// cache), builds a one-function shim that defines the symbol (<c>compat/</c>), and runs the program again with
/// the shim preloaded, so the symbol binds to it. On a newer libstdc++ it does nothing.
/// </summary>
internal static class LibstdcxxCompat
{
    private const string Version = "GLIBCXX_3.4.32";
    private const string ShimName = "libglibcxx_3_4_32.so";
    private const string Marker = "MOERGING_GLIBCXX_SHIM";

    /// <summary>Null to go on in this process; otherwise the exit code of the rerun that did the work.</summary>
    public static int? Ensure(string[] args)
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable(Marker) == "1")
        {
            return null;
        }
        string torchSharp = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        string? libstdcxx = LoadedLibstdcxx();
        if (!File.Exists(torchSharp) || libstdcxx is null || ElfVersions.Defines(libstdcxx, Version)
            || !ElfVersions.Requires(torchSharp, Version))
        {
            return null;
        }
        ElfVersions.MakeRequirementWeak(torchSharp, Version);
        string compat = Path.Combine(AppContext.BaseDirectory, "compat");
        string shim = Path.Combine(compat, ShimName);
        if (!File.Exists(shim))
        {
            RunOrThrow("c++", ["-O2", "-shared", "-fPIC", "-o", shim, Path.Combine(compat, "ios_base_library_init.cpp"),
                $"-Wl,--version-script={Path.Combine(compat, "ios_base_library_init.map")}"]);
        }
        Console.Error.WriteLine($"{libstdcxx} lacks {Version}, which TorchSharp's libLibTorchSharp.so needs; rerunning with {shim} preloaded");
        var rerun = new ProcessStartInfo(Environment.ProcessPath!);
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
        {
            rerun.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "MoErging.Bench.Peers.dll"));
        }
        foreach (string arg in args)
        {
            rerun.ArgumentList.Add(arg);
        }
        string? preload = Environment.GetEnvironmentVariable("LD_PRELOAD");
        rerun.Environment["LD_PRELOAD"] = string.IsNullOrEmpty(preload) ? shim : $"{shim}:{preload}";
        rerun.Environment[Marker] = "1";
        using Process process = Process.Start(rerun)!;
        process.WaitForExit();
        return process.ExitCode;
    }

    /// <summary>The libstdc++ this process maps (the runtime's own), as the dynamic loader would give it to TorchSharp.</summary>
    private static string? LoadedLibstdcxx()
    {
        if (!NativeLibrary.TryLoad("libstdc++.so.6", out _))
        {
            return null;
        }
        return File.ReadLines("/proc/self/maps")
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(fields => fields.Length >= 6 && Path.GetFileName(fields[5]).StartsWith("libstdc++.so", StringComparison.Ordinal))
            .Select(fields => fields[5])
            .FirstOrDefault();
    }

    private static void RunOrThrow(string tool, string[] arguments)
    {
        var start = new ProcessStartInfo(tool);
        foreach (string a in arguments)
        {
            start.ArgumentList.Add(a);
        }
        using Process process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {tool}");
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} {string.Join(' ', arguments)} exited with {process.ExitCode}");
        }
    }
}

/// <summary>
/// The symbol version tables of a 64-bit little-endian ELF shared library: the versions it defines
/// (<c>.gnu.version_d</c>) and the ones it requires of its dependencies (<c>.gnu.version_r</c>).
/// </summary>
internal static class ElfVersions
{
    private const uint VersionDefinitions = 0x6ffffffd, VersionRequirements = 0x6ffffffe;
    private const ushort WeakFlag = 0x2; // VER_FLG_WEAK: the loader only warns when the version is missing

    public static bool Defines(string path, string version)
    {
        byte[] elf = File.ReadAllBytes(path);
        foreach ((long offset, long strings) in Sections(elf, VersionDefinitions))
        {
            // Verdef: vd_version, vd_flags, vd_ndx, vd_cnt (u16 each), vd_hash, vd_aux, vd_next (u32 each);
            // its first Verdaux (vda_name, vda_next) names the version.
            for (long d = offset; ;)
            {
                uint aux = U32(elf, d + 12), next = U32(elf, d + 16);
                if (Name(elf, strings + U32(elf, d + aux)) == version)
                {
                    return true;
                }
                if (next == 0)
                {
                    break;
                }
                d += next;
            }
        }
        return false;
    }

    public static bool Requires(string path, string version) => Requirements(File.ReadAllBytes(path), version).Any();

    /// <summary>Sets the weak flag on every requirement of <paramref name="version"/>, in place.</summary>
    public static void MakeRequirementWeak(string path, string version)
    {
        byte[] elf = File.ReadAllBytes(path);
        long[] flags = [.. Requirements(elf, version)];
        if (flags.All(f => (U16(elf, f) & WeakFlag) != 0))
        {
            return;
        }
        foreach (long f in flags)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan((int)f), (ushort)(U16(elf, f) | WeakFlag));
        }
        string temporary = path + ".tmp";
        File.WriteAllBytes(temporary, elf);
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>The file offsets of the vna_flags fields of the requirements naming <paramref name="version"/>.</summary>
    private static IEnumerable<long> Requirements(byte[] elf, string version)
    {
        foreach ((long offset, long strings) in Sections(elf, VersionRequirements))
        {
            // Verneed: vn_version, vn_cnt (u16), vn_file, vn_aux, vn_next (u32); each Vernaux:
            // vna_hash (u32), vna_flags, vna_other (u16), vna_name, vna_next (u32).
            for (long n = offset; ;)
            {
                ushort count = U16(elf, n + 2);
                long a = n + U32(elf, n + 8);
                for (int i = 0; i < count; i++)
                {
                    if (Name(elf, strings + U32(elf, a + 8)) == version)
                    {
                        yield return a + 4;
                    }
                    a += U32(elf, a + 12);
                }
                uint next = U32(elf, n + 12);
                if (next == 0)
                {
                    break;
                }
                n += next;
            }
        }
    }

    /// <summary>Sections of a type: their file offset and that of the string table they link to.</summary>
    private static IEnumerable<(long Offset, long Strings)> Sections(byte[] elf, uint type)
    {
        if (elf.Length < 64 || !elf.AsSpan(0, 4).SequenceEqual("\u007fELF"u8) || elf[4] != 2 || elf[5] != 1)
        {
            throw new InvalidDataException("not a 64-bit little-endian ELF file");
        }
        long table = (long)BinaryPrimitives.ReadUInt64LittleEndian(elf.AsSpan(0x28));
        ushort size = U16(elf, 0x3A), count = U16(elf, 0x3C);
        long OffsetOf(long section) => (long)BinaryPrimitives.ReadUInt64LittleEndian(elf.AsSpan((int)(section + 0x18)));
        for (int i = 0; i < count; i++)
        {
            long section = table + (long)i * size;
            if (U32(elf, section + 4) == type)
            {
                yield return (OffsetOf(section), OffsetOf(table + (long)U32(elf, section + 0x28) * size));
            }
        }
    }

    private static ushort U16(byte[] elf, long at) => BinaryPrimitives.ReadUInt16LittleEndian(elf.AsSpan((int)at));

    private static uint U32(byte[] elf, long at) => BinaryPrimitives.ReadUInt32LittleEndian(elf.AsSpan((int)at));

    private static string Name(byte[] elf, long at)
    {
        int end = Array.IndexOf(elf, (byte)0, (int)at);
        return Encoding.ASCII.GetString(elf, (int)at, end - (int)at);
    }
}
