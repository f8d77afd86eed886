using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Execution;

/// <summary>
/// What one routed forward must cost at least: the minimum bytes it moves (X read once, Y read and
/// written once, the router's prototype matrix read once, every selected expert's A and B read once)
/// and the expert FLOPs (Σ over (token, selected expert) of 2 · r · (d_in + d_out)).
/// Divide the bytes by the machine's copy bandwidth to get the time floor.
/// </summary>
/// <param name="MinimumBytes">Bytes a perfect implementation moves.</param>
/// <param name="Flops">Floating-point operations of the expert path.</param>
/// <param name="SelectedExperts">Experts at least one token selected.</param>
public readonly record struct ForwardCost(long MinimumBytes, long Flops, int SelectedExperts)
{
    /// <summary>
    /// The cost of applying <paramref name="decision"/> at <paramref name="module"/> on <paramref name="engine"/> to float32
    /// activations: factors and prototypes counted at the engine's <see cref="Engine.WeightPrecision"/>, as every backend stores them.
    /// </summary>
    /// <param name="engine">The engine that runs the forward.</param>
    /// <param name="module">The module.</param>
    /// <param name="decision">The routing decision.</param>
    /// <param name="router">The router that made it, if its parameters are read in the same call (null for none).</param>
    public static ForwardCost Of(Engine engine, AdaptedModule module, RoutingDecision decision, Router? router)
    {
        ArgumentNullException.ThrowIfNull(engine);
        int weightBytes = engine.WeightPrecision == WeightPrecision.Float32 ? sizeof(float) : sizeof(ushort);
        return Of(module, decision, router, sizeof(float), weightBytes, weightBytes);
    }

    /// <summary>The cost of applying <paramref name="decision"/> at <paramref name="module"/>.</summary>
    /// <param name="module">The module.</param>
    /// <param name="decision">The routing decision.</param>
    /// <param name="router">The router that made it, if its parameters are read in the same call (null for none).</param>
    /// <param name="activationBytes">Bytes per activation element: 4 for float32, 2 for Half.</param>
    /// <param name="weightBytes">Bytes per stored factor element: 4 for float32, 2 for the 16-bit <see cref="WeightPrecision"/>s.</param>
    /// <param name="prototypeBytes">
    /// Bytes per stored prototype element: 4 for float32, 2 for the 16-bit <see cref="WeightPrecision"/>s.
    /// </param>
    public static ForwardCost Of(AdaptedModule module, RoutingDecision decision, Router? router = null,
        int activationBytes = sizeof(float), int weightBytes = sizeof(float), int prototypeBytes = sizeof(float))
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(decision);
        long tokens = decision.TokenCount;
        long bytes = tokens * module.InputDim * activationBytes + 2 * tokens * module.OutputDim * activationBytes;
        if (router is LinearRouter linear)
        {
            bytes += (long)linear.Prototypes.Length * prototypeBytes + (long)linear.Bias.Length * sizeof(float);
        }
        var selected = new bool[module.ExpertCount];
        long flops = 0;
        ReadOnlySpan<int> ids = decision.ExpertIds;
        ReadOnlySpan<float> weights = decision.Weights;
        for (int i = 0; i < ids.Length; i++)
        {
            if (module.Contributing(ids[i], weights[i]) is not LoraFactors f)
            {
                continue;
            }
            flops += 2L * f.Rank * (f.InputDim + f.OutputDim);
            if (!selected[ids[i]])
            {
                selected[ids[i]] = true;
                bytes += (long)f.Rank * (f.InputDim + f.OutputDim) * weightBytes; // from the shapes: a lazy expert stays undecoded
            }
        }
        return new ForwardCost(bytes, flops, selected.Count(s => s));
    }
}
