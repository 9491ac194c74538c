#!/usr/bin/env python3
"""Keras -> xception -> timm for Inception V3, checked end to end on one set of weights:

1. Keras builds InceptionV3 (7 classes, random weights and BatchNorm statistics) and saves it
   in both of its file layouts (Keras 2 `.h5`, Keras 3 `.weights.h5`), with its logits for a
   random batch.
2. Each file goes through scripts/keras_h5_to_safetensors.py, `xception import --from keras`
   and `xception export --format safetensors` (timm's names).
3. timm loads the export with strict=True; its logits are compared with Keras', once as
   published and once with its 3x3 average pools leaving the padding out, as TensorFlow's do.

    python scripts/check_inception_v3_interop.py target/release/xception WORK_DIR

Needs keras + tensorflow, torch, timm, h5py and safetensors. TensorFlow and torch do not load
into one process here (both bring LLVM), so the Keras side runs in a child process.
"""
import os
import subprocess
import sys

import numpy as np


def keras_side(work):
    import keras

    keras.utils.set_random_seed(1)
    model = keras.applications.InceptionV3(weights=None, classes=7, classifier_activation=None)
    rng = np.random.default_rng(0)
    statistics = {
        "moving_mean": lambda shape: rng.normal(0, 0.1, shape),
        "moving_variance": lambda shape: rng.uniform(0.5, 1.5, shape),
        "beta": lambda shape: rng.normal(0, 0.1, shape),
    }
    for layer in model.layers:
        for weight in layer.weights:
            make = statistics.get(weight.path.split("/")[-1])
            if make and layer.__class__.__name__ == "BatchNormalization":
                weight.assign(make(weight.shape).astype("float32"))
    model.save_weights(os.path.join(work, "keras3.weights.h5"))
    model.save(os.path.join(work, "keras2.h5"))
    x = rng.uniform(-1, 1, (2, 299, 299, 3)).astype("float32")
    np.save(os.path.join(work, "x.npy"), x)
    np.save(os.path.join(work, "keras_logits.npy"), model(x, training=False).numpy())


def through_xception(binary, work, name):
    run = lambda *args: subprocess.run(args, check=True, capture_output=True, text=True)
    source = os.path.join(work, name)
    converter = os.path.join(os.path.dirname(__file__), "keras_h5_to_safetensors.py")
    run(sys.executable, converter, source, source + ".safetensors")
    run(binary, "import", "--from", "keras", source + ".safetensors", "--out", source + ".bpk")
    out = source + ".timm.safetensors"
    run(binary, "export", source + ".bpk", "--format", "safetensors", "--out", out)
    return out


def timm_logits(path, x, exclude_padding):
    import timm
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    model = timm.create_model("inception_v3", pretrained=False, num_classes=7)
    model.load_state_dict(load_file(path), strict=True)
    model.eval()
    published = F.avg_pool2d

    def tensorflow_pool(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
        return published(input, kernel_size, stride, padding, ceil_mode, False, divisor_override)

    F.avg_pool2d = tensorflow_pool if exclude_padding else published
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    finally:
        F.avg_pool2d = published


def main(binary, work):
    os.makedirs(work, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--keras-side", work], check=True)
    x = np.load(os.path.join(work, "x.npy"))
    keras_logits = np.load(os.path.join(work, "keras_logits.npy"))
    for name in ("keras2.h5", "keras3.weights.h5"):
        exported = through_xception(binary, work, name)
        for exclude, label in ((False, "as published"), (True, "pools without padding")):
            error = np.abs(timm_logits(exported, x, exclude) - keras_logits).max()
            print(f"{name}: timm inception_v3 (strict load, {label}) vs Keras: max |logit diff| {error:.3e}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    if sys.argv[1] == "--keras-side":
        keras_side(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
