using System.Text.RegularExpressions;

namespace MoErging.Cli;

/// <summary>
/// Paths the user gives: the file they really name (symlinks resolved), and file-system errors said as one line
/// that names the user's path and the problem instead of .NET's text about a full or temporary path.
/// </summary>
internal static partial class Paths
{
    private const int MaxLinks = 40; // Linux's own limit on links followed in one lookup

    /// <summary>Whether two resolved paths name the same file: case matters only where file systems usually keep it.</summary>
    public static readonly StringComparer Comparer = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparer.OrdinalIgnoreCase : StringComparer.Ordinal;

    /// <summary>
    /// The absolute path with every symlink on it resolved, so that a link to a file and the file compare equal;
    /// the part of the path that does not exist yet is kept as written.
    /// </summary>
    /// <exception cref="IOException">A symlink loop; the message names <paramref name="path"/>.</exception>
    public static string Resolve(string path)
    {
        string full = Path.GetFullPath(path);
        int links = 0;
        while (true)
        {
            string root = Path.GetPathRoot(full)!, current = root;
            string[] parts = full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
            int i = 0;
            for (; i < parts.Length; i++)
            {
                current = Path.Combine(current, parts[i]);
                if (new FileInfo(current).LinkTarget is string target)
                {
                    if (++links > MaxLinks)
                    {
                        throw new IOException($"{path}: too many levels of symbolic links");
                    }
                    // The link's target is relative to the link's directory; its own components may be links again.
                    current = Path.GetFullPath(target, Path.GetDirectoryName(current)!);
                    break;
                }
            }
            if (i == parts.Length)
            {
                return Path.TrimEndingDirectorySeparator(current);
            }
            full = Path.Join(current, string.Join(Path.DirectorySeparatorChar, parts[(i + 1)..]));
        }
    }

    /// <summary>
    /// "PATH: problem" for a file-system error whose message is .NET's own text about a path (full, or a
    /// temporary file beside the target), with PATH as the user wrote it when it is one of <paramref name="args"/>;
    /// null for any other error (the engine's messages already name the user's file).
    /// </summary>
    public static string? Describe(Exception e, IReadOnlyList<string> args)
    {
        if (Parse(e) is not { } parsed)
        {
            return null;
        }
        var (path, problem) = parsed;
        string target = Temporary().Replace(path, "");
        string? given = args.Select(a => a.StartsWith("--", StringComparison.Ordinal) && a.IndexOf('=') is int eq and > 0 ? a[(eq + 1)..] : a)
            .FirstOrDefault(a => SameFull(a, target));
        return $"{given ?? target}: {problem}";
    }

    /// <summary>The problem a file-system error describes, without the path .NET puts in it (the message itself for other errors).</summary>
    public static string Problem(Exception e) => Parse(e)?.Problem ?? e.Message;

    private static (string Path, string Problem)? Parse(Exception e)
    {
        if (e is not (IOException or UnauthorizedAccessException))
        {
            return null;
        }
        foreach (var (pattern, problem) in Known)
        {
            Match m = pattern.Match(e.Message);
            if (m.Success)
            {
                string why = problem ?? m.Groups["why"].Value;
                return (m.Groups["path"].Value, problem ?? char.ToLowerInvariant(why[0]) + why[1..]);
            }
        }
        return null;
    }

    private static bool SameFull(string given, string full)
    {
        try
        {
            return given.Length > 0 && Comparer.Equals(Path.GetFullPath(given), full);
        }
        catch (ArgumentException)
        {
            return false; // an argument that is no path at all
        }
    }

    // .NET's texts for errors about one path (their problem; null: the OS's own words, before " : 'path'").
    private static readonly (Regex Pattern, string? Problem)[] Known =
    [
        (new(@"^Could not find file '(?<path>.+)'\.$"), "does not exist"),
        (new(@"^Could not find a part of the path '(?<path>.+)'\.$"), "a directory on the path does not exist"),
        (new(@"^Access to the path '(?<path>.+)' is denied\.$"), "permission denied"),
        (new(@"^The path '(?<path>.+)' is too long, or a component of the specified path is too long\.$"), "the path is too long"),
        (new(@"^The file '(?<path>.+)' already exists\.$"), "already exists"),
        (new(@"^Cannot create '(?<path>.+)' because a file or directory with the same name already exists\.$"), "exists and is not a directory"),
        (new(@"^The process cannot access the file '(?<path>.+)' because it is being used by another process\.$"), "in use by another process"),
        (new(@"^(?<why>[^'\r\n]+) : '(?<path>.+)'$"), null),
    ];

    /// <summary>The suffix the writers give a temporary file beside its target: .PID.GUID.tmp.</summary>
    [GeneratedRegex(@"\.\d+\.[0-9a-f]{32}\.tmp$")]
    private static partial Regex Temporary();
}
