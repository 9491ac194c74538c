#!/usr/bin/env bash
# Training-step throughput of the paper's Xception: ours (`xception bench --target train`)
# against Keras/TensorFlow and PyTorch/timm on the same shapes, in one run on one machine.
#
#   scripts/compare_train_step.sh target/release/xception <python with tensorflow+keras> <python with torch+timm> [device]
#
# Prints one JSON line per measurement and writes them to train-step-results.jsonl.
set -euo pipefail
xception=$1 keras_python=$2 torch_python=$3 device=${4:-flex}
here=$(dirname "$0")
out=train-step-results.jsonl
: > "$out"
for shape in "32 96" "8 299"; do
    set -- $shape
    batch=$1 size=$2
    "$xception" bench --target train --device "$device" --batch "$batch" --size "$size" \
        --warmup 1 --repeats 3 --json --out /dev/null | tr -d '\n ' >> "$out"
    echo >> "$out"
    "$keras_python" "$here/bench_reference.py" keras --batch "$batch" --size "$size" 2>/dev/null | grep '^{' >> "$out"
    "$torch_python" "$here/bench_reference.py" torch --batch "$batch" --size "$size" 2>/dev/null | grep '^{' >> "$out"
    "$torch_python" "$here/bench_reference.py" torch --batch "$batch" --size "$size" --channels-last 2>/dev/null | grep '^{' >> "$out"
done
cat "$out"
