#!/usr/bin/env bash
# One device call: the CUDA tests, our GPU benchmark and the PyTorch peers, in the same run on the same GPU.
# Prepare here:  ../shared/gpu/bundle.sh tests/MoErging.Tests/MoErging.Tests.csproj bench/MoErging.Bench.Gpu/MoErging.Bench.Gpu.csproj
# Then (device tool): run(command="bash bench/gpu.sh", carry=[".gpu"]); the tables land in $OUT.
set -uo pipefail
out=${OUT:-/tmp/moerging-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/device.txt"
bash .gpu/run.sh MoErging.Tests -trait "Backend=Cuda" -noColor > "$out/cuda-tests.log" 2>&1
tail -n 3 "$out/cuda-tests.log"
bash .gpu/run.sh MoErging.Bench.Gpu --backend cuda --out "$out/engine.md" > "$out/engine.log" 2>&1
PYTHONUNBUFFERED=1 python3 bench/peers/moe_lora_peers.py --out "$out/peers.md" > "$out/peers.log" 2>&1
cat "$out/engine.md" "$out/peers.md" 2>/dev/null || tail -n 20 "$out/engine.log" "$out/peers.log"
