#!/usr/bin/env python3
"""Converts Keras' Xception or InceptionV3 weights (.h5, the format of Keras' published
ImageNet weights, e.g. xception_weights_tf_dim_ordering_tf_kernels.h5 or
inception_v3_weights_tf_dim_ordering_tf_kernels.h5, or Keras 3's .weights.h5) into a
safetensors file with the same Keras names and layouts, which `xception import --from keras`
reads:

    pip install h5py numpy safetensors
    python scripts/keras_h5_to_safetensors.py xception_weights_tf_dim_ordering_tf_kernels.h5 keras.safetensors
    xception import --from keras keras.safetensors --out xception-imagenet.bpk

Only names are copied, values untouched: the renaming to Burn's layout happens in Rust
(crates/model/src/interop.rs), where it is tested. Reads the Keras 2 `.h5` layout
(`layer_names` / `weight_names` attributes: the published weights) with h5py alone; Keras 3's
`.weights.h5` keeps no layer names, so for those Keras itself is needed to read them.
"""
import sys

import h5py
import numpy as np
from safetensors.numpy import save_file


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def keras2(f):
    tensors = {}
    root = f["model_weights"] if "model_weights" in f else f
    for layer in root.attrs["layer_names"]:
        group = root[text(layer)]
        for name in group.attrs.get("weight_names", []):
            name = text(name)
            tensors[name] = np.asarray(group[name], dtype=np.float32)
    return tensors


def keras3(source):
    """Keras 3's `.weights.h5` names variables by class (`conv2d_7/vars/0`), not by layer:
    load it into Keras' own model (Xception, whose layers are named `block1_conv1` ..., or
    InceptionV3, whose layers are all unnamed) and read the names from there (needs keras)."""
    import keras

    with h5py.File(source, "r") as f:
        classes = next(
            np.asarray(group["vars"]["1"]).shape[0]
            for name, group in f["layers"].items()
            if name.startswith("dense") and "vars" in group
        )
        xception = any(name.startswith("block1_conv1") for name in f["layers"])
    build = keras.applications.Xception if xception else keras.applications.InceptionV3
    model = build(weights=None, classes=classes, classifier_activation=None)
    model.load_weights(source)
    tensors = {}
    for layer in model.layers:
        for weight in layer.weights:
            short = weight.path.split("/")[-1]
            tensors[f"{layer.name}/{short}"] = np.asarray(weight.numpy(), dtype=np.float32)
    return tensors


def main(source, out):
    with h5py.File(source, "r") as f:
        modern = "layers" in f and "layer_names" not in f.attrs
        tensors = None if modern else keras2(f)
    if modern:
        tensors = keras3(source)
    save_file(tensors, out, metadata={"converted_from": source})
    print(f"wrote {len(tensors)} tensors to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
