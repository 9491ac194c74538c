#!/usr/bin/env bash
# End-to-end evaluation throughput over one folder of JPEGs at 299x299 (read, decode, central
# 87.5% crop, resize, forward, top-1/top-5): `xception eval` against timm's own validate.py
# and Keras over a tf.data pipeline, with the same weights, batch size and thread count,
# interleaved over several rounds (ours, timm, Keras, ours, ...) so that a noisy neighbour
# hits every side alike.
#
#   scripts/compare_eval.sh [XCEPTION_BINARY] [PYTHON] [ROUNDS]
#   IMAGES=128 THREADS=2 BATCH=32 scripts/compare_eval.sh target/release/xception /tmp/pyref/bin/python 2
#
# XCEPTION_BINARY defaults to target/release/xception, PYTHON (torch, timm, safetensors,
# tensorflow, keras; each framework runs in its own process) to python3, ROUNDS to 3.
# TORCH_PYTHON / KERAS_PYTHON override PYTHON per side. Environment: IMAGES validation
# images (default 256), THREADS compute threads and as many decoding threads/workers for
# every side (default 2), BATCH (default 32), TIMM_VALIDATE the validate.py to run
# (default scripts/third_party/timm_validate.py, vendored unmodified), TIMM_EXTRA more
# validate.py flags (default --channels-last; TIMM_EXTRA= runs NCHW), KEEP a folder to
# keep the data, weights and logs in (reused when run again; default a temporary folder,
# removed on exit).
#
# Setup, once (about 3 minutes on 2 cores): `xception data synth` writes 10 classes of
# 96-150 px training images; `xception train` trains the full-width Xception (the paper's
# network, 10 classes) at 96x96 for 4 epochs (about 96% validation top-1), then a second
# run initialised from it takes 4 SGD steps at 299x299 with a tiny learning rate (which
# moves BatchNorm's statistics to the 299 resolution) and `xception export` writes its
# checkpoint as safetensors in timm's `legacy_xception` names. `xception bench
# --photos-out` writes IMAGES photo-like 500x375 JPEGs (~110 KB, like ImageNet's); photo i
# shows class i % 10's look, so it goes into that class's folder of val/.
#
# The sides, each with THREADS compute threads and THREADS decoding threads:
# - ours: `xception eval --weights W --data val --layout folders --device flex --workers T
#   --batch-size B --json` with RAYON_NUM_THREADS=T;
# - timm: validate.py --model legacy_xception --checkpoint W --num-classes 10 --device cpu
#   --channels-last (TIMM_EXTRA) --workers T -b B --img-size 299 --crop-pct 0.875
#   --crop-mode squash --interpolation bilinear --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5
#   --log-freq 1 with OMP_NUM_THREADS=T (`squash` is the central crop of ours and
#   TensorFlow's: timm's default `center` keeps the aspect ratio and crops a square);
# - keras: scripts/eval_reference.py keras (Keras' applications.Xception with W loaded,
#   tf.data: read_file, decode_jpeg, central_crop, antialiased bilinear resize, batch,
#   prefetch; intra/inter-op and tf.data private pools of T threads).
# Rates: "loop" is each side's own clock over its evaluation loop (ours: `seconds` of its
# JSON, the whole command after start-up, weights loading included; timm: the sum of
# validate.py's batch times, from the loader's first batch on, after its model creation,
# checkpoint load and one warm-up pass; Keras: from the first batch on, after model
# creation, weights and one warm-up pass); "process" is images over the whole process's
# wall time (interpreter start, imports and model building included). Memory: the peak of
# the process tree's proportional set size (PSS, so timm's forked workers count without
# counting shared pages twice), sampled every 0.1 s by eval_reference.py measure, and the
# largest single process's peak RSS as /usr/bin/time -v reports it.
set -euo pipefail
bin=${1:-target/release/xception}
python=${2:-python3}
rounds=${3:-3}
torch_python=${TORCH_PYTHON:-$python}
keras_python=${KERAS_PYTHON:-$python}
images=${IMAGES:-256}
threads=${THREADS:-2}
batch=${BATCH:-32}
here=$(cd "$(dirname "$0")" && pwd)
validate=${TIMM_VALIDATE:-$here/third_party/timm_validate.py}
read -r -a timm_extra <<< "${TIMM_EXTRA---channels-last}"
if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    work=$(cd "$KEEP" && pwd)
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
measure() { "$python" "$here/eval_reference.py" measure "$@"; }
# Runs a logged step; on failure shows the end of its log and stops.
step() {
    local log=$1
    shift
    if ! "$@" > "$log" 2>&1; then
        echo "failed: $* (end of $log:)" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}

