namespace MoErging.Cli;

/// <summary>
/// The files one command writes, all or nothing: each is written in full to a temporary file beside its
/// target, and only when all are written are they renamed into place. On any failure the temporaries are
/// deleted, files that were there before are put back, and directories made for the outputs are removed.
/// Errors name the user's path, never a temporary file.
/// </summary>
internal sealed class OutputFiles
{
    private readonly List<(string Path, string Full, Action<Stream> Write)> _files = [];
    private readonly List<string> _directories = [];

    /// <summary>A directory the outputs go into, made (with its parents) if it is missing.</summary>
    public OutputFiles Directory(string path)
    {
        _directories.Add(path);
        return this;
    }

    /// <summary>An output file and how to write its bytes.</summary>
    /// <exception cref="UsageException">Two outputs are the same path.</exception>
    public OutputFiles Add(string path, Action<Stream> write)
    {
        string full = Paths.Resolve(path);
        if (_files.FirstOrDefault(f => Paths.Comparer.Equals(f.Full, full)).Path is string other)
        {
            throw new UsageException($"{path} and {other} are the same file; each output needs its own");
        }
        _files.Add((path, full, write));
        return this;
    }

    /// <summary>Writes every file, or none.</summary>
    public void Commit()
    {
        string unique = $".{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        var made = new List<string>();
        var temporaries = new List<string>();
        var placed = new List<(string Full, string? Backup)>();
        try
        {
            foreach (string directory in _directories)
            {
                MakeDirectory(directory, made);
            }
            foreach (var (path, full, write) in _files)
            {
                if (System.IO.Directory.Exists(full))
                {
                    throw new IOException($"{path}: is a directory");
                }
                string parent = Path.GetDirectoryName(full)!;
                if (!System.IO.Directory.Exists(parent))
                {
                    throw new DirectoryNotFoundException($"{path}: the directory {parent} does not exist");
                }
                string temporary = full + unique;
                temporaries.Add(temporary);
                Named(path, () =>
                {
                    using var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None);
                    write(stream);
                });
            }
            for (int i = 0; i < _files.Count; i++)
            {
                var (path, full, _) = _files[i];
                // An old file is kept as a backup (File.Replace links it) until every output is in place.
                string? backup = File.Exists(full) ? full + unique + ".old" : null;
                Named(path, () =>
                {
                    if (backup is null)
                    {
                        File.Move(temporaries[i], full);
                    }
                    else
                    {
                        File.Replace(temporaries[i], full, backup);
                    }
                });
                placed.Add((full, backup));
            }
        }
        catch
        {
            for (int i = placed.Count - 1; i >= 0; i--)
            {
                var (full, backup) = placed[i];
                Quietly(() =>
                {
                    if (backup is null)
                    {
                        File.Delete(full);
                    }
                    else
                    {
                        File.Move(backup, full, overwrite: true);
                    }
                });
            }
            temporaries.ForEach(t => Quietly(() => File.Delete(t)));
            made.ForEach(d => Quietly(() => System.IO.Directory.Delete(d, recursive: true)));
            throw;
        }
        foreach (var (_, backup) in placed)
        {
            if (backup is not null)
            {
                Quietly(() => File.Delete(backup));
            }
        }
    }

    /// <summary>Makes a directory and its missing parents; records the topmost one made, to remove on failure.</summary>
    private static void MakeDirectory(string path, List<string> made)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        if (File.Exists(full))
        {
            throw new IOException($"{path}: is a file, not a directory");
        }
        string? topmost = null;
        for (string? d = full; d is not null && !System.IO.Directory.Exists(d); d = Path.GetDirectoryName(d))
        {
            topmost = d;
        }
        Named(path, () => System.IO.Directory.CreateDirectory(full));
        if (topmost is not null)
        {
            made.Add(topmost);
        }
    }

    /// <summary>Runs a file-system step; its error names <paramref name="path"/> (the user's), whatever path .NET's message gave.</summary>
    private static void Named(string path, Action step)
    {
        try
        {
            step();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{path}: {Paths.Problem(e)}", e);
        }
    }

    /// <summary>A clean-up step after a failure: the first error is the one to report, so a second is ignored.</summary>
    private static void Quietly(Action step)
    {
        try
        {
            step();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
