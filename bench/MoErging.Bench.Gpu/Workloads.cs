namespace MoErging.Bench.Gpu;

/// <summary>One standard GPU workload: BRIEF §6's shapes, F16 activations and weights.</summary>
/// <param name="Name">W1 (decode), W2 (prefill) or W3 (multi-tenant).</param>
/// <param name="Label">How the tables name it.</param>
/// <param name="Tokens">T.</param>
/// <param name="Routed">True: Arrow top-2 on the device; false: token t uses adapter t, top-1, no router.</param>
internal sealed record Workload(string Name, string Label, int Tokens, bool Routed)
{
    /// <summary>Library and module shape: E experts, d_in = d_out = d, rank r.</summary>
    public const int Experts = 64, Dim = 4096, Rank = 16;

    /// <summary>The shapes <c>--small</c> uses to check the program on a CPU device.</summary>
    public const int SmallExperts = 8, SmallDim = 256;

    /// <summary>k of the workload.</summary>
    public int TopK => Routed ? 2 : 1;

    /// <summary>W1 at T = 1, 16, 64; W2 at T = 1,024 and 4,096; W3 with 64 tokens and 64 distinct adapters (or the small shapes).</summary>
    public static IReadOnlyList<Workload> Standard(bool small)
    {
        int[] decode = small ? [1, 4] : [1, 16, 64];
        int[] prefill = small ? [16] : [1024, 4096];
        return
        [
            .. decode.Select(t => new Workload("W1", "W1 decode", t, true)),
            .. prefill.Select(t => new Workload("W2", "W2 prefill", t, true)),
            new Workload("W3", "W3 multi-tenant", small ? SmallExperts : Experts, false),
        ];
    }
}
