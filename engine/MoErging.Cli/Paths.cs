using System.Text.RegularExpressions;

namespace MoErging.Cli;

/// <summary>
/// Paths the user gives: file-system errors said as one line that names the user's path and the problem
/// instead of .NET's text about a full or temporary path.
/// </summary>
internal static partial class Paths
{
    /// <summary>Whether two full paths name the same file: case matters only where file systems usually keep it.</summary>
    public static readonly StringComparer Comparer = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparer.OrdinalIgnoreCase : StringComparer.Ordinal;

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
