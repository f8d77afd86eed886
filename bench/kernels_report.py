"""The kernels report (see kernels-report.sh): ptxas's resource use and the compiled loads of every kernel, then
each workload's launches and a simple model of its time on an H100 SXM. Every time it prints is a prediction."""
import glob
import json
import math
import os
import re
import subprocess
import sys

DIR, TOOLS = sys.argv[1], sys.argv[2]

# H100 SXM (BRIEF §6 and NVIDIA's published limits).
SMS, REGS_PER_SM, SMEM_PER_SM, THREADS_PER_SM, GROUPS_PER_SM = 132, 65536, 228 * 1024, 2048, 32
BANDWIDTH = 3.0e12          # bytes/s: the device-to-device copy measured on an H100 (BRIEF §6)
DRAM_LATENCY = 0.6e-6       # s: one dependent global load that misses L2, under load (assumption)
L2_LATENCY = 0.25e-6        # s: one that hits L2 (assumption)
L1_LATENCY = 0.03e-6        # s: one that hits L1 (assumption)
LAUNCH = 2.5e-6             # s: per launch of a synchronised forward (from 10 to 15 µs for four launches)


def kernels():
    """Per kernel file: registers, spills, shared memory, 128-bit loads (PTX and SASS), fp64 instructions."""
    rows = {}
    for ptx in sorted(glob.glob(os.path.join(DIR, "*.ptx"))):
        name = os.path.basename(ptx)[:-4]
        cubin = ptx[:-4] + ".cubin"
        info = subprocess.run([os.path.join(TOOLS, "ptxas"), "-arch=sm_90", "-v", ptx, "-o", cubin],
                              capture_output=True, text=True, check=True).stderr
        regs = int(re.search(r"Used (\d+) registers", info).group(1))
        smem = re.search(r"(\d+) bytes smem", info)
        spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
        text = open(ptx).read()
        code = [line.split("//")[0] for line in text.splitlines()]
        v4 = sum(1 for line in code if re.search(r"\bld\.global(\.nc)?\.v4\.", line))
        f64 = sum(1 for line in code if re.search(r"\.f64\b", line))
        sass = subprocess.run([os.path.join(TOOLS, "cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
        ldg128 = len(re.findall(r"LDG\.E\.128", sass))
        rows[name] = dict(regs=regs, smem=int(smem.group(1)) if smem else 0, spills=spills, v4=v4, ldg128=ldg128, f64=f64)
    return rows


def occupancy(group_size, regs, smem):
    regs_per_group = math.ceil(regs / 8) * 8 * group_size
    return max(1, min(GROUPS_PER_SM, THREADS_PER_SM // group_size, REGS_PER_SM // regs_per_group,
                      SMEM_PER_SM // (smem + 1024)))


def model(w, launch, prototype_bytes):
    """(DRAM bytes, dependent-load chain in seconds) of one launch of workload w (F16 activations, 16-bit weights)."""
    t, e, k, r, d = w["tokens"], w["experts"], w["top_k"], w["rank"], w["d"]
    selected = min(e, t * k)                    # experts read: at most T·k distinct (the bound the floor uses)
    pairs = t * k / selected                    # tokens per selected expert
    kind = launch["kernel"]
    # Chains follow the kernels' unrolling: scores two steps of 8 elements per lane, the selection 8 scores per
    # load batch (its first pass from L2, later passes from L1), the shrink two vectors per lane with a row's d_in
    # split between two warps, the expand 8 rank terms per batch.
    selection = (math.ceil(e / 8) * L2_LATENCY + (k - 1) * math.ceil(e / 8) * L1_LATENCY)
    if kind == "gating_scores":
        return t * d * 2 + e * d * prototype_bytes + e * t * 4, math.ceil(d / (16 * launch["group_size"])) * DRAM_LATENCY
    if kind == "gating_select":
        return e * t * 4 + t * k * 8, selection
    if kind == "shrink":
        fused = w["routed"] and not any(l["kernel"] == "gating_select" for l in w["launches"])
        batches = math.ceil(pairs / 8)
        return selected * r * d * 2, (selection if fused else 0) + batches * math.ceil(d / (8 * 32 * 2 * 2)) * DRAM_LATENCY
    if kind == "expand":
        return selected * r * d * 2 + 2 * t * d * 2 + t * k * r * 4, k * math.ceil(r / 8) * DRAM_LATENCY
    raise ValueError(kind)


def floor_bytes(w, prototype_bytes):
    t, e, k, r, d = w["tokens"], w["experts"], w["top_k"], w["rank"], w["d"]
    return t * d * 2 + 2 * t * d * 2 + (e * d * prototype_bytes if w["routed"] else 0) + min(e, t * k) * 2 * r * d * 2


def workloads(plan, rows, weights, prototypes, prototype_bytes):
    """The launch table of every workload with F16 activations, `weights` factors and `prototypes` prototypes."""
    print("| workload | T | launch | groups × threads | shared B | bulk | groups/SM | waves | DRAM MB | chain µs | predicted µs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for w in plan["workloads"]:
        total = 0.0
        for launch in w["launches"]:
            variant = {"gating_scores": f"gating_scores_f16_{prototypes}", "gating_select": "gating_select"}.get(launch["kernel"], f"{launch['kernel']}_f16_{weights}")
            res = rows[variant]
            per_sm = occupancy(launch["group_size"], res["regs"], launch["shared_bytes"])
            waves = math.ceil(launch["groups"] / (SMS * per_sm))
            bytes_, chain = model(w, launch, prototype_bytes)
            time = max(bytes_ / BANDWIDTH, waves * chain) + LAUNCH
            total += time
            print(f"| {w['name']} | {w['tokens']} | {launch['kernel']} | {launch['groups']} × {launch['group_size']} | {launch['shared_bytes']} | "
                  f"{'yes' if launch['bulk'] else 'no'} | {per_sm} | {waves} | {bytes_ / 1e6:.2f} | {waves * chain * 1e6:.1f} | {time * 1e6:.1f} |")
        floor = floor_bytes(w, prototype_bytes) / BANDWIDTH
        print(f"| **{w['name']}** | **{w['tokens']}** | **{len(w['launches'])} launches** | | | | | | floor {floor_bytes(w, prototype_bytes) / 1e6:.2f} MB = {floor * 1e6:.1f} µs | | **{total * 1e6:.1f}** |")


def main():
    rows = kernels()
    print("## Kernels (ptxas -arch=sm_90 -v; static analysis)\n")
    print("| kernel | registers | spill bytes | shared bytes | 128-bit global loads (PTX / SASS) | fp64 instructions |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, k in rows.items():
        print(f"| {name} | {k['regs']} | {k['spills']} | {k['smem']} | {k['v4']} / {k['ldg128']} | {k['f64']} |")
    plan = json.load(open(os.path.join(DIR, "launches.json")))
    print("\n## Launches per forward and a model of an H100 (predictions)\n")
    print(f"Model: each launch takes the longer of its DRAM bytes at {BANDWIDTH / 1e12:.1f} TB/s and its waves times its chain of dependent")
    print(f"loads ({DRAM_LATENCY * 1e6:.2f} µs per DRAM load, {L2_LATENCY * 1e6:.2f} µs per L2 hit, {L1_LATENCY * 1e6:.2f} µs per L1 hit), plus {LAUNCH * 1e6:.1f} µs per launch; F16 activations and")
    print("weights and prototypes (WeightPrecision.Float16), every selected expert distinct (the floor's bound). Occupancy from each kernel's registers and shared memory.\n")
    workloads(plan, rows, "f16", "f16", 2)
    print("\nThe same model with BF16 weights and prototypes (WeightPrecision.BFloat16; F16 activations): the BF16 kernels' registers,")
    print("and prototypes of 2 bytes instead of 4.\n")
    workloads(plan, rows, "bf16", "bf16", 2)


main()
