#!/usr/bin/env bash
# Data pipeline throughput, ours against torchvision's, on the same files and machine,
# interleaved over several rounds so that a noisy neighbour hits both sides alike.
#
#   scripts/compare_data_pipeline.sh [XCEPTION_BINARY] [PYTHON] [ROUNDS] [TRANSFORMS]
#
# TRANSFORMS: `train` (random resized crop + flip), `eval` (central 87.5% crop) or both,
# comma-separated (default `train,eval`).
# Needs a built `xception` (default target/release/xception) and a Python with torch,
# torchvision and Pillow. Writes 256 photo-like 500x375 JPEGs (about 110 KB each, like
# ImageNet's) to a temporary folder, and prints each round and the medians.
set -euo pipefail
bin=${1:-target/release/xception}
python=${2:-python3}
rounds=${3:-3}
transforms=${4:-train,eval}
here=$(cd "$(dirname "$0")" && pwd)
photos=$(mktemp -d)
trap 'rm -rf "$photos"' EXIT
"$bin" bench --photos-out "$photos/jpegs" --photos 256 --threads 1 --repeats 1 \
    --out "$photos/warmup.json" >/dev/null
echo "files: $(ls "$photos/jpegs" | wc -l), $(du -sh --apparent-size "$photos/jpegs" | cut -f1)"
for round in $(seq "$rounds"); do
    for transform in ${transforms//,/ }; do
        "$bin" bench --data-dir "$photos/jpegs" --transform "$transform" --threads 1,2 --repeats 3 \
            --out "$photos/ours-$transform-$round.json" >/dev/null
        "$python" "$here/bench_torchvision_pipeline.py" "$photos/jpegs" --transform "$transform" \
            --repeats 3 | tail -n 1 > "$photos/torchvision-$transform-$round.json"
    done
done
"$python" - "$photos" "$rounds" "$transforms" <<'PY'
import json, statistics, sys
folder, rounds, transforms = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
for transform in transforms:
    ours = {1: [], 2: []}
    theirs = {1: [], 2: []}
    for r in range(1, rounds + 1):
        for result in json.load(open(f"{folder}/ours-{transform}-{r}.json"))["results"]:
            ours[result["threads"]].append(result["images_per_second"])
        for result in json.load(open(f"{folder}/torchvision-{transform}-{r}.json"))["results"]:
            theirs[max(result["workers"], 1)].append(result["images_per_second"])
        print(f"{transform}, round {r}: ours {ours[1][-1]:.0f} / {ours[2][-1]:.0f} img/s, "
              f"torchvision {theirs[1][-1]:.0f} / {theirs[2][-1]:.0f} img/s (1 / 2 threads)")
    for threads in (1, 2):
        a, b = statistics.median(ours[threads]), statistics.median(theirs[threads])
        print(f"{transform}, median, {threads} thread(s): ours {a:.0f} img/s, "
              f"torchvision {b:.0f} img/s, ratio {a / b:.2f}")
PY
