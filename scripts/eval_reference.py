#!/usr/bin/env python3
"""Helpers of scripts/compare_eval.sh (end-to-end evaluation throughput against timm and Keras).

    python scripts/eval_reference.py keras DIR [--weights FILE.safetensors] [--threads 2]
        [--batch 32] [--size 299] [--crop-pct 0.875]
    python scripts/eval_reference.py measure --out RESULT.json -- COMMAND [ARG...]

`keras`: evaluates Keras' `applications.Xception` on DIR (one folder per class, classes in
sorted order, as `xception eval --layout folders` and timm's ImageFolder read it) through a
tf.data pipeline: list the files, `tf.io.read_file`, `decode_jpeg`, TensorFlow's
`central_crop` of `--crop-pct`, bilinear antialiased resize to `--size` (the same transform as
`xception eval`), `x / 127.5 - 1`, batch, prefetch, then `model(x, training=False)` in a
`tf.function` per batch, and top-1 / top-5. With `--weights`, an `xception export --format
safetensors` file (timm's `legacy_xception` names) is loaded into the Keras model, so its
top-1 can be compared with ours and timm's on the same weights (Keras' graph is ours: same
padding and BatchNorm epsilon); without it, the weights are random and only the throughput
means anything. TensorFlow gets `--threads` intra-op and inter-op threads, and tf.data a
private pool of `--threads` threads. One untimed forward pass on zeros traces the function
first (timm's validate.py does the same warm-up); the timed loop runs from the first batch
requested to the last scored. Prints one JSON line.

`measure`: runs COMMAND (its stdout and stderr are this process's), samples its process tree
every 0.1 s from /proc (resident and proportional set sizes, summed over the processes: a
DataLoader's workers count), and writes JSON with the wall time, the peaks, the largest
single process's peak RSS as the kernel counts it (what `/usr/bin/time -v` reports) and the
exit status, which is also this command's. Linux only; standard library only.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time


def read_memory_kib(pid):
    """(Rss, Pss) of one process in KiB from /proc/PID/smaps_rollup, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    value = lambda name: int(fields.get(name, "0 kB").split()[0])  # noqa: E731
    return value("Rss"), value("Pss")


