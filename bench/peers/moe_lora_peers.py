#!/usr/bin/env python3
"""The GPU benchmark's peers: the same routed LoRA forward in PyTorch, on the same workloads as
`MoErging.Bench gpu`, so ratios come from one run on one device.

    python3 bench/peers/moe_lora_peers.py [--iterations 200] [--out FILE] [--small] [--device cuda|cpu]

Workloads (F16 activations and factors, Arrow router in float32, scaling 2, seed 11):
  W1 decode        T = 1, 16, 64; d = 4096; r = 16; E = 64; Arrow top-2
  W2 prefill       T = 1024, 4096; otherwise as W1
  W3 multi-tenant  T = 64 tokens, token t uses adapter t (64 distinct), no router

Three ways of computing y += sum_slots w * s * B_e (A_e x), all on the same A_e and B_e:
  loop    the PEFT way for mixed batches: for each expert that any token chose, gather its tokens,
          apply the adapter, scatter-add back (a Python loop over experts)
  gather  gather every (token, slot)'s factors and contract with batched matmuls (einsum)
  peft    PEFT itself: a one-layer model (a bias-free nn.Linear(d, d) named proj, weights seed 12) wrapped
          by get_peft_model with one LoRA adapter per expert (r = 16, lora_alpha = 32, so s = 2), the
          adapters' lora_A / lora_B set to A_e / B_e, called with adapter_names (one name per row; PEFT
          >= 0.10, torch >= 2.0). PEFT serves ONE adapter per row, so W1 and W2 give each token its routed top-1
          expert: half the expert work of the top-2 rows, which flatters PEFT; the routing is taken as
          given (not in the timed call). W3 is the same math as the other peers. Rows: "peft call" (the
          model call), "base linear" (y = x W^T alone, same shape, same run) and "peft adapters" (median
          call - median base linear: the adapter layers' cost). Skipped, with the reason printed, when
          `import peft` fails.
loop and gather are checked against each other once per shape, and peft's output minus the base output
against loop's top-1 (W3: per-token) mixture; a mismatch raises.
Each row is the median of N forwards timed with CUDA events (after warm-up), with the minimum bytes
(X read once, Y read and written once, the prototypes once when routed, each selected expert's A and B
once; peft adapters: no prototypes; base linear: X and W read, Y written; peft call: base linear's plus
the experts'), the GB/s that makes, and its share of a device-to-device copy measured in the same run.

--device cpu checks the script's paths without a GPU: float32 instead of F16, time.perf_counter_ns
instead of CUDA events, and a host tensor copy for the bandwidth. Its numbers are not the benchmark.
"""
import argparse
import platform
import statistics
import time

import torch

try:
    import peft
    PEFT_MISSING = None
except Exception as error:  # absent or broken install: skip the PEFT rows, run the other peers
    peft = None
    PEFT_MISSING = f"import peft failed ({type(error).__name__}: {error})"


def arrow_prototypes(a, b):
    """Unit top right singular vectors of dW_e = B_e A_e from the r x r core (QR of both factors)."""
    qa, ra = torch.linalg.qr(a.double().transpose(1, 2))  # A^T = Qa Ra
    _, rb = torch.linalg.qr(b.double())  # B = Qb Rb
    core = rb @ ra.transpose(1, 2)
    _, _, vh = torch.linalg.svd(core)
    return (qa @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1).float()


def route(x, prototypes, k):
    scores = (x.float() @ prototypes.T).abs()
    top = torch.topk(scores, k, dim=1)
    return top.indices, torch.softmax(top.values, dim=1)


def loop_forward(x, y, ids, weights, a, b, scaling):
    for e in torch.unique(ids).tolist():
        rows, slots = torch.nonzero(ids == e, as_tuple=True)
        v = x[rows] @ a[e].T
        y.index_add_(0, rows, (weights[rows, slots, None] * scaling).to(x.dtype) * (v @ b[e].T))


def gather_forward(x, y, ids, weights, a, b, scaling):
    v = torch.einsum("td,tkrd->tkr", x, a[ids])
    v = v * (weights * scaling).to(x.dtype).unsqueeze(-1)
    y += torch.einsum("tkr,tkdr->td", v, b[ids])


