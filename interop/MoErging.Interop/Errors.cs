using System.Text;
using MoErging.Execution;

namespace MoErging.Interop;

/// <summary>The C API's status codes (moe_status in moerging.h).</summary>
internal enum Status
{
    Ok = 0,
    InvalidArgument = 1,
    NotFound = 2,
    FormatError = 3,
    NotSupported = 4,
    BackendUnavailable = 5,
    OutOfMemory = 6,
    Internal = 7,
}

/// <summary>
/// Turns exceptions into a status and a message. The message goes to the C side's thread-local buffer
/// through a callback that libmoerging.so hands over at start-up, so there is one error slot per thread
/// whether the failure happened in C or in managed code.
/// </summary>
internal static unsafe class Errors
{
    private static delegate* unmanaged<byte*, nuint, void> _setError;

    public static void Initialize(delegate* unmanaged<byte*, nuint, void> setError) => _setError = setError;

    /// <summary>Records <paramref name="e"/>'s message for the calling thread and returns its status. Never throws.</summary>
    public static int Report(Exception e)
    {
        Status status = Classify(e);
        try
        {
            string message = status == Status.Internal ? $"internal error ({e.GetType().Name}): {e.Message}" : e.Message;
            byte[] utf8 = Encoding.UTF8.GetBytes(message.ReplaceLineEndings(" "));
            fixed (byte* p = utf8)
            {
                Send(p, utf8.Length);
            }
        }
        catch (Exception)
        {
            // Formatting itself failed (out of memory): a static message needs no allocation.
            ReadOnlySpan<byte> fallback = "out of memory while reporting an error"u8;
            fixed (byte* p = fallback)
            {
                Send(p, fallback.Length);
            }
        }
        return (int)status;
    }

    private static void Send(byte* message, int length)
    {
        if (_setError != null)
        {
            _setError(message, (nuint)length);
        }
    }

    /// <summary>By exception type; the order matters where types derive from one another.</summary>
    internal static Status Classify(Exception e) => e switch
    {
        KeyNotFoundException or FileNotFoundException or DirectoryNotFoundException => Status.NotFound,
        ArgumentException => Status.InvalidArgument,
        InvalidDataException => Status.FormatError,
        NotSupportedException => Status.NotSupported,
        OutOfMemoryException => Status.OutOfMemory,
        BackendUnavailableException => Status.BackendUnavailable,
        _ => Status.Internal,
    };
}
