#!/usr/bin/env bash
# The GPU path on a Linux machine with an NVIDIA GPU: which Vulkan device wgpu can use, the
# training step of the paper's Xception at 299x299 on `--device wgpu` for a few batch
# sizes, and (when PyTorch and timm are installed) PyTorch/timm on CUDA on the same shapes.
# Prints one table; the raw JSON lines go to gpu-check-results.jsonl.
#
#   scripts/gpu-check.sh path/to/xception [python] [batch sizes, default "8 16 32"]
#
# Needs no Rust: build the binary elsewhere (cargo build --release -p xception-cli).
set -uo pipefail
xception=${1:?usage: gpu-check.sh path/to/xception [python] [batches]}
python=${2:-python3}
batches=${3:-8 16 32}
here=$(cd "$(dirname "$0")" && pwd)
out=gpu-check-results.jsonl
: > "$out"
size=299

echo "== machine"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    echo "nvidia-smi not found: no NVIDIA driver on this machine"
fi

echo "== Vulkan (what wgpu needs on Linux)"
vulkan_ok=yes
if ! ldconfig -p 2> /dev/null | grep -q 'libvulkan\.so\.1'; then
    vulkan_ok=no
    echo "NO VULKAN LOADER: libvulkan.so.1 is missing, so wgpu cannot open any device."
    echo "  Install it (Debian/Ubuntu: apt-get install libvulkan1) together with the NVIDIA"
    echo "  Vulkan driver (part of the NVIDIA driver packages; its ICD file is nvidia_icd.json)."
fi
icds=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2> /dev/null || true)
if [ -z "$icds" ]; then
    vulkan_ok=no
    echo "NO VULKAN DRIVER: no ICD file in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d."
else
    echo "Vulkan drivers (ICD files): $(echo $icds | tr '\n' ' ')"
    if ! echo "$icds" | grep -q nvidia; then
        echo "  none is NVIDIA's: wgpu would run on a software or other device, not this GPU."
    fi
fi
if command -v vulkaninfo > /dev/null; then
    echo "Vulkan devices (Burn's default device is the first discrete GPU):"
    vulkaninfo --summary 2> /dev/null | grep -E 'deviceName|deviceType|driverName' | sed 's/^/  /'
fi

echo "== xception bench --device wgpu, training step, ${size}x${size}"
for batch in $batches; do
    if [ "$vulkan_ok" = no ]; then
        echo "{\"framework\": \"xception wgpu\", \"batch\": $batch, \"error\": \"no Vulkan driver\"}" >> "$out"
        continue
    fi
    # Peak GPU memory: nvidia-smi sampled while the benchmark runs (whole device).
    peak_file=$(mktemp)
    if command -v nvidia-smi > /dev/null; then
        (while sleep 0.5; do
            nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1
        done > "$peak_file") &
        sampler=$!
    fi
    result=$("$xception" bench --target train --device wgpu --batch "$batch" --size "$size" \
        --warmup 2 --repeats 5 --json --out /dev/null 2> bench-wgpu-$batch.log | tr -d '\n ')
    status=$?
    [ -n "${sampler:-}" ] && kill "$sampler" 2> /dev/null
    peak=$(sort -n "$peak_file" | tail -1)
    rm -f "$peak_file"
    if [ $status -ne 0 ] || [ -z "$result" ]; then
        echo "{\"framework\": \"xception wgpu\", \"batch\": $batch, \"error\": \"failed, see bench-wgpu-$batch.log\"}" >> "$out"
    else
        echo "${result%\}},\"framework\":\"xception wgpu\",\"peak_gpu_mib\":${peak:-null}}" >> "$out"
    fi
done

echo "== PyTorch/timm on CUDA, same shapes"
if "$python" -c 'import torch, timm; assert torch.cuda.is_available()' 2> /dev/null; then
    for batch in $batches; do
        for layout in "" "--channels-last"; do
            "$python" "$here/bench_reference.py" torch --device cuda --batch "$batch" \
                --size "$size" --warmup 2 --repeats 5 $layout 2> /dev/null | grep '^{' >> "$out"
        done
    done
else
    echo "PyTorch with CUDA and timm are not available to $python: no reference measured."
fi

echo "== results (training step, ${size}x${size}, images per second; peak GPU memory MiB)"
"$python" - "$out" <<'PY' 2> /dev/null || cat "$out"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'what':58} {'batch':>5} {'img/s':>8} {'GPU MiB':>8}")
for r in rows:
    what = r.get("framework", "?")
    rate = r.get("images_per_second")
    mem = r.get("peak_gpu_mib")
    rate = f"{rate:8.1f}" if rate else f"{r.get('error', '-'):>8}"
    mem = f"{mem:8.0f}" if isinstance(mem, (int, float)) else f"{'-':>8}"
    print(f"{what[:58]:58} {r.get('batch', '?'):>5} {rate} {mem}")
PY
