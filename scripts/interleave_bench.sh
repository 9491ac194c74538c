#!/usr/bin/env bash
# Two `xception` binaries' throughput on flex (training step or inference), and optionally
# Keras and PyTorch/timm on the same shapes, interleaved over several rounds (these machines
# are noisy: compare medians of rounds measured side by side, never single runs, and never a
# reference measured at another time).
#
#   scripts/interleave_bench.sh BEFORE AFTER [rounds] [keras python] [torch python]
#   ARCH=inception_v3 scripts/interleave_bench.sh ...   # the baseline (default xception;
#                                                       # both binaries need --arch)
#   TARGET=inference scripts/interleave_bench.sh ...    # forward passes (default train)
#
# Shapes: training at 96x96 batch 32 and 299x299 batch 8 (1 warm-up step, the median of 3);
# inference at 299x299, batch 1 (50 passes, for the p50/p95 latency), 8 (5) and 32 (3),
# after 2 warm-up passes. PyTorch runs channels_last. Prints one JSON line per measurement,
# tagged with the round (and ours with the binary), then per shape the median images/s of
# each side over the rounds with its median p50/p95 latency and peak memory, and the ratios
# of AFTER to the others.
set -uo pipefail
before=$1 after=$2 rounds=${3:-3} keras_python=${4:-} torch_python=${5:-}
arch=${ARCH:-xception}
target=${TARGET:-train}
arch_flag=()
if [ "$arch" != xception ]; then arch_flag=(--arch "$arch"); fi
case "$target" in
    train) shapes=("32 96 1 3" "8 299 1 3"); reference_flag=() ;;
    inference) shapes=("1 299 2 50" "8 299 2 5" "32 299 2 3"); reference_flag=(--inference) ;;
    *) echo "TARGET must be train or inference, not $target" >&2; exit 2 ;;
esac
here=$(dirname "$0")
tag() { tr -d '\n ' | sed "s|^{|{$1|"; echo; }
for round in $(seq "$rounds"); do
    for shape in "${shapes[@]}"; do
        set -- $shape
        for binary in "$before" "$after"; do
            "$binary" bench --target "$target" "${arch_flag[@]}" --device flex --batch "$1" \
                --size "$2" --warmup "$3" --repeats "$4" --json --out /dev/null 2> /dev/null |
                tag "\"binary\":\"$binary\",\"round\":$round,"
        done
        if [ -n "$keras_python" ]; then
            "$keras_python" "$here/bench_reference.py" keras "${reference_flag[@]}" --arch "$arch" \
                --batch "$1" --size "$2" --warmup "$3" --repeats "$4" 2> /dev/null |
                grep '^{' | tag "\"round\":$round,"
        fi
        if [ -n "$torch_python" ]; then
            "$torch_python" "$here/bench_reference.py" torch "${reference_flag[@]}" --arch "$arch" \
                --batch "$1" --size "$2" --warmup "$3" --repeats "$4" --channels-last 2> /dev/null |
                grep '^{' | tag "\"round\":$round,"
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
    runs.setdefault((d["size"], d["batch"], who), []).append(d)
after = sys.argv[1]
def median(rows, key):
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else float("nan")
for (size, batch, who), rows in sorted(runs.items()):
    rate = median(rows, "images_per_second")
    mine = median(runs.get((size, batch, after), []), "images_per_second")
    each = ", ".join("%.2f" % row["images_per_second"] for row in rows)
    latency = ""
    if "p50_ms" in rows[0]:
        latency = ", p50 %.1f ms, p95 %.1f ms" % (median(rows, "p50_ms"), median(rows, "p95_ms"))
    print("%dx%d batch %d: %s: median %.2f images/s (%s)%s, peak %.0f MiB; %s / this = %.2f" % (
        size, size, batch, who, rate, each, latency, median(rows, "peak_rss_mib"), after,
        mine / rate))
' "$after"
