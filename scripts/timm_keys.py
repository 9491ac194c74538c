#!/usr/bin/env python3
"""Writes a timm model's state-dict keys and shapes, the fixtures that the model crate's tests
compare our export names against.

    python scripts/timm_keys.py legacy_xception crates/model/tests/fixtures/timm_legacy_xception_keys.txt
    python scripts/timm_keys.py inception_v3 crates/model/tests/fixtures/timm_inception_v3_keys.txt --aux
"""
import sys

import timm

name, out_path = sys.argv[1], sys.argv[2]
kwargs = {"aux_logits": True} if "--aux" in sys.argv[3:] else {}
model = timm.create_model(name, pretrained=False, num_classes=1000, **kwargs)
arguments = "".join(f", {k}={v}" for k, v in kwargs.items())
with open(out_path, "w") as out:
    out.write(
        f"# timm {timm.__version__} {name}(num_classes=1000{arguments}).state_dict(): "
        "key, shape (scripts/timm_keys.py)\n"
    )
    for key, value in model.state_dict().items():
        shape = "x".join(map(str, value.shape)) or "scalar"
        out.write(f"{key} {shape}\n")
