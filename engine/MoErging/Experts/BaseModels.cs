namespace MoErging.Experts;

/// <summary>
/// Which base model each expert was trained on, from <c>base_model_name_or_path</c>. Hub ids compare without case,
/// and a bare legacy id names the same model as the one organisation-qualified id that ends in it (the hub moved
/// <c>distilgpt2</c> to <c>distilbert/distilgpt2</c> and <c>gpt2</c> to <c>openai-community/gpt2</c>). Local paths
/// say nothing about the model, so they are unknown and never conflict.
/// </summary>
internal static class BaseModels
{
    /// <summary>The hub id in lower case, or null for an absent name or a local path (one that looks like a path, or exists as a directory).</summary>
    public static string? HubId(string? name)
    {
        if (string.IsNullOrWhiteSpace(name))
        {
            return null;
        }
        string id = name.Trim();
        bool local = id.StartsWith('/') || id.StartsWith('.') || id.StartsWith('~') || id.Contains('\\') || id.EndsWith('/')
            || id.Count(c => c == '/') > 1 || Path.IsPathRooted(id) || Directory.Exists(id); // "checkpoints/base" beside the host
        return local ? null : id.ToLowerInvariant();
    }

    /// <summary>A one-line description of the base models when the experts name more than one, else null.</summary>
    public static string? Mismatch(IReadOnlyList<Expert> experts)
    {
        var ids = experts.Select(x => HubId(x.Config?.BaseModelName)).ToArray();
        var qualified = ids.OfType<string>().Where(id => id.Contains('/')).Distinct().ToArray();
        string? Canonical(string? id)
        {
            if (id is null || id.Contains('/'))
            {
                return id;
            }
            var owners = qualified.Where(q => q[(q.IndexOf('/') + 1)..] == id).ToArray();
            return owners.Length == 1 ? owners[0] : id;
        }
        var groups = experts.Select((x, e) => (Expert: x, Model: Canonical(ids[e])))
            .Where(p => p.Model is not null)
            .GroupBy(p => p.Model!)
            .ToArray();
        if (groups.Length < 2)
        {
            return null;
        }
        return "the experts were trained on different base models: " + string.Join("; ", groups.Select(g =>
            $"{string.Join(", ", g.Select(p => p.Expert.Config!.BaseModelName).Distinct())} ({(g.Count() == 1 ? "expert" : "experts")} {string.Join(", ", g.Select(p => $"'{p.Expert.Name}'"))})"));
    }
}
