#!/usr/bin/env bash
# The paper's comparison in miniature: Xception and Inception V3, narrowed to a quarter of
# their width (1.35 M and 1.37 M parameters), trained on the same synthetic data with identical
# settings (configs/demo-pair/*.toml differ only in [model]), then their results side by side.
#
#   scripts/demo_pair.sh [RUNS_DIR]        # default runs/demo-pair; about 3 minutes on 2 cores
#
# Uses target/release/xception (built first if missing), or $XCEPTION.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/demo-pair}
bin=${XCEPTION:-target/release/xception}
if [[ ! -x $bin ]]; then
    cargo build --release -p xception-cli
fi
mkdir -p "$runs"
for arch in xception inception-v3; do
    if [[ -d $runs/$arch/checkpoints ]]; then
        echo "== $arch: $runs/$arch already trained (remove it to train again)"
        continue
    fi
    echo "== training $arch (configs/demo-pair/$arch.toml)"
    "$bin" train "configs/demo-pair/$arch.toml" --run-dir "$runs/$arch" >"$runs/$arch.out" 2>"$runs/$arch.log"
    tail -n 4 "$runs/$arch.out"
done

echo
printf '%-14s %12s %10s %14s %14s %10s\n' model parameters MACs "val top-1" "EMA top-1" time
for arch in xception inception-v3; do
    info=$("$bin" info "configs/demo-pair/$arch.toml" --json)
    params=$(grep -m1 '"trainable_params"' <<<"$info" | tr -dc 0-9)
    macs=$(grep -m1 '^  "macs"' <<<"$info" | tr -dc 0-9)
    final=$(ls -d "$runs/$arch"/checkpoints/step-* | tail -n 1)
    top1() { "$bin" eval --weights "$final" --data data/demo --json "$@" | sed -nE 's/.*"top1": *([0-9.]+).*/\1/p' | head -n 1; }
    time=$(grep -o 'in [0-9hms.]* this session' "$runs/$arch.out" | awk '{print $2}' || true)
    awk -v a="$arch" -v p="$params" -v m="$macs" -v t="$(top1)" -v e="$(top1 --ema)" -v s="${time:-?}" \
        'BEGIN { printf "%-14s %12s %9.1fM %13.2f%% %13.2f%% %10s\n", a, p, m / 1e6, t, e, s }'
done
echo "(the final checkpoint of each run on data/demo/val, 200 images)"
