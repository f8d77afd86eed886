namespace MoErging.Experts;

/// <summary>
/// Names for experts loaded from directories: real adapters live in directories called <c>adapter</c>,
/// <c>lora_model</c> or <c>checkpoint-500</c>, so a directory's own name is lengthened by its parents until it is
/// unique (<c>run1/adapter</c>, <c>run2/adapter</c>); experts whose names are unique keep them short.
/// </summary>
internal static class ExpertNames
{
    /// <summary>The final names: the given ones as they are, the others the shortest unique path suffixes.</summary>
    /// <exception cref="ArgumentException">The same directory is given twice without names, so no suffix tells them apart.</exception>
    public static string[] Unique(IReadOnlyList<Expert> experts, IReadOnlyList<string?>? given)
    {
        var names = new string[experts.Count];
        var depth = new int[experts.Count];
        var segments = new string[experts.Count][];
        for (int e = 0; e < experts.Count; e++)
        {
            names[e] = experts[e].Name;
            segments[e] = given?[e] is null && experts[e].Directory is string dir
                ? dir.Split(['/', '\\'], StringSplitOptions.RemoveEmptyEntries)
                : [];
            depth[e] = 1;
        }
        while (true)
        {
            // Automatic names that collide with any other name take one more parent; given names never change.
            var colliding = experts.Select((_, e) => e)
                .Where(e => segments[e].Length > 0)
                .Where(e => names.Where((n, j) => j != e && n == names[e]).Any())
                .ToArray();
            if (colliding.Length == 0)
            {
                return names;
            }
            foreach (int e in colliding)
            {
                if (depth[e] == segments[e].Length)
                {
                    int other = Enumerable.Range(0, names.Length).First(j => j != e && names[j] == names[e]);
                    throw new ArgumentException(
                        $"experts {Math.Min(e, other)} and {Math.Max(e, other)} cannot be told apart by their paths ('{experts[other].Directory ?? names[other]}' and '{experts[e].Directory}'); give each a name of its own");
                }
                depth[e]++;
                names[e] = string.Join('/', segments[e][^depth[e]..]);
            }
        }
    }
}
