#!/usr/bin/env bash
# Two `xception` binaries' training-step throughput on flex, interleaved over several rounds
# (these machines are noisy: compare medians of rounds, never single runs), then Keras and
# PyTorch/timm once on the same shapes.
#
#   scripts/interleave_train_step.sh BEFORE AFTER [rounds] [keras python] [torch python]
#
# Prints one JSON line per measurement, each ours tagged with the binary and the round.
set -uo pipefail
before=$1 after=$2 rounds=${3:-3} keras_python=${4:-} torch_python=${5:-}
here=$(dirname "$0")
for round in $(seq "$rounds"); do
    for shape in "32 96" "8 299"; do
        set -- $shape
        for binary in "$before" "$after"; do
            "$binary" bench --target train --device flex --batch "$1" --size "$2" \
                --warmup 1 --repeats 3 --json --out /dev/null 2> /dev/null | tr -d '\n ' |
                sed "s|^{|{\"binary\":\"$binary\",\"round\":$round,|"
            echo
        done
    done
done
for shape in "32 96" "8 299"; do
    set -- $shape
    [ -n "$keras_python" ] && "$keras_python" "$here/bench_reference.py" keras --batch "$1" --size "$2" 2> /dev/null | grep '^{'
    [ -n "$torch_python" ] && "$torch_python" "$here/bench_reference.py" torch --batch "$1" --size "$2" --channels-last 2> /dev/null | grep '^{'
done
