using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace MoErging.Formats;

/// <summary>
/// The one way the engine opens a file it reads: only regular files (after following links), so a FIFO, socket or
/// device given where a file is expected is refused at once instead of blocking the open or the read forever.
/// </summary>
internal static partial class InputFiles
{
    /// <summary>What a path names, after following links.</summary>
    internal enum Kind
    {
        Missing,
        Regular,
        Directory,
        Other,
    }

    /// <summary>What <paramref name="path"/> names, and for <see cref="Kind.Other"/> or an unreadable path, in words.</summary>
    internal static (Kind Kind, string What) Classify(string path)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS() && !OperatingSystem.IsFreeBSD())
        {
            // Windows has no FIFOs or device files in the file system's namespace.
            return Directory.Exists(path) ? (Kind.Directory, "a directory") : File.Exists(path) ? (Kind.Regular, "a file") : (Kind.Missing, "missing");
        }
        // System.Native's portable stat: its FileStatus starts with int32 flags and int32 mode, the mode's type
        // bits in the PAL's own values; a generous buffer covers the rest of the struct whatever its size.
        Span<long> status = stackalloc long[64];
        if (Stat(path, ref MemoryMarshal.GetReference(MemoryMarshal.AsBytes(status))) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            return errno == 2 ? (Kind.Missing, "missing") : (Kind.Other, $"unreadable ({Marshal.GetPInvokeErrorMessage(errno).ToLowerInvariant()})");
        }
        int mode = MemoryMarshal.Cast<long, int>(status)[1];
        return (mode & 0xF000) switch
        {
            0x8000 => (Kind.Regular, "a file"),
            0x4000 => (Kind.Directory, "a directory"),
            0x1000 => (Kind.Other, "a FIFO"),
            0xC000 => (Kind.Other, "a socket"),
            0x2000 => (Kind.Other, "a character device"),
            0x6000 => (Kind.Other, "a block device"),
            _ => (Kind.Other, "not a regular file"),
        };
    }

    /// <summary>Throws unless <paramref name="path"/> is a regular file, naming it and what it is instead.</summary>
    /// <exception cref="FileNotFoundException">The path does not exist, or is a directory.</exception>
    /// <exception cref="InvalidDataException">A FIFO, socket, device, link loop or other path that is not a regular file.</exception>
    internal static void RequireRegular(string path, string expected)
    {
        var (kind, what) = Classify(path);
        switch (kind)
        {
            case Kind.Regular:
                return;
            case Kind.Missing:
                throw new FileNotFoundException($"{path}: no such file", path);
            case Kind.Directory:
                // Opening a directory fails with "access denied", which would send the user looking at permissions.
                throw new FileNotFoundException($"{path}: is a directory, not {expected}", path);
            default:
                throw new InvalidDataException($"{path}: is {what}, not {expected}; only regular files are read");
        }
    }

    /// <summary>Opens a regular file for reading (see <see cref="RequireRegular"/>).</summary>
    internal static SafeFileHandle Open(string path, string expected)
    {
        RequireRegular(path, expected);
        return File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
    }

    /// <summary>
    /// Reads a small text file as strict UTF-8, as Python's <c>json.load</c> over <c>open(path)</c> does: invalid
    /// UTF-8 and a byte-order mark are errors, and a file over <paramref name="maxBytes"/> is refused unread.
    /// </summary>
    internal static string ReadText(string path, string expected, int maxBytes)
    {
        using SafeFileHandle handle = Open(path, expected);
        long length = RandomAccess.GetLength(handle);
        if (length > maxBytes)
        {
            throw new InvalidDataException($"{path}: is {length} bytes; {expected} is read only up to {maxBytes} bytes");
        }
        var bytes = new byte[length];
        int read = 0;
        while (read < bytes.Length)
        {
            int n = RandomAccess.Read(handle, bytes.AsSpan(read), read);
            if (n <= 0)
            {
                throw new InvalidDataException($"{path}: ended at byte {read} while reading (was it truncated?)");
            }
            read += n;
        }
        if (bytes.AsSpan().StartsWith("\uFEFF"u8))
        {
            throw new InvalidDataException($"{path}: starts with a UTF-8 byte-order mark, which JSON readers such as Python's json.load refuse");
        }
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new InvalidDataException($"{path}: is not valid UTF-8 (byte {e.Index} is not part of a valid sequence)");
        }
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    [LibraryImport("libSystem.Native", EntryPoint = "SystemNative_Stat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Stat(string path, ref byte status);
}