class TinyModel(torch.nn.Module):
    """The smallest model PEFT can wrap: one bias-free linear layer named proj."""

    def __init__(self, weight):
        super().__init__()
        out_features, in_features = weight.shape
        self.proj = torch.nn.Linear(in_features, out_features, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.proj.weight.copy_(weight)

    def forward(self, x):
        return self.proj(x)


def peft_model(weight, a, b, scaling):
    """TinyModel wrapped by PEFT LoRA, one adapter named e{i} per expert holding exactly a[i] and b[i]."""
    rank = a.shape[1]

    def config():  # a fresh config per adapter: PEFT keeps (and may edit) the object it is given
        return peft.LoraConfig(r=rank, lora_alpha=int(scaling * rank), target_modules=["proj"], lora_dropout=0.0)

    model = peft.get_peft_model(TinyModel(weight), config(), adapter_name="e0")
    for e in range(1, len(a)):
        model.add_adapter(f"e{e}", config())
    # PEFT >= 0.12 upcasts F16 adapters to float32 (autocast_adapter_dtype); casting the whole model back
    # works on every version and keeps PEFT in the dtype the other peers compute in.
    model.to(weight.dtype)
    model.requires_grad_(False)  # serving: no autograd graph in the timed calls
    model.eval()  # PEFT refuses adapter_names in training mode
    layer = model.get_base_model().proj
    with torch.no_grad():
        for e in range(len(a)):
            name = f"e{e}"
            layer.lora_A[name].weight.copy_(a[e])
            layer.lora_B[name].weight.copy_(b[e])
            if layer.scaling[name] != scaling or layer.lora_A[name].weight.dtype != weight.dtype:
                raise RuntimeError(f"PEFT adapter {name}: scaling {layer.scaling[name]}, dtype "
                                   f"{layer.lora_A[name].weight.dtype}; expected {scaling}, {weight.dtype}")
    return model


def check_close(what, actual, expected):
    """Raise unless actual matches expected within the rounding of their dtype."""
    tolerance = 2e-2 if actual.dtype == torch.half else 1e-4
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance, msg=lambda m: f"{what}: {m}")


def minimum_bytes(tokens, dim, experts_selected, rank, routed, num_experts, element):
    activations = tokens * dim * element + 2 * tokens * dim * element
    prototypes = num_experts * dim * 4 if routed else 0
    return activations + prototypes + experts_selected * 2 * rank * dim * element


def time_median(fn, iterations, device):
    """Median and minimum microseconds of fn over iterations calls, after 10 warm-up calls."""
    for _ in range(10):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)  # microseconds
    else:
        for _ in range(iterations):
            start = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - start) / 1e3)
    return statistics.median(times), min(times)


