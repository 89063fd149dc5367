"""Throughput of `jaxvna features`' computation: images per second of a backbone stage.

For each network (ResNet-18 and ResNet-50, random weights: the speed does not depend on
the values), `extract.extract` computes one stage, mean-pooled, of `--images` grey images
of 64 x 64 (V4's stored size) resized to `--size`, in steps of `--batch`, on all devices,
in both kernel forms (`towers.use_kernel_form`): "xla", plain XLA convolutions, which
`jaxvna features` uses, and "cpu", the im2col form that training uses on CPU. The rounds
alternate the forms; each form's first call compiles and is not timed. The ratio
cpu_time / xla_time is taken in the same run (above 1: the "xla" form is faster).

  python benchmarks/backbone_features.py --rounds 5 --images 96 \
      --out benchmarks/results/backbone_features.json

From the images/s, the time `jaxvna features` takes for all of V4 (10,240 images) follows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

NETWORKS = (("resnet18", "layer3"), ("resnet50", "layer3"))
FORMS = ("xla", "cpu")


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=64, help="images per timed round")
  parser.add_argument("--batch", type=int, default=16, help="images per step")
  parser.add_argument("--size", type=int, default=224, help="the backbone's input side")
  parser.add_argument("--rounds", type=int, default=3, help="timed rounds per form")
  parser.add_argument("--out", default=None, help="write the JSON result here")
  return parser.parse_args(argv)


def main(argv=None):
  args = _parse(argv)
  import jax

  from jaxvna.models import backbones
  from jaxvna.models.backbones import extract

  images = np.random.default_rng(0).integers(0, 256, (args.images, 64, 64, 1), np.uint8)
  results = []
  for name, stage in NETWORKS:
    net = backbones.load(name, backbones.RANDOM, image_size=args.size)
    times = {form: [] for form in FORMS}
    for form in FORMS:  # compile
      extract.extract(net, images[:args.batch], stage=stage, batch_size=args.batch,
                      kernel_form=form)
    for r in range(args.rounds):
      for form in (FORMS if r % 2 == 0 else FORMS[::-1]):
        start = time.perf_counter()
        extract.extract(net, images, stage=stage, batch_size=args.batch, kernel_form=form)
        times[form].append(time.perf_counter() - start)
    median = {form: statistics.median(t) for form, t in times.items()}
    row = {"backbone": name, "stage": stage, "input_size": args.size,
           "images_per_s": {form: args.images / median[form] for form in FORMS},
           "seconds": times, "cpu_over_xla": median["cpu"] / median["xla"]}
    row["v4_minutes_xla"] = 10_240 / row["images_per_s"]["xla"] / 60
    results.append(row)
    print(f"{name} {stage} at {args.size}px: {row['images_per_s']['xla']:.1f} images/s "
          f"(xla form), {row['images_per_s']['cpu']:.1f} (cpu form), cpu/xla time "
          f"{row['cpu_over_xla']:.2f}; all of V4: {row['v4_minutes_xla']:.1f} min")
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  out = {"benchmark": "backbone_features", "args": settings, "results": results,
         "devices": {"platform": jax.devices()[0].platform,
                     "kind": jax.devices()[0].device_kind, "count": jax.device_count()},
         "cpu_count": os.cpu_count(),
         "versions": {"python": platform.python_version(), "jax": jax.__version__}}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  main()
