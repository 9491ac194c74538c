#!/usr/bin/env python3
"""Reference training-step throughput for `xception bench --target train`: Keras/TensorFlow
and PyTorch/timm on the same shapes (the paper's Xception or its baseline Inception V3, 1000
classes, SGD momentum 0.9, weight decay 1e-5, forward + backward + update), median of timed
steps after warm-up, and the process's peak resident memory.

    python scripts/bench_reference.py keras --batch 8 --size 299 [--arch inception_v3] [--inference]
    python scripts/bench_reference.py torch --batch 8 --size 299 [--channels-last] [--device cuda] [--inference]

With --inference: forward passes in inference mode instead (Keras `model(x, training=False)`
in a tf.function; PyTorch `eval()` under `inference_mode`), as `xception bench --target
inference` measures, with the median and 95th-percentile latency of the timed passes.

Prints one JSON line. Run each framework in its own process (memory is per process).
"""
import argparse
import json
import math
import resource
import statistics
import time

import numpy as np


# Per architecture: Keras' constructor name, timm's model and its dropout (the paper's 0.5 for
# Xception; Keras' InceptionV3 has none).
ARCHITECTURES = {
    "xception": ("Xception", "legacy_xception", 0.5),
    "inception_v3": ("InceptionV3", "inception_v3", 0.0),
}


def keras_step(arch, batch, size, inference=False):
    import keras
    import tensorflow as tf

    build = getattr(keras.applications, ARCHITECTURES[arch][0])
    model = build(weights=None, input_shape=(size, size, 3), classes=1000)
    if inference:
        x = tf.random.uniform((batch, size, size, 3), -1.0, 1.0)
        forward = tf.function(lambda: model(x, training=False), jit_compile=False)
        name = f"keras {keras.__version__} / tensorflow {tf.__version__}, inference"
        return lambda: float(tf.reduce_sum(forward()).numpy()), name
    optimizer = keras.optimizers.SGD(learning_rate=0.045, momentum=0.9, weight_decay=1e-5)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    x = tf.random.uniform((batch, size, size, 3), -1.0, 1.0)
    y = tf.constant(np.arange(batch) * 37 % 1000)

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return lambda: float(step().numpy()), f"keras {keras.__version__} / tensorflow {tf.__version__}"


def torch_step(arch, batch, size, channels_last, device, inference=False):
    import timm
    import torch

    _, name, drop_rate = ARCHITECTURES[arch]
    model = timm.create_model(name, num_classes=1000, drop_rate=drop_rate).to(device)
    if inference:
        model.eval()
        x = (torch.rand(batch, 3, size, size) * 2 - 1).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)

        def forward():
            with torch.inference_mode():
                return float(model(x).sum())  # waits for the device

        layout = "channels_last" if channels_last else "NCHW"
        where = f"{torch.get_num_threads()} threads" if device == "cpu" else device
        return forward, f"pytorch {torch.__version__} / timm {timm.__version__}, {layout}, {where}, inference"
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.045, momentum=0.9, weight_decay=1e-5)
    x = (torch.rand(batch, 3, size, size) * 2 - 1).to(device)
    y = (torch.arange(batch) * 37 % 1000).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss)  # waits for the device

    layout = "channels_last" if channels_last else "NCHW"
    if device == "cuda":
        where = torch.cuda.get_device_name(0)
    else:
        where = f"{torch.get_num_threads()} threads"
    return step, f"pytorch {torch.__version__} / timm {timm.__version__}, {layout}, {where}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=["keras", "torch"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cpu", help="torch only: cpu or cuda")
    parser.add_argument("--arch", default="xception", choices=sorted(ARCHITECTURES))
    parser.add_argument("--inference", action="store_true", help="forward passes only")
    args = parser.parse_args()
    if args.framework == "keras":
        step, name = keras_step(args.arch, args.batch, args.size, args.inference)
    else:
        step, name = torch_step(
            args.arch, args.batch, args.size, args.channels_last, args.device, args.inference
        )
    for _ in range(args.warmup):
        step()
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    result = {
        "framework": name,
        "arch": args.arch,
        "batch": args.batch,
        "size": args.size,
        "images_per_second": args.batch / statistics.median(seconds),
        "p50_ms": 1e3 * sorted(seconds)[max(math.ceil(0.50 * len(seconds)), 1) - 1],
        "p95_ms": 1e3 * sorted(seconds)[max(math.ceil(0.95 * len(seconds)), 1) - 1],
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.framework == "torch" and args.device == "cuda":
        import torch

        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    main()
