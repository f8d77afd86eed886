using MoErging.Experts;
using TorchSharp;
using static TorchSharp.torch;

namespace MoErging.Bench.Peers;

/// <summary>
/// The same routed forward as the engine's, written in TorchSharp the two ways a PyTorch user would: Arrow
/// scores against the engine's prototypes (|x · p_e| / τ), top-k, softmax over the kept scores, then either
/// <list type="bullet">
/// <item><see cref="Loop"/>: PEFT's mixed-batch way, a loop over the experts some token chose: gather that
/// expert's rows, apply B_e (A_e x), scale by w · s_e and add them back (<c>index_add_</c>);</item>
/// <item><see cref="Gather"/>: gather every (token, slot)'s A and B and contract them with two batched matmuls.</item>
/// </list>
/// The workload's factors, prototypes and tokens are copied into tensors once; a call reads and writes only those.
/// The factors, prototypes and scalings are held, and the routing and mixture computed, in float32 or bfloat16 (libtorch's
/// CPU matmul and bmm take both); x and y stay float32, as the engine's are: the bfloat16 variant rounds x to bfloat16 on
/// every call and adds its bfloat16 mixture into the float32 y.
/// </summary>
internal sealed class TorchPeer : IDisposable
{
    private readonly Tensor _x;
    private readonly Tensor _y;
    private readonly Tensor _prototypes; // [E, d_in]
    private readonly Tensor _a; // [E, r, d_in], PEFT's lora_A layout
    private readonly Tensor _b; // [E, d_out, r], PEFT's lora_B layout
    private readonly Tensor _scaling; // [E]
    private readonly int _topK;
    private readonly double _temperature;
    private readonly ScalarType _dtype;

    /// <param name="w">The workload, whose factors are held at the precision <paramref name="dtype"/> represents exactly.</param>
    /// <param name="dtype">Float32 or BFloat16: how the tensors hold the weights and what the calls compute in.</param>
    public TorchPeer(Workload w, ScalarType dtype)
    {
        _dtype = dtype;
        int experts = w.Module.ExpertCount, rank = Workload.Rank, dIn = w.Module.InputDim, dOut = w.Module.OutputDim;
        var a = new float[experts * rank * dIn];
        var b = new float[experts * dOut * rank];
        var scaling = new float[experts];
        for (int e = 0; e < experts; e++)
        {
            LoraFactors f = w.Module.Factors(e)!;
            f.A.CopyTo(a.AsSpan(e * rank * dIn, rank * dIn));
            f.CopyB(b.AsSpan(e * dOut * rank, dOut * rank));
            scaling[e] = f.Scaling;
        }
        _x = tensor(w.X, [w.Tokens, dIn]);
        _y = zeros(w.Tokens, dOut);
        _prototypes = Held(tensor(w.Router.Prototypes.ToArray(), [experts, dIn]));
        _a = Held(tensor(a, [experts, rank, dIn]));
        _b = Held(tensor(b, [experts, dOut, rank]));
        _scaling = Held(tensor(scaling));
        _topK = w.Router.Options.TopK;
        _temperature = w.Router.Options.Temperature;
    }

    /// <summary>y, row-major <c>[T, d_out]</c>.</summary>
    public float[] Output => _y.data<float>().ToArray();

    public void ResetOutput() => _y.zero_();

    public void Loop()
    {
        using DisposeScope scope = NewDisposeScope();
        Tensor x = Input();
        (Tensor ids, Tensor weights) = Route(x);
        Tensor flatWeights = weights.flatten();
        foreach (long e in ids.unique().output.data<long>().ToArray())
        {
            Tensor slots = ids.flatten().eq(e).nonzero().squeeze(1); // flat (token, slot) indices
            Tensor rows = slots.div(_topK, rounding_mode: RoundingMode.floor);
            Tensor v = x.index_select(0, rows).matmul(_a[e].t()); // [n, r]
            Tensor coefficient = flatWeights.index_select(0, slots).mul(_scaling[e]);
            _y.index_add_(0, rows, Output32(v.matmul(_b[e].t()).mul_(coefficient.unsqueeze(1))), 1);
        }
    }

    public void Gather()
    {
        using DisposeScope scope = NewDisposeScope();
        Tensor x = Input();
        (Tensor ids, Tensor weights) = Route(x);
        Tensor flat = ids.flatten(); // [T k]
        Tensor v = bmm(_a.index_select(0, flat), x.repeat_interleave(_topK, 0).unsqueeze(2)); // [T k, r, 1]
        v.mul_(weights.flatten().mul(_scaling.index_select(0, flat)).view(-1, 1, 1));
        Tensor y = bmm(_b.index_select(0, flat), v); // [T k, d_out, 1]
        _y.add_(Output32(y.view(ids.shape[0], _topK, -1).sum(1)));
    }

    private Tensor Held(Tensor values)
    {
        if (_dtype == ScalarType.Float32)
        {
            return values;
        }
        using (values)
        {
            return values.to(_dtype);
        }
    }

    /// <summary>x in the compute dtype (inside the caller's dispose scope).</summary>
    private Tensor Input() => _dtype == ScalarType.Float32 ? _x : _x.to(_dtype);

    private Tensor Output32(Tensor values) => _dtype == ScalarType.Float32 ? values : values.to(ScalarType.Float32);

    private (Tensor Ids, Tensor Weights) Route(Tensor x)
    {
        Tensor scores = x.matmul(_prototypes.t()).abs_().div_(_temperature);
        (Tensor values, Tensor ids) = scores.topk(_topK, dim: 1);
        return (ids, values.softmax(1));
    }

    public void Dispose()
    {
        foreach (Tensor t in new[] { _x, _y, _prototypes, _a, _b, _scaling })
        {
            t.Dispose();
        }
    }
}
