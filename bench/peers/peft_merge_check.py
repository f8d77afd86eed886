#!/usr/bin/env python3
"""Checks a merge written by `moerge merge` against PEFT itself (needs python3, torch and peft).

1. PEFT loads the merged adapter directory; every module's delta weight (PEFT's get_delta_weight, which applies
   lora_alpha / r as PEFT reads it from our adapter_config.json) must equal B @ A from our file (we write scaling 1).
2. PEFT loads the input experts and runs add_weighted_adapter with the same method; the delta weights are compared:
   - cat, and linear / ties / magnitude_prune with --space factors: PEFT's own result must equal ours (factor space
     is PEFT's semantics; float32 arithmetic, so a relative tolerance).
   - svd: ours is the exact sum of w_i * s_i * B_i A_i truncated to rank k (scaling applied once). It is compared with
     that truncation computed here in float64 by torch.linalg.svd, and with PEFT's svd given weights w_i / s_i, which
     cancels PEFT's second application of the scaling.
   - ties / magnitude_prune in ΔW space: compared with PEFT's ties_svd / magnitude_prune_svd given weights w_i / s_i
     (same cancellation), truncated to the same rank.
   - dare_*: PEFT draws its masks from torch's RNG and ours from SplitMix64, so only step 1 applies.

Usage:
  moerge merge --experts e0 e1 --weights 0.5,1 --method ties --density 0.5 --space factors --output merged
  python3 bench/peers/peft_merge_check.py --experts e0 e1 --weights 0.5,1 --method ties --density 0.5 \
      --space factors --merged merged
(--sign frequency when the merge was given it.)
Exit code 0 when every comparison is within tolerance (relative 1e-5 of the largest entry of the reference, 1e-4 for
comparisons that go through an SVD of float32 data), 1 otherwise.
"""
import argparse
import sys

import torch
from safetensors.torch import load_file
from torch import nn
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

PREFIX = "base_model.model."


def factor_shapes(directory):
    """{module path in the base model: (d_in, d_out)} from an adapter's safetensors keys."""
    tensors = load_file(f"{directory}/adapter_model.safetensors")
    shapes = {}
    for key, value in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            module = module[len(PREFIX):] if module.startswith(PREFIX) else module
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            shapes[module] = (value.shape[1], b.shape[0])
    return shapes


def base_model(shapes):
    """A model with an nn.Linear at every adapted path, so PEFT can inject and load the adapters."""
    root = nn.Module()
    for path, (d_in, d_out) in shapes.items():
        parent = root
        parts = path.split(".")
        for part in parts[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(parts[-1], nn.Linear(d_in, d_out, bias=False, dtype=torch.float32))
    return root


def lora_layers(model):
    return {name.split("base_model.model.", 1)[-1]: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def compare(what, actual, expected, tolerance):
    scale = expected.abs().max().item()
    error = (actual.double() - expected.double()).abs().max().item()
    ok = error <= tolerance * max(scale, 1e-30)
    print(f"{'ok  ' if ok else 'FAIL'} {what}: max |difference| {error:.3e}, largest reference entry {scale:.3e}")
    return ok


def truncated(delta, k):
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k, :]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--experts", nargs="+", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--density", type=float)
    parser.add_argument("--space", default="delta", choices=["delta", "factors"])
    parser.add_argument("--sign", default="total", choices=["total", "frequency"])  # PEFT's majority_sign_method
    parser.add_argument("--rank", type=int)
    parser.add_argument("--merged", required=True)
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    if len(weights) != len(args.experts):
        sys.exit("one weight per expert is needed")

    shapes = factor_shapes(args.merged)
    for directory in args.experts:
        shapes.update(factor_shapes(directory))
    model = base_model(shapes)

    # 1. PEFT reads our merged adapter as we meant it.
    config = LoraConfig.from_pretrained(args.merged)
    config.task_type = None  # a plain nn.Module, not a transformers model
    peft_model = PeftModel.from_pretrained(model, args.merged, adapter_name="ours", config=config)
    merged_tensors = load_file(f"{args.merged}/adapter_model.safetensors")
    ok = True
    ours = {}
    for path, layer in lora_layers(peft_model).items():
        a = merged_tensors[f"{PREFIX}{path}.lora_A.weight"].double()
        b = merged_tensors[f"{PREFIX}{path}.lora_B.weight"].double()
        ours[path] = layer.get_delta_weight("ours").double()
        ok &= compare(f"{path}: PEFT's delta of our merged adapter = B @ A", ours[path], b @ a, 1e-5)

    # 2. The same merge done by PEFT (or exactly, for svd).
    names = [f"e{i}" for i in range(len(args.experts))]
    for name, directory in zip(names, args.experts):
        peft_model.load_adapter(directory, adapter_name=name)
    layers = lora_layers(peft_model)
    k = args.rank or max(layer.r[n] for layer in layers.values() for n in names if n in layer.lora_A)
    method, space = args.method, args.space
    if method.startswith("dare"):
        print(f"{method}: PEFT's masks come from torch's RNG, ours from SplitMix64; only the loading check applies")
    elif method in ("cat", "linear") or space == "factors":
        peft_model.add_weighted_adapter(names, weights, "peft", combination_type=method, density=args.density,
                                        majority_sign_method=args.sign)
        for path, layer in lora_layers(peft_model).items():
            if "peft" in layer.lora_A:
                ok &= compare(f"{path}: {method} ({'exact' if method == 'cat' else 'factor space'}), PEFT against ours",
                              ours[path], layer.get_delta_weight("peft"), 1e-5)
    else:
        for path, layer in layers.items():
            present = [(n, w) for n, w in zip(names, weights) if n in layer.lora_A]
            if method == "svd":
                exact = sum(w * layer.get_delta_weight(n).double() for n, w in present)  # get_delta_weight applies s once
                ok &= compare(f"{path}: svd, ours against the exact rank-{min(k, *exact.shape)} truncation",
                              ours[path], truncated(exact, k), 1e-4)
        # PEFT's *_svd path multiplies each delta (already scaled) by w * s again; weights w / s cancel that, which
        # one weight per expert can do only if each expert has one scaling across its modules.
        scalings = {n: {layer.scaling[n] for layer in layers.values() if n in layer.lora_A} for n in names}
        if any(len(values) != 1 for values in scalings.values()):
            print("an expert's scaling differs between modules: PEFT's *_svd comparison skipped")
        else:
            unscaled = [w / next(iter(scalings[n])) for n, w in zip(names, weights)]
            combination = "svd" if method == "svd" else f"{method}_svd"
            peft_model.add_weighted_adapter(names, unscaled, "peft_svd", combination_type=combination, svd_rank=k, density=args.density,
                                            majority_sign_method=args.sign)
            for path, layer in lora_layers(peft_model).items():
                if "peft_svd" in layer.lora_A:
                    ok &= compare(f"{path}: {combination} with weights w/s (scaling once), PEFT against ours",
                                  ours[path], layer.get_delta_weight("peft_svd"), 1e-4)
    print("all comparisons within tolerance" if ok else "SOME COMPARISONS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
