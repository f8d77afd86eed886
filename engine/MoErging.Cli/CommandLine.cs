using System.Globalization;

namespace MoErging.Cli;

/// <summary>How an option takes values.</summary>
internal enum OptionKind
{
    /// <summary>No value: <c>--json</c>.</summary>
    Flag,

    /// <summary>One value: <c>--top-k 2</c> or <c>--top-k=2</c>.</summary>
    Single,

    /// <summary>Every following argument up to the next option: <c>--experts a b c</c>.</summary>
    Many,
}

/// <summary>A mistake in how the command was called; reported with the usage hint.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>The options and positional arguments of one command, checked against what it accepts.</summary>
internal sealed class CommandLine
{
    private readonly Dictionary<string, List<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);

    private CommandLine()
    {
    }

    /// <summary>Arguments that are not options, in order.</summary>
    public List<string> Positionals { get; } = [];

    /// <summary>Parses <paramref name="args"/> against the accepted options (names without dashes).</summary>
    public static CommandLine Parse(IEnumerable<string> args, IReadOnlyDictionary<string, OptionKind> accepted)
    {
        var line = new CommandLine();
        using IEnumerator<string> it = args.GetEnumerator();
        bool more = it.MoveNext();
        while (more)
        {
            string arg = it.Current;
            if (!arg.StartsWith("--", StringComparison.Ordinal) || arg == "--")
            {
                line.Positionals.Add(arg);
                more = it.MoveNext();
                continue;
            }
            string name = arg[2..];
            string? inline = null;
            int eq = name.IndexOf('=');
            if (eq >= 0)
            {
                inline = name[(eq + 1)..];
                name = name[..eq];
            }
            if (!accepted.TryGetValue(name, out OptionKind kind))
            {
                throw new UsageException($"unknown option --{name}");
            }
            if (line._flags.Contains(name) || line._values.ContainsKey(name))
            {
                throw new UsageException($"--{name} is given twice");
            }
            more = it.MoveNext();
            switch (kind)
            {
                case OptionKind.Flag:
                    if (inline is not null)
                    {
                        throw new UsageException($"--{name} takes no value");
                    }
                    line._flags.Add(name);
                    break;
                case OptionKind.Single:
                    if (inline is null)
                    {
                        if (!more || IsOption(it.Current))
                        {
                            throw new UsageException($"--{name} needs a value");
                        }
                        inline = it.Current;
                        more = it.MoveNext();
                    }
                    if (inline.Length == 0)
                    {
                        throw new UsageException($"--{name} needs a value, got an empty string");
                    }
                    line._values[name] = [inline];
                    break;
                default:
                    var values = new List<string>();
                    if (inline is not null)
                    {
                        values.Add(inline);
                    }
                    while (more && !IsOption(it.Current))
                    {
                        values.Add(it.Current);
                        more = it.MoveNext();
                    }
                    if (values.Count == 0)
                    {
                        throw new UsageException($"--{name} needs at least one value");
                    }
                    if (values.IndexOf("") is int empty and >= 0)
                    {
                        throw new UsageException($"--{name}: item {empty + 1} is an empty string");
                    }
                    line._values[name] = values;
                    break;
            }
        }
        return line;
    }

    public bool Flag(string name) => _flags.Contains(name);

    public bool Has(string name) => _values.ContainsKey(name) || _flags.Contains(name);

    public string? Single(string name) => _values.TryGetValue(name, out List<string>? v) ? v[0] : null;

    public string Required(string name) => Single(name) ?? throw new UsageException($"--{name} is required");

    public IReadOnlyList<string> Many(string name) => _values.TryGetValue(name, out List<string>? v) ? v : [];

    public int Int(string name, int fallback, int min, int max = int.MaxValue)
    {
        string? text = Single(name);
        if (text is null)
        {
            return fallback;
        }
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) || value < min || value > max)
        {
            throw new UsageException($"--{name} must be an integer in [{min}, {max}], got '{text}'");
        }
        return value;
    }

    public float? Float(string name) => Number(name, (string t, out float v) => float.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out v));

    public double? Double(string name) => Number(name, (string t, out double v) => double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out v));

    public float[] FloatList(string name) => List(name, (string t, out float v) => float.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out v));

    public double[] DoubleList(string name) => List(name, (string t, out double v) => double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out v));

    private delegate bool Parser<T>(string text, out T value);

    private T? Number<T>(string name, Parser<T> parse) where T : struct
    {
        string? text = Single(name);
        if (text is null)
        {
            return null;
        }
        return parse(text, out T value) ? value : throw new UsageException($"--{name} must be a number, got '{text}'");
    }

    private T[] List<T>(string name, Parser<T> parse)
    {
        string? text = Single(name);
        if (text is null)
        {
            return [];
        }
        string[] parts = text.Split(',', StringSplitOptions.TrimEntries);
        var values = new T[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!parse(parts[i], out values[i]))
            {
                throw new UsageException($"--{name}: item {i + 1} ('{parts[i]}') is not a number");
            }
        }
        return values;
    }

    public void NoPositionals()
    {
        if (Positionals.Count > 0)
        {
            throw new UsageException($"unexpected argument '{Positionals[0]}'");
        }
    }

    private static bool IsOption(string arg) => arg.StartsWith("--", StringComparison.Ordinal) && arg.Length > 2;
}
