#!/usr/bin/env python3
"""Reference outputs of Keras' Xception and InceptionV3 for the parity tests
(crates/model/tests/parity.rs).

Every weight is set by a formula of its Keras name and flat index (the Rust test computes the
same values), so no weights file is committed: only the logits for a formula-made input and a
sample of the weights after one SGD step, computed in float64 (Keras' own float32 step is
recorded as a measure of float32 noise). Run with TensorFlow/Keras 3 installed:

    python scripts/make_parity_fixtures.py crates/model/tests/fixtures/keras_parity.json
    python scripts/make_parity_fixtures.py crates/model/tests/fixtures/keras_parity_inception_v3.json inception_v3

Unnamed layers (Xception's four residual convolutions and their BatchNorms, every layer of
InceptionV3) are named by order, `conv2d`, `conv2d_1`, ... as a fresh session names them.
"""
import json
import math
import sys

import numpy as np
import keras
import tensorflow as tf

# Per architecture: the Keras constructor and the input side (Xception's smallest; for
# InceptionV3 a size whose maps are 15, 7 and 3 wide in its three grids, borders and insides).
ARCHITECTURES = {
    "xception": (keras.applications.Xception, 71),
    "inception_v3": (keras.applications.InceptionV3, 139),
}
ARCH = sys.argv[2] if len(sys.argv) > 2 else "xception"
BUILD, SIZE = ARCHITECTURES[ARCH]
CLASSES, BATCH = 5, 2
# BatchNorm's moving variance, centre and spread: InceptionV3 has no BatchNorm scale, and with
# Xception's values its 20-odd layers in a row would shrink every image to the same logits.
VARIANCE = {"xception": (1.5, 0.5), "inception_v3": (0.6, 0.1)}[ARCH]
LABELS = [1, 3]
LR, MOMENTUM = 0.045, 0.9


def fnv1a(text):
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


MASK = (1 << 64) - 1


def splitmix64(x):
    """Bit-exact in Python integers and in Rust's wrapping u64 arithmetic."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def uniform(name, n):
    """n values in [-1, 1), 24 random bits each: exact in f32 on both sides."""
    key = fnv1a(name) << 32
    bits = np.array([splitmix64(key + i) >> 40 for i in range(n)], dtype=np.float64)
    return bits / float(1 << 23) - 1.0


def formula(name, shape):
    """Keep in sync with `formula` in crates/model/tests/parity.rs."""
    n = int(np.prod(shape))
    noise = uniform(name, n)
    weight = name.split("/")[-1]
    if weight == "kernel" and len(shape) == 4:  # [kh, kw, in, out]
        values = noise * math.sqrt(4.0 / (shape[0] * shape[1] * shape[2]))
    elif weight == "depthwise_kernel":  # [kh, kw, c, 1]
        values = noise * math.sqrt(4.0 / (shape[0] * shape[1]))
    elif weight == "pointwise_kernel":  # [1, 1, in, out]
        values = noise * math.sqrt(4.0 / shape[2])
    elif weight == "kernel":  # dense [in, out]
        values = noise * math.sqrt(3.0 / shape[0])
    elif weight == "gamma":
        values = 1.0 + 0.2 * noise
    elif weight in ("beta", "moving_mean", "bias"):
        values = 0.1 * noise
    elif weight == "moving_variance":
        values = VARIANCE[0] + VARIANCE[1] * noise
    else:
        raise ValueError(name)
    return values.astype(np.float32).reshape(shape)


def inputs():
    """[BATCH, SIZE, SIZE, 3] in [-1, 1]; keep in sync with parity.rs."""
    n, h, w, c = np.meshgrid(
        np.arange(BATCH), np.arange(SIZE), np.arange(SIZE), np.arange(3), indexing="ij"
    )
    return np.sin((0.05 + 0.11 * n) * h + (0.09 - 0.04 * n) * w + 1.7 * c + n).astype(np.float32)


def creation_number(name, base):
    """The number Keras appended to an unnamed layer (`conv2d_7` -> 7, `conv2d` -> 0), which
    counts layers in creation order; None for other layers."""
    if name == base:
        return 0
    rest = name[len(base) + 1 :] if name.startswith(base + "_") else ""
    return int(rest) if rest.isdigit() else None


def canonical_names(model):
    """`layer/weight` for every weight, unnamed layers renamed by creation order (`model.layers`
    is in graph order, which interleaves InceptionV3's branches differently)."""
    rename, names = {}, []
    for base in ("conv2d", "batch_normalization"):
        numbered = [
            (creation_number(layer.name, base), layer.name)
            for layer in model.layers
            if creation_number(layer.name, base) is not None
        ]
        for index, (_, name) in enumerate(sorted(numbered)):
            rename[name] = base if index == 0 else f"{base}_{index}"
    for layer in model.layers:
        for weight in layer.weights:
            short = weight.path.split("/")[-1] if hasattr(weight, "path") else weight.name
            short = short.split(":")[0]
            names.append((f"{rename.get(layer.name, layer.name)}/{short}", weight))
    return names


def run(floatx):
    """Logits, training-mode logits and loss, and sampled weights after one SGD step."""
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(floatx)
    dtype = np.float32 if floatx == "float32" else np.float64
    keras.utils.set_random_seed(0)
    model = BUILD(
        include_top=True,
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        classes=CLASSES,
        classifier_activation=None,
    )
    weights = canonical_names(model)
    for name, weight in weights:
        weight.assign(formula(name, tuple(weight.shape)).astype(dtype))
    x = inputs().astype(dtype)
    logits = model(x, training=False).numpy()

    optimizer = keras.optimizers.SGD(learning_rate=LR, momentum=MOMENTUM)
    labels = np.array(LABELS)
    with tf.GradientTape() as tape:
        train_logits = model(x, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, train_logits, from_logits=True)
        )
    trainable = model.trainable_variables
    grads = tape.gradient(loss, trainable)
    optimizer.apply_gradients(zip(grads, trainable))

    updated = {}
    for name, weight in weights:
        flat = np.asarray(weight.numpy(), dtype=np.float64).reshape(-1)
        n = flat.size
        picks = sorted({0, n // 3, (2 * n) // 3, n - 1})
        updated[name] = {
            "shape": list(weight.shape),
            "indices": picks,
            "values": [float(flat[i]) for i in picks],
        }
    return logits, train_logits.numpy(), float(loss.numpy()), updated


def main(out):
    logits, train_logits, loss, updated32 = run("float32")
    logits64, _, loss64, updated64 = run("float64")
    # How far Keras' own float32 step is from the float64 one: the noise floor of any float32
    # implementation (BatchNorm's training-mode backward on small batches loses precision).
    f32_error = max(
        abs(a - b)
        for name in updated64
        for a, b in zip(updated32[name]["values"], updated64[name]["values"])
    )
    fixture = {
        "about": f"Keras {BUILD.__name__} with formula weights; see scripts/make_parity_fixtures.py",
        "arch": ARCH,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "size": SIZE,
        "classes": CLASSES,
        "labels": LABELS,
        "lr": LR,
        "momentum": MOMENTUM,
        "logits": logits.tolist(),
        "logits_float64": logits64.tolist(),
        "train_logits": train_logits.tolist(),
        "train_loss": loss,
        "train_loss_float64": loss64,
        "after_one_step": updated64,
        "keras_float32_step_max_error": f32_error,
    }
    with open(out, "w") as f:
        json.dump(fixture, f, indent=1)
    print(f"wrote {out}: logits {logits.round(4).tolist()}, loss {loss:.6f}")
    print(f"Keras float32 step vs float64: max difference {f32_error:.3e}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "keras_parity.json")
