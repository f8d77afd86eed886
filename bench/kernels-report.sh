#!/usr/bin/env bash
# Static analysis of the CUDA kernels, without a GPU: writes every variant's PTX and each standard workload's
# launches (the ptx command of bench/MoErging.Bench.Gpu), assembles each kernel with NVIDIA's ptxas for sm_90,
# and prints per kernel its registers, spills, shared memory, 128-bit global loads and double-precision
# instructions, then per workload the launch table and a stated model of its time on an H100 (a prediction).
#   bash bench/kernels-report.sh [DIR]      (DIR keeps the PTX, cubins and launches.json; a temporary folder otherwise)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$(mktemp -d)}
dotnet run -c Release --project "$root/bench/MoErging.Bench.Gpu" -- ptx "$dir" > /dev/null
tools=$(bash "$root/../shared/gpu/ptxas.sh")
python3 "$root/bench/kernels_report.py" "$dir" "$tools"
