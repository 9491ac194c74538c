#!/usr/bin/env python3
"""Writes timm's legacy_xception state-dict keys and shapes, the fixture that
crates/model/src/interop.rs's tests compare our export names against.

    python scripts/timm_keys.py crates/model/tests/fixtures/timm_legacy_xception_keys.txt
"""
import sys

import timm

model = timm.create_model("legacy_xception", pretrained=False, num_classes=1000)
with open(sys.argv[1], "w") as out:
    out.write(
        f"# timm {timm.__version__} legacy_xception(num_classes=1000).state_dict(): "
        "key, shape (scripts/timm_keys.py)\n"
    )
    for key, value in model.state_dict().items():
        shape = "x".join(map(str, value.shape)) or "scalar"
        out.write(f"{key} {shape}\n")
