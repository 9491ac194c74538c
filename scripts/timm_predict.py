#!/usr/bin/env python3
"""Loads an `xception export --format safetensors` file into timm (`legacy_xception` or
`inception_v3`, as its metadata says) and prints its top-5 on an image, to check the round
trip from Python:

    pip install timm safetensors pillow
    python scripts/timm_predict.py model.safetensors image.jpg

The file's metadata gives the classes, the input size and the crop. timm's legacy_xception
uses symmetric max-pool padding and BatchNorm epsilon 1e-5 where Keras (and this project)
use TensorFlow's 'same' padding and 1e-3, so its probabilities differ slightly from
`xception predict`'s on the same weights; the top classes normally agree. timm's
inception_v3 likewise averages its 3x3 pools over the padding too, where Keras leaves it out.
"""
import json
import sys

import numpy as np
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file


def preprocess(path, size, crop_pct):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    cw, ch = round(w * crop_pct), round(h * crop_pct)
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0)


def main(weights, image_path):
    with safe_open(weights, "pt") as f:
        metadata = f.metadata() or {}
    config = json.loads(metadata.get("xception.model", "{}"))
    classes = json.loads(metadata.get("xception.classes", "[]"))
    state = load_file(weights)
    num_classes = state["fc.bias"].shape[0]
    name = {"xception": "legacy_xception", "inception_v3": "inception_v3"}[
        config.get("arch", "xception")
    ]
    extra = {"aux_logits": True} if config.get("aux_logits") else {}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **extra)
    model.load_state_dict(state, strict=True)
    model.eval()
    size = config.get("input_size", 299)
    x = preprocess(image_path, size, 0.875)
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)[0]
    top = probabilities.topk(min(5, num_classes))
    print(f"{image_path} (timm {name}, strict load of {len(state)} tensors)")
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        name = classes[i]["name"] if i < len(classes) else f"class {i}"
        print(f"  {100 * p:6.2f}%  {name} (class {i})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
