#!/usr/bin/env python3
"""The torchvision reference for `xception bench`'s data pipeline, on the same files.

    xception bench --photos-out /tmp/photos            # writes 256 photo-like 500x375 JPEGs
    python3 scripts/bench_torchvision_pipeline.py /tmp/photos [--size 299] [--repeats 3]
        [--transform train|eval]

Measures read + PIL decode + the transform + ToTensor + Normalize(0.5, 0.5) (= x / 127.5 - 1),
collated into batches of 32. The transform is training's RandomResizedCrop (Inception's area
range 0.05-1, aspect 3/4-4/3) + horizontal flip, or evaluation's central 87.5% of each side
(TensorFlow's `central_crop`, as `xception eval` crops) resized to size x size: once in the main process, once with a DataLoader of 2 worker processes. Prints the
median images/s of the timed passes after one warm-up pass. Needs torch, torchvision, Pillow.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import functional


class CentralCrop:
    """TensorFlow's central_crop of `fraction` of each side, then a resize to size x size."""

    def __init__(self, size, fraction=0.875):
        self.size, self.fraction = size, fraction

    def __call__(self, image):
        width, height = image.size
        left = int((width - width * self.fraction) // 2)
        top = int((height - height * self.fraction) // 2)
        return functional.resized_crop(image, top, left, height - 2 * top, width - 2 * left,
                                       [self.size, self.size], antialias=True)


class Files(Dataset):
    def __init__(self, files, transform):
        self.files = files
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with open(self.files[index], "rb") as f:
            image = Image.open(f).convert("RGB")
        return self.transform(image), 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--transform", choices=["train", "eval"], default="train")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted(p for p in args.dir.iterdir() if p.is_file())
    if args.transform == "train":
        crop = [transforms.RandomResizedCrop(args.size, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)),
                transforms.RandomHorizontalFlip()]
    else:
        crop = [CentralCrop(args.size)]
    transform = transforms.Compose(
        crop + [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    results = []
    for workers in args.workers:
        loader = DataLoader(Files(files, transform), batch_size=32, shuffle=True,
                            num_workers=workers, persistent_workers=workers > 0)
        passes = []
        for epoch in range(args.repeats + 1):
            started = time.perf_counter()
            images = sum(batch.shape[0] for batch, _ in loader)
            if epoch > 0:
                passes.append(images / (time.perf_counter() - started))
        label = "1 process" if workers == 0 else f"{workers} workers"
        results.append({"workers": workers, "images_per_second": statistics.median(passes),
                        "passes": passes})
        print(f"torchvision {label}: {statistics.median(passes):.1f} images/s")
    print(json.dumps({"files": len(files), "results": results}))


if __name__ == "__main__":
    main()
