#!/usr/bin/env python3
"""Regenerates the small fixtures of crates/data/tests/fixtures with Pillow.

    python3 scripts/make_data_fixtures.py   # needs Pillow (pip install pillow)

- cmyk.jpg: a 16x8 CMYK JPEG (ImageNet's train set holds 22 of these), cyan | yellow.
- resize_source.png: a 61x47 RGB pattern with sharp edges and gradients.
- resize_down.png: Pillow's antialiased bilinear resize of the box (5, 3, 56, 44) to 23x19.
- resize_up.png: Pillow's bilinear resize of the box (10, 8, 30, 24) to 37x29.
Pillow's BILINEAR filter widens with the scale when shrinking (antialiasing), as
TensorFlow's resize with antialias=True does; the Rust resampler must agree within one level.
"""
from pathlib import Path

from PIL import Image

out = Path(__file__).resolve().parent.parent / "crates" / "data" / "tests" / "fixtures"
out.mkdir(parents=True, exist_ok=True)

cmyk = Image.new("CMYK", (16, 8))
for y in range(8):
    for x in range(16):
        cmyk.putpixel((x, y), (255, 0, 0, 0) if x < 8 else (0, 0, 255, 0))
cmyk.save(out / "cmyk.jpg", quality=95)

src = Image.new("RGB", (61, 47))
for y in range(47):
    for x in range(61):
        checker = 255 if ((x // 4) + (y // 3)) % 2 else 0
        src.putpixel((x, y), (checker, (x * 255) // 60, (x * y * 7) % 256))
src.save(out / "resize_source.png")
src.resize((23, 19), Image.BILINEAR, box=(5, 3, 56, 44)).save(out / "resize_down.png")
src.resize((37, 29), Image.BILINEAR, box=(10, 8, 30, 24)).save(out / "resize_up.png")
print("wrote", sorted(p.name for p in out.iterdir()))
