#!/usr/bin/env bash
# Two `xception` binaries' training-step throughput on flex, and optionally Keras and
# PyTorch/timm on the same shapes, interleaved over several rounds (these machines are
# noisy: compare medians of rounds measured side by side, never single runs, and never a
# reference measured at another time).
#
#   scripts/interleave_train_step.sh BEFORE AFTER [rounds] [keras python] [torch python]
#   ARCH=inception_v3 scripts/interleave_train_step.sh ...   # the baseline (default xception;
#                                                            # both binaries need --arch)
#
# Prints one JSON line per measurement, tagged with the round (and ours with the binary),
# then the median images/s of each over the rounds and the ratios of AFTER to the others.
set -uo pipefail
before=$1 after=$2 rounds=${3:-3} keras_python=${4:-} torch_python=${5:-}
arch=${ARCH:-xception}
arch_flag=()
if [ "$arch" != xception ]; then arch_flag=(--arch "$arch"); fi
here=$(dirname "$0")
tag() { tr -d '\n ' | sed "s|^{|{$1|"; echo; }
for round in $(seq "$rounds"); do
    for shape in "32 96" "8 299"; do
        set -- $shape
        for binary in "$before" "$after"; do
            "$binary" bench --target train "${arch_flag[@]}" --device flex --batch "$1" --size "$2" \
                --warmup 1 --repeats 3 --json --out /dev/null 2> /dev/null |
                tag "\"binary\":\"$binary\",\"round\":$round,"
        done
        if [ -n "$keras_python" ]; then
            "$keras_python" "$here/bench_reference.py" keras --arch "$arch" --batch "$1" --size "$2" 2> /dev/null |
                grep '^{' | tag "\"round\":$round,"
        fi
        if [ -n "$torch_python" ]; then
            "$torch_python" "$here/bench_reference.py" torch --arch "$arch" --batch "$1" --size "$2" \
                --channels-last 2> /dev/null | grep '^{' | tag "\"round\":$round,"
        fi
    done
done | tee /dev/stderr | python3 -c '
import json, statistics, sys
runs = {}
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    who = d.get("binary") or d.get("framework", "?")
    runs.setdefault((d["size"], d["batch"], who), []).append(d["images_per_second"])
after = sys.argv[1]
for (size, batch, who), rates in sorted(runs.items()):
    median = statistics.median(rates)
    mine = statistics.median(runs.get((size, batch, after), [float("nan")]))
    each = ", ".join(f"{r:.2f}" for r in rates)
    print(f"{size}x{size} batch {batch}: {who}: median {median:.2f} images/s ({each}); "
          f"{after} / this = {mine / median:.2f}")
' "$after"