def copy_bandwidth(bytes_, iterations, device):
    src = torch.zeros(bytes_, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    median, _ = time_median(lambda: dst.copy_(src), iterations, device)
    return 2 * bytes_ / (median * 1e-6) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out")
    parser.add_argument("--small", action="store_true", help="d = 256, E = 8: check the script quickly")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: check the script's paths without a GPU (float32, wall-clock timing)")
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("moe_lora_peers.py needs a CUDA device (torch.cuda.is_available() is False); "
                         "--device cpu checks the script without one")
    # CPU half matmuls are slow or missing in older torch, so the CPU check computes in float32.
    dtype = torch.half if device == "cuda" else torch.float32

    dim, num_experts, rank, scaling = (256, 8, 16, 2.0) if args.small else (4096, 64, 16, 2.0)
    decode, prefill = ([1, 4], [16]) if args.small else ([1, 16, 64], [1024, 4096])
    gen = torch.Generator(device="cpu").manual_seed(11)
    a = (torch.randn(num_experts, rank, dim, generator=gen) / dim ** 0.5).to(device=device, dtype=dtype)
    b = (torch.randn(num_experts, dim, rank, generator=gen) / rank ** 0.5).to(device=device, dtype=dtype)
    prototypes = arrow_prototypes(a, b)
    copy = copy_bandwidth((16 << 20) if args.small else (1 << 30), max(5, args.iterations // 10), device)
    if device == "cuda":
        device_name, copy_name, timer = torch.cuda.get_device_name(0), "device-to-device copy", "CUDA events"
    else:
        device_name = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
        copy_name, timer = "host memory copy", "time.perf_counter_ns"
    print(f"device: {device_name}; {copy_name}: {copy:.0f} GB/s (bytes read + written)")

    if peft is None:
        peft_net = None
        peft_note = f"PEFT rows skipped: {PEFT_MISSING}."
    else:
        # Its own generator, so adding the base weight leaves the other peers' inputs as they were.
        weight_gen = torch.Generator(device="cpu").manual_seed(12)
        weight = (torch.randn(dim, dim, generator=weight_gen) / dim ** 0.5).to(device=device, dtype=dtype)
        peft_net = peft_model(weight, a, b, scaling)
        peft_note = (
            f"PEFT {peft.__version__}: one LoRA adapter per row via adapter_names. W1/W2 PEFT rows serve each "
            "token's routed top-1 expert only, half the expert work of the top-2 loop/gather rows (this flatters "
            "PEFT), with the routing given rather than timed; W3 is the same math as the others. "
            "peft adapters = median(peft call) - median(base linear), so its min is left blank."
        )
    print(peft_note)

    element = a.element_size()
    rows = []

    def record(name, workload, tokens, median, fastest, nbytes):
        gbs = nbytes / (median * 1e3)
        rows.append((name, workload, tokens, median, fastest, nbytes, gbs, gbs / copy))
        shown = f"{fastest:9.1f}" if fastest is not None else " " * 9
        print(f"{name:13} {workload:21} T={tokens:5}: {median:9.1f} us median, {shown} min; {gbs:7.1f} GB/s")

    def measure(workload, tokens, routed, iterations):
        x = torch.randn(tokens, dim, generator=gen).to(device=device, dtype=dtype)
        y = torch.zeros(tokens, dim, dtype=dtype, device=device)
        if routed:
            ids, weights = route(x, prototypes, 2)
        else:
            ids = torch.arange(tokens, device=device).unsqueeze(1) % num_experts
            weights = torch.ones(tokens, 1, device=device)
        selected = len(torch.unique(ids))

        y_loop, y_gather = torch.zeros_like(y), torch.zeros_like(y)
        loop_forward(x, y_loop, ids, weights, a, b, scaling)
        gather_forward(x, y_gather, ids, weights, a, b, scaling)
        check_close(f"gather vs loop, {workload} T={tokens}", y_gather, y_loop)

        for name, forward in (("loop", loop_forward), ("gather", gather_forward)):
            def call():
                if routed:
                    i, w = route(x, prototypes, 2)
                else:
                    i, w = ids, weights
                forward(x, y, i, w, a, b, scaling)
            median, fastest = time_median(call, iterations, device)
            nbytes = minimum_bytes(tokens, dim, selected, rank, routed, num_experts, element)
            record(name, workload, tokens, median, fastest, nbytes)

        if peft_net is None:
            return
        top1 = ids[:, :1]  # topk sorts, so slot 0 is each token's top-1 expert (W3: its own adapter)
        names = [f"e{e}" for e in top1[:, 0].tolist()]
        label = f"{workload}, top-1" if routed else workload
        with torch.no_grad():
            adapters = peft_net(x, adapter_names=names) - torch.nn.functional.linear(x, weight)
        expected = torch.zeros_like(y)
        loop_forward(x, expected, top1, torch.ones(tokens, 1, device=device), a, b, scaling)
        check_close(f"peft - base vs loop top-1, {workload} T={tokens}", adapters, expected)

        selected1 = len(torch.unique(top1))
        linear_bytes = 2 * tokens * dim * element + dim * dim * element  # X and W read, Y written
        adapter_bytes = selected1 * 2 * rank * dim * element
        call_median, call_fastest = time_median(lambda: peft_net(x, adapter_names=names), iterations, device)
        base_median, base_fastest = time_median(lambda: torch.nn.functional.linear(x, weight), iterations, device)
        record("peft call", label, tokens, call_median, call_fastest, linear_bytes + adapter_bytes)
        record("base linear", label, tokens, base_median, base_fastest, linear_bytes)
        record("peft adapters", label, tokens, call_median - base_median, None,
               minimum_bytes(tokens, dim, selected1, rank, False, num_experts, element))

    for t in decode:
        measure("W1 decode", t, True, args.iterations)
    for t in prefill:
        measure("W2 prefill", t, True, max(5, args.iterations // 4))
    measure("W3 multi-tenant", min(64, num_experts), False, args.iterations)

    lines = [
        f"Device: {device_name}. {copy_name.capitalize()}: {copy:.0f} GB/s. PyTorch {torch.__version__}, "
        f"{'F16' if dtype == torch.half else 'float32'}; median of {args.iterations} forwards timed with {timer} "
        "(W2: a quarter as many).",
        "",
        peft_note,
        "",
        "| peer | workload | T | µs (median) | µs (min) | min bytes (MB) | GB/s | % of copy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, workload, tokens, median, fastest, nbytes, gbs, share in rows:
        shown = f"{fastest:.1f}" if fastest is not None else ""
        lines.append(f"| {name} | {workload} | {tokens} | {median:.1f} | {shown} | {nbytes / 1e6:.2f} | {gbs:.1f} "
                     f"| {share:.0%} |")
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)


if __name__ == "__main__":
    main()