def process_tree(pid):
    """PID and all its descendants (through /proc/PID/task/*/children)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack.extend(int(child) for child in f.read().split())
            except OSError:
                pass
    return found


def measure(args):
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("measure: no command given")
    started = time.perf_counter()
    child = subprocess.Popen(command)
    peak_rss = peak_pss = peak_processes = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid == child.pid:
            break
        rss = pss = 0
        processes = 0
        for member in process_tree(child.pid):
            memory = read_memory_kib(member)
            if memory:
                rss += memory[0]
                pss += memory[1]
                processes += 1
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        peak_processes = max(peak_processes, processes)
        time.sleep(0.1)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped above: keep Popen quiet
    result = {
        "command": command,
        "returncode": child.returncode,
        "wall_seconds": wall,
        "peak_tree_rss_mib": peak_rss / 1024,
        "peak_tree_pss_mib": peak_pss / 1024,
        "max_processes": peak_processes,
        # ru_maxrss of the reaped child: the largest of its own peak and its reaped descendants'.
        "max_single_rss_mib": usage.ru_maxrss / 1024,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)


def load_timm_weights_into_keras(model, path):
    """Copies an `xception export` safetensors file (timm's legacy_xception names, PyTorch
    layouts) into Keras' Xception, by Keras' layer names; the four unnamed residual
    convolutions and BatchNorms are matched in order (blocks 2, 3, 4 and 13)."""
    import numpy as np
    from safetensors.numpy import load_file

    state = load_file(path)
    used = set()

    def take(key, order=None):
        used.add(key)
        value = state[key]
        return np.ascontiguousarray(value.transpose(order) if order else value)

    conv = lambda key: take(key, (2, 3, 1, 0))  # noqa: E731  [O, I, kh, kw] -> [kh, kw, I, O]
    depthwise = lambda key: take(key, (2, 3, 0, 1))  # noqa: E731  [C, 1, kh, kw] -> [kh, kw, C, 1]

    def bn(prefix):
        used.add(f"{prefix}.num_batches_tracked")
        return [take(f"{prefix}.{name}") for name in ("weight", "bias", "running_mean", "running_var")]

    def separable(prefix):
        return [depthwise(f"{prefix}.conv1.weight"), conv(f"{prefix}.pointwise.weight")]

    weights = {
        "block1_conv1": [conv("conv1.weight")],
        "block1_conv1_bn": bn("bn1"),
        "block1_conv2": [conv("conv2.weight")],
        "block1_conv2_bn": bn("bn2"),
        "block14_sepconv1": separable("conv3"),
        "block14_sepconv1_bn": bn("bn3"),
        "block14_sepconv2": separable("conv4"),
        "block14_sepconv2_bn": bn("bn4"),
        "predictions": [take("fc.weight", (1, 0)), take("fc.bias")],
    }
    skips = []
    for block in range(1, 13):  # timm's block k is Keras' block k + 1
        reps = sorted(
            int(key.split(".")[2])
            for key in state
            if key.startswith(f"block{block}.rep.") and key.endswith(".conv1.weight")
        )
        for m, rep in enumerate(reps, 1):
            weights[f"block{block + 1}_sepconv{m}"] = separable(f"block{block}.rep.{rep}")
            weights[f"block{block + 1}_sepconv{m}_bn"] = bn(f"block{block}.rep.{rep + 1}")
        if f"block{block}.skip.weight" in state:
            skips.append(block)
    residual_convs = [layer for layer in model.layers
                      if type(layer).__name__ == "Conv2D" and not layer.name.startswith("block")]
    residual_bns = [layer for layer in model.layers
                    if type(layer).__name__ == "BatchNormalization" and not layer.name.startswith("block")]
    if not (len(skips) == len(residual_convs) == len(residual_bns)):
        raise ValueError(f"{len(skips)} residual blocks in {path}, {len(residual_convs)} in Keras' model")
    for block, conv_layer, bn_layer in zip(skips, residual_convs, residual_bns):
        weights[conv_layer.name] = [conv(f"block{block}.skip.weight")]
        weights[bn_layer.name] = bn(f"block{block}.skipbn")
    for layer in model.layers:
        if layer.weights:
            if layer.name not in weights:
                raise ValueError(f"no weights in {path} for Keras layer {layer.name}")
            layer.set_weights(weights.pop(layer.name))
    unused = sorted(set(state) - used)
    if weights or unused:
        raise ValueError(f"{path}: unmatched layers {sorted(weights)}, unused tensors {unused[:5]}")
    return len(used)


def keras_eval(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    classes = sorted(entry.name for entry in os.scandir(args.dir)
                     if entry.is_dir() and not entry.name.startswith("."))
    files, labels = [], []
    for index, name in enumerate(classes):
        for entry in sorted(os.scandir(os.path.join(args.dir, name)), key=lambda e: e.name):
            if entry.is_file() and not entry.name.startswith("."):
                files.append(entry.path)
                labels.append(index)
    model = keras.applications.Xception(
        weights=None, input_shape=(args.size, args.size, 3), classes=len(classes),
        classifier_activation=None,
    )
    loaded = load_timm_weights_into_keras(model, args.weights) if args.weights else 0
    forward = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, args.size, args.size, 3], tf.float32)],
        jit_compile=False,
    )
    forward(tf.zeros([args.batch, args.size, args.size, 3]))  # trace once, untimed

    def load(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.image.central_crop(image, args.crop_pct)
        image = tf.image.resize(image, [args.size, args.size], method="bilinear", antialias=True)
        return image / 127.5 - 1.0, label

    options = tf.data.Options()
    options.threading.private_threadpool_size = args.threads
    options.threading.max_intra_op_parallelism = 1
    dataset = (
        tf.data.Dataset.from_tensor_slices((files, labels))
        .map(load, num_parallel_calls=args.threads, deterministic=True)
        .batch(args.batch)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    images = top1 = top5 = 0
    started = time.perf_counter()
    for x, y in dataset:
        logits = forward(x).numpy()
        y = y.numpy()
        ranked = np.argsort(-logits, axis=1)[:, :5]
        top1 += int((ranked[:, 0] == y).sum())
        top5 += int((ranked == y[:, None]).any(axis=1).sum())
        images += len(y)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}",
        "weights": args.weights or "random",
        "tensors_loaded": loaded,
        "classes": len(classes),
        "images": images,
        "top1": 100.0 * top1 / images,
        "top5": 100.0 * top5 / images,
        "seconds": seconds,
        "images_per_second": images / seconds,
        "threads": args.threads,
        "batch": args.batch,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    keras_args = sub.add_parser("keras", help="Keras Xception over a tf.data pipeline")
    keras_args.add_argument("dir")
    keras_args.add_argument("--weights", help="xception export --format safetensors file")
    keras_args.add_argument("--threads", type=int, default=2)
    keras_args.add_argument("--batch", type=int, default=32)
    keras_args.add_argument("--size", type=int, default=299)
    keras_args.add_argument("--crop-pct", type=float, default=0.875)
    measure_args = sub.add_parser("measure", help="wall time and peak memory of a command")
    measure_args.add_argument("--out", required=True)
    measure_args.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.action == "keras":
        keras_eval(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
