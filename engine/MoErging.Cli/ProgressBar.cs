using System.Diagnostics;
using System.Globalization;

namespace MoErging.Cli;

/// <summary>
/// A one-line progress bar on stderr, redrawn in place at most ten times a second. Shown only when stderr is the
/// console and not redirected, or when the command was given <c>--progress</c>, so logs and tests stay clean.
/// </summary>
internal sealed class ProgressBar
{
    private const int Width = 30;
    private readonly TextWriter _stderr;
    private readonly string _label;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private long _lastDraw = long.MinValue;
    private int _lastLength;

    private ProgressBar(TextWriter stderr, string label)
    {
        _stderr = stderr;
        _label = label;
    }

    /// <summary>A bar when one should be shown (see the class summary), otherwise null.</summary>
    public static ProgressBar? For(TextWriter stderr, bool forced, string label) =>
        forced || (ReferenceEquals(stderr, Console.Error) && !Console.IsErrorRedirected) ? new ProgressBar(stderr, label) : null;

    /// <summary>Redraws the bar at <paramref name="fraction"/> (clamped to [0, 1]) with a short note, unless drawn within 100 ms.</summary>
    public void Update(double fraction, string note)
    {
        long now = _clock.ElapsedMilliseconds;
        if (now - _lastDraw < 100)
        {
            return;
        }
        _lastDraw = now;
        Draw(fraction, note);
    }

    /// <summary>Draws the bar full.</summary>
    public void Finish(string note) => Draw(1, note);

    /// <summary>Ends the bar's line, if one was drawn.</summary>
    public void End()
    {
        if (_lastLength > 0)
        {
            _stderr.WriteLine();
            _lastLength = 0;
        }
    }

    private void Draw(double fraction, string note)
    {
        fraction = Math.Clamp(fraction, 0, 1);
        if (note.Length > 48)
        {
            note = "…" + note[^47..];
        }
        int filled = (int)(fraction * Width);
        string line = string.Create(CultureInfo.InvariantCulture,
            $"{_label} [{new string('#', filled)}{new string('-', Width - filled)}] {fraction * 100,3:F0}% {_clock.Elapsed.TotalSeconds,5:F1} s  {note}");
        // Pad over the previous line's tail, then return to the line's start for the next redraw.
        _stderr.Write("\r" + line.PadRight(_lastLength));
        _lastLength = line.Length;
        _stderr.Flush();
    }
}