weights=$work/weights.safetensors
if [ ! -f "$weights" ]; then
    echo "weights: training a 10-class Xception (96x96, then 4 steps at 299x299)" >&2
    rm -rf "$work/synth" "$work/run96" "$work/run299"
    step "$work/synth.log" "$bin" data synth --out "$work/synth" --classes 10 \
        --train-per-class 60 --val-per-class 10 --size 120 --seed 1
    # Stage 1: the full network at 96x96 (about 30 images/s on 2 cores); stage 2: the same
    # config at 299x299, initialised from stage 1: 4 steps of 8 images, still in the warm-up
    # (rate at most 1.1e-4), which mostly moves BatchNorm's statistics to the new resolution.
    cat > "$work/train.toml" <<EOF
[model]
num_classes = 10
input_size = 96
dropout = 0.0
bn_momentum = 0.5
[data]
root = "$work/synth"
batch_size = 32
workers = $threads
crop = { area = [0.35, 1.0] }
[optimizer]
kind = "sgd"
momentum = 0.9
weight_decay = 1e-4
[schedule]
lr = 0.05
warmup = { epochs = 1.0 }
decay = { kind = "cosine", final_lr = 0.0 }
[training]
epochs = 4
seed = 0
device = "flex"
[checkpoints]
every_steps = 1000
keep_last = 1
[logging]
every_steps = 5
plot = false
EOF
    step "$work/train96.log" env RAYON_NUM_THREADS="$threads" "$bin" train "$work/train.toml" \
        --run-dir "$work/run96"
    step "$work/train299.log" env RAYON_NUM_THREADS="$threads" "$bin" train "$work/train.toml" \
        --run-dir "$work/run299" --stop-at-step 4 --set model.input_size=299 \
        --set data.batch_size=8 --set schedule.lr=0.002 --set training.epochs=1 \
        --set "training.init_from=\"$work/run96\""
    grep '^best' "$work/train96.log" | sed 's/^/  96x96 run: /' >&2
    checkpoint=$(ls -d "$work"/run299/checkpoints/step-* | tail -n 1)
    step "$work/export.log" "$bin" export "$checkpoint" --format safetensors --out "$weights"
fi

