#!/usr/bin/env python3
"""The GPU benchmark's peers: the same routed LoRA forward in PyTorch, on the same workloads as
`MoErging.Bench gpu`, so ratios come from one run on one device.

    python3 bench/peers/moe_lora_peers.py [--iterations 200] [--out FILE] [--small]

Workloads (F16 activations and factors, Arrow router in float32, scaling 2, seed 11):
  W1 decode        T = 1, 16, 64; d = 4096; r = 16; E = 64; Arrow top-2
  W2 prefill       T = 1024, 4096; otherwise as W1
  W3 multi-tenant  T = 64 tokens, token t uses adapter t (64 distinct), no router

Two ways of computing y += sum_slots w * s * B_e (A_e x):
  loop    the PEFT way for mixed batches: for each expert that any token chose, gather its tokens,
          apply the adapter, scatter-add back (a Python loop over experts)
  gather  gather every (token, slot)'s factors and contract with batched matmuls (einsum)
Each row is the median of N forwards timed with CUDA events (after warm-up), with the minimum bytes
(X read once, Y read and written once, the prototypes once, each selected expert's A and B once), the
GB/s that makes, and its share of a device-to-device copy measured in the same run.
"""
import argparse
import statistics

import torch


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


def minimum_bytes(tokens, dim, experts_selected, rank, routed, num_experts):
    activations = tokens * dim * 2 + 2 * tokens * dim * 2
    prototypes = num_experts * dim * 4 if routed else 0
    return activations + prototypes + experts_selected * 2 * rank * dim * 2


def time_median(fn, iterations):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)  # microseconds
    return statistics.median(times), min(times)


def copy_bandwidth(bytes_, iterations):
    src = torch.zeros(bytes_, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    median, _ = time_median(lambda: dst.copy_(src), iterations)
    return 2 * bytes_ / (median * 1e-6) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out")
    parser.add_argument("--small", action="store_true", help="d = 256, E = 8: check the script quickly")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("moe_lora_peers.py needs a CUDA device (torch.cuda.is_available() is False)")

    dim, num_experts, rank, scaling = (256, 8, 16, 2.0) if args.small else (4096, 64, 16, 2.0)
    decode, prefill = ([1, 4], [16]) if args.small else ([1, 16, 64], [1024, 4096])
    gen = torch.Generator(device="cpu").manual_seed(11)
    a = (torch.randn(num_experts, rank, dim, generator=gen) / dim ** 0.5).half().cuda()
    b = (torch.randn(num_experts, dim, rank, generator=gen) / rank ** 0.5).half().cuda()
    prototypes = arrow_prototypes(a, b)
    copy = copy_bandwidth((16 << 20) if args.small else (1 << 30), max(5, args.iterations // 10))
    device = torch.cuda.get_device_name(0)
    print(f"device: {device}; device-to-device copy: {copy:.0f} GB/s (bytes read + written)")

    rows = []

    def measure(workload, tokens, routed, iterations):
        x = torch.randn(tokens, dim, generator=gen).half().cuda()
        y = torch.zeros(tokens, dim, dtype=torch.half, device="cuda")
        if routed:
            ids, weights = route(x, prototypes, 2)
        else:
            ids = torch.arange(tokens, device="cuda").unsqueeze(1) % num_experts
            weights = torch.ones(tokens, 1, device="cuda")
        selected = len(torch.unique(ids))
        for name, forward in (("loop", loop_forward), ("gather", gather_forward)):
            def call():
                if routed:
                    i, w = route(x, prototypes, 2)
                else:
                    i, w = ids, weights
                forward(x, y, i, w, a, b, scaling)
            median, fastest = time_median(call, iterations)
            nbytes = minimum_bytes(tokens, dim, selected, rank, routed, num_experts)
            gbs = nbytes / (median * 1e3)
            rows.append((name, workload, tokens, median, fastest, nbytes, gbs, gbs / copy))
            print(f"{name:6} {workload:16} T={tokens:5}: {median:9.1f} us median, {fastest:9.1f} min; {gbs:7.1f} GB/s")

    for t in decode:
        measure("W1 decode", t, True, args.iterations)
    for t in prefill:
        measure("W2 prefill", t, True, max(5, args.iterations // 4))
    measure("W3 multi-tenant", min(64, num_experts), False, args.iterations)

    lines = [
        f"Device: {device}. Device-to-device copy: {copy:.0f} GB/s. PyTorch {torch.__version__}, F16; "
        f"median of {args.iterations} forwards timed with CUDA events (W2: a quarter as many).",
        "",
        "| peer | workload | T | µs (median) | µs (min) | min bytes (MB) | GB/s | % of copy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, workload, tokens, median, fastest, nbytes, gbs, share in rows:
        lines.append(f"| {name} | {workload} | {tokens} | {median:.1f} | {fastest:.1f} | {nbytes / 1e6:.2f} | {gbs:.1f} | {share:.0%} |")
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)


if __name__ == "__main__":
    main()
