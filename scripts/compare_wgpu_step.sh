#!/usr/bin/env bash
# Two `xception` binaries' training step on the wgpu device, inside `xception train` (data
# loading, the step's reads and writes, the metrics files): a tiny Xception (width 1/16, one
# middle block, 71x71, batch 4) on the demo's synthetic data, 40 steps each, binaries one
# after the other. On lavapipe (no GPU) the first steps compile the kernels for minutes, so
# the time per step is taken over steps 11-40 from each run's metrics rows.
#
#   scripts/compare_wgpu_step.sh BEFORE AFTER [work dir] [config]
#
# The config (default configs/demo.toml) must be one both binaries read.
# Prints, per binary, the milliseconds per step over steps 11-40.
set -euo pipefail
before=$1 after=$2 work=${3:-$(mktemp -d)}
config=${4:-$(dirname "$0")/../configs/demo.toml}
export CUBECL_AUTOTUNE_LEVEL=minimal
for binary in "$before" "$after"; do
    run="$work/run-$(basename "$binary")"
    rm -rf "$run"
    "$binary" train "$config" --device wgpu --run-dir "$run" --stop-at-step 40 \
        --set data.root="\"$work/data\"" --set model.width=0.0625 --set model.middle_blocks=1 \
        --set data.batch_size=4 --set logging.every_steps=10 --set checkpoints.every_steps=1000 \
        > "$run.log" 2>&1 || { echo "$binary failed: see $run.log" >&2; exit 1; }
    python3 - "$run/metrics.jsonl" "$binary" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"train"' in line]
timed = [r for r in rows if 10 < r["step"] <= 40]
seconds = sum(4 / r["images_per_sec"] for r in timed)
print(f"{sys.argv[2]}: {1000 * seconds / len(timed):.1f} ms per step over steps 11-40 ({len(timed)} steps)")
PY
done