val=$work/val-$images
if [ ! -d "$val" ]; then
    mapfile -t classes < <(ls "$work/synth/train")
    rm -rf "$work/photos"
    step "$work/photos.log" "$bin" bench --photos-out "$work/photos" --photos "$images" \
        --threads 1 --repeats 1 --out "$work/photos.json"
    for photo in "$work"/photos/photo_*.jpg; do
        name=$(basename "$photo" .jpg)
        class=${classes[$(( 10#${name#photo_} % 10 ))]}
        mkdir -p "$val.tmp/$class"
        mv "$photo" "$val.tmp/$class/"
    done
    mv "$val.tmp" "$val"
    rmdir "$work/photos"
fi
echo "files: $(find "$val" -type f | wc -l) in $(ls "$val" | wc -l) classes," \
    "$(du -sh --apparent-size "$val" | cut -f1); $threads threads, batch $batch" >&2

for round in $(seq "$rounds"); do
    out=$work/round-$round
    mkdir -p "$out"
    echo "round $round/$rounds: ours" >&2
    step "$out/ours.log" measure --out "$out/ours.mem.json" -- \
        env RAYON_NUM_THREADS="$threads" "$bin" eval --weights "$weights" --data "$val" \
        --layout folders --device flex --workers "$threads" --batch-size "$batch" --json
    sed -n '/^{/,/^}/p' "$out/ours.log" > "$out/ours.json"
    echo "round $round/$rounds: timm validate.py" >&2
    step "$out/timm.log" measure --out "$out/timm.mem.json" -- \
        env OMP_NUM_THREADS="$threads" "$torch_python" "$validate" --data-dir "$val" \
        --model legacy_xception --checkpoint "$weights" --num-classes 10 --device cpu \
        --workers "$threads" -b "$batch" --img-size 299 --crop-pct 0.875 --crop-mode squash \
        --interpolation bilinear --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5 --log-freq 1 \
        "${timm_extra[@]}"
    echo "round $round/$rounds: keras" >&2
    step "$out/keras.log" measure --out "$out/keras.mem.json" -- \
        "$keras_python" "$here/eval_reference.py" keras "$val" --weights "$weights" \
        --threads "$threads" --batch "$batch" --size 299 --crop-pct 0.875
    grep '^{' "$out/keras.log" > "$out/keras.json"
done

"$python" - "$work" "$rounds" "${timm_extra[*]}" <<'PY'
import json, re, statistics, sys
work, rounds, timm_flags = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def timm_result(path):
    text = open(path).read()
    result = json.loads(text.split("--result", 1)[1])
    batches = re.findall(r"Test: \[\s*(\d+)/(\d+)\]\s+Time: \S+s \((\S+)s,", text)
    index, count, average = batches[-1]
    assert int(index) + 1 == int(count), f"{path}: the last batch was not logged"
    # validate.py's batch times run from just before the loader's first batch to the last.
    result["seconds"] = float(average) * int(count)
    return result

sides = {"ours": [], "timm": [], "keras": []}
for r in range(1, rounds + 1):
    folder = f"{work}/round-{r}"
    results = {
        "ours": json.load(open(f"{folder}/ours.json")),
        "timm": timm_result(f"{folder}/timm.log"),
        "keras": json.load(open(f"{folder}/keras.json")),
    }
    images = results["ours"]["images"]
    assert results["keras"]["images"] == images, "ours and Keras saw different numbers of images"
    line = []
    for side, result in results.items():
        memory = json.load(open(f"{folder}/{side}.mem.json"))
        row = {
            "loop": images / result["seconds"],
            "process": images / memory["wall_seconds"],
            "top1": result["top1"],
            "top5": result["top5"],
            "pss": memory["peak_tree_pss_mib"],
            "rss": memory["max_single_rss_mib"],
            "processes": memory["max_processes"],
        }
        sides[side].append(row)
        line.append(f"{side} {row['loop']:.2f} ({row['process']:.2f}) img/s, top-1 {row['top1']:.2f}%")
        print(json.dumps({"round": r, "side": side, "images": images, **row}), file=sys.stderr)
    print(f"round {r}: " + ", ".join(line))

names = {"ours": "xception-burn eval, flex", "timm": f"timm validate.py {timm_flags}".strip(),
         "keras": "Keras, tf.data"}
median = lambda rows, key: statistics.median(row[key] for row in rows)  # noqa: E731
print(f"\n{images} images, medians of {rounds} round(s); loop = each side's own clock over "
      "its evaluation loop, process = the whole command's wall time")
print("| side | images/s, loop (rounds) | images/s, process | top-1 | top-5 | peak PSS (tree) | max RSS (one process) |")
print("|---|---|---|---|---|---|---|")
for side, rows in sides.items():
    each = ", ".join(f"{row['loop']:.2f}" for row in rows)
    tops = sorted({f"{row['top1']:.2f}" for row in rows})
    processes = max(row["processes"] for row in rows)
    print(f"| {names[side]} | {median(rows, 'loop'):.2f} ({each}) | {median(rows, 'process'):.2f} "
          f"| {'/'.join(tops)}% | {median(rows, 'top5'):.2f}% "
          f"| {median(rows, 'pss'):.0f} MiB{f' ({processes} processes)' if processes > 1 else ''} "
          f"| {median(rows, 'rss'):.0f} MiB |")
ours = median(sides["ours"], "loop")
for side in ("timm", "keras"):
    print(f"ours / {side}: loop {ours / median(sides[side], 'loop'):.2f}, "
          f"process {median(sides['ours'], 'process') / median(sides[side], 'process'):.2f}")
PY
