using System.Text.RegularExpressions;

namespace MoErging.Formats;

/// <summary>
/// PEFT's <c>rank_pattern</c> / <c>alpha_pattern</c> lookup: the first key, in the config's order, for which
/// <c>re.match(rf"(.*\.)?({key})$", name)</c> matches. Real configs hold thousands of keys that are module names
/// (letters, digits, '_', '-' and '.'); such a key matches exactly one suffix of a name, of its own length, so those
/// keys are indexed by length and trailing literal run and a lookup costs a few hash probes, not one match per key.
/// Other keys are compiled once as linear-time regular expressions.
/// </summary>
internal sealed class PatternKeys<T>
{
    private readonly string[] _keys;
    private readonly T[] _values;
    private readonly Dictionary<(int Length, string Tail), List<int>> _plain = [];
    private readonly (int Length, int TailLength)[] _plainShapes;
    private readonly (int Index, Regex Pattern)[] _regexes;

    public PatternKeys(IEnumerable<KeyValuePair<string, T>> patterns, string field)
    {
        var list = patterns.ToList();
        _keys = [.. list.Select(p => p.Key)];
        _values = [.. list.Select(p => p.Value)];
        var shapes = new HashSet<(int, int)>();
        var regexes = new List<(int, Regex)>();
        for (int i = 0; i < _keys.Length; i++)
        {
            string key = _keys[i];
            if (key.Length > 0 && key.All(IsPlain))
            {
                string tail = key[(key.LastIndexOf('.') + 1)..];
                var shape = (key.Length, tail.Length);
                shapes.Add(shape);
                if (!_plain.TryGetValue((key.Length, tail), out List<int>? indices))
                {
                    _plain[(key.Length, tail)] = indices = [];
                }
                indices.Add(i);
            }
            else
            {
                regexes.Add((i, ConfigRegex.Create($@"^(.*\.)?({key})$", $"{field} key '{key}'")));
            }
        }
        _plainShapes = [.. shapes];
        _regexes = [.. regexes];
    }

    /// <summary>The value of the first key that matches <paramref name="name"/>, else <paramref name="fallback"/>.</summary>
    public T Lookup(string name, T fallback)
    {
        int first = name.Contains('\n') ? PlainByRegex(name) : PlainByIndex(name);
        foreach (var (index, pattern) in _regexes)
        {
            if (index >= first)
            {
                break;
            }
            if (ConfigRegex.IsMatch(pattern, name))
            {
                first = index;
                break;
            }
        }
        return first < _keys.Length ? _values[first] : fallback;
    }

    private int PlainByIndex(string name)
    {
        int first = int.MaxValue;
        foreach (var (length, tailLength) in _plainShapes)
        {
            if (name.Length < length || (name.Length > length && name[^(length + 1)] != '.'))
            {
                continue;
            }
            if (_plain.TryGetValue((length, name[^tailLength..]), out List<int>? indices))
            {
                foreach (int i in indices)
                {
                    if (i >= first)
                    {
                        break;
                    }
                    if (MatchesSuffix(_keys[i], name))
                    {
                        first = i;
                        break;
                    }
                }
            }
        }
        return first == int.MaxValue ? _keys.Length : first;
    }

    /// <summary>A name with a line feed: '.' does not match it and '$' may match before it, so only the regex engine is exact.</summary>
    private int PlainByRegex(string name)
    {
        for (int i = 0; i < _keys.Length; i++)
        {
            if (_keys[i].Length > 0 && _keys[i].All(IsPlain)
                && ConfigRegex.IsMatch(ConfigRegex.Create($@"^(.*\.)?({_keys[i]})$", $"key '{_keys[i]}'"), name))
            {
                return i;
            }
        }
        return _keys.Length;
    }

    /// <summary>Whether a plain key matches the name's suffix of its length, '.' matching any character.</summary>
    private static bool MatchesSuffix(string key, string name)
    {
        ReadOnlySpan<char> suffix = name.AsSpan(name.Length - key.Length);
        for (int i = 0; i < key.Length; i++)
        {
            if (key[i] != '.' && key[i] != suffix[i])
            {
                return false;
            }
        }
        return true;
    }

    private static bool IsPlain(char c) => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.';
}

/// <summary>
/// The regular expressions of an adapter config (target and exclude patterns, pattern keys): matched in linear time
/// by .NET's non-backtracking engine, so no pattern can stall a load. The few constructs that engine lacks
/// (backreferences, lookarounds, atomic groups) fall back to the backtracking engine under a time limit.
/// </summary>
internal static class ConfigRegex
{
    private static readonly TimeSpan FallbackTimeout = TimeSpan.FromSeconds(1);

    public static Regex Create(string pattern, string what)
    {
        try
        {
            return new Regex(pattern, RegexOptions.NonBacktracking | RegexOptions.CultureInvariant);
        }
        catch (NotSupportedException)
        {
            return Backtracking(pattern, what);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"{what} is not a valid regular expression ({e.Message})");
        }
    }

    private static Regex Backtracking(string pattern, string what)
    {
        try
        {
            return new Regex(pattern, RegexOptions.CultureInvariant, FallbackTimeout);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"{what} is not a valid regular expression ({e.Message})");
        }
    }

    public static bool IsMatch(Regex regex, string name)
    {
        try
        {
            return regex.IsMatch(name);
        }
        catch (RegexMatchTimeoutException)
        {
            throw new InvalidDataException($"'{regex}' took more than {FallbackTimeout.TotalSeconds:0} s to match '{name}'");
        }
    }
}
