"""VNA on a pretrained backbone's features: the files that `jaxvna features` wrote.

  jaxvna features --config=configs/vna_cowley_v4.py --backbone=resnet50 \
      --weights=resnet50.pth --layer=layer3 --pool=2 --out_dir=v4_resnet50_layer3
  jaxvna train --config=configs/vna_features.py:v4_resnet50_layer3 --workdir=W
  jaxvna train --config=configs/vna_features.py:v4_resnet50_layer3,tiny --workdir=W

The argument is the folder of .npz files (one per recording, with the field
`image_features`), optionally followed by ",tiny" (vna_sim.py's tiny towers and steps).
The image tower is the `features` head, an MLP on the frozen backbone's features (LiT's
locked image tower); the neural tower, loss and training are those of
configs/vna_cowley_v4.py (600 steps of 256 single trials). Each file keeps its split, so
the test images are those of the run that wrote it. `--config.method=direct_encoding`
(or direct_decoding) trains a baseline on the same features; the direct decoder and the
Gabor-energy ridge reference still read the pixels, which the files keep.
"""

import pathlib

import ml_collections

from jaxvna.configs import common, split_tiny, vna_sim


def get_config(arg: str | None = None):
  folder, tiny = split_tiny(arg)
  if not folder:
    raise ValueError("vna_features: pass the folder that `jaxvna features` wrote, "
                     "--config=configs/vna_features.py:FOLDER")
  paths = sorted(str(p) for p in pathlib.Path(folder).glob("*.npz"))
  if not paths:
    raise ValueError(f"vna_features: {folder} holds no .npz files; write them with "
                     "`jaxvna features --out_dir={folder}`")
  c = vna_sim.get_config("tiny" if tiny else "vna")
  c.data.kind = "npz"
  c.data.kwargs = ml_collections.ConfigDict(dict(paths=tuple(paths)))
  c.model.image_tower = common.image_tower("features", hidden=(64,) if tiny else (512,))
  if not tiny:
    c.eval.n_ways = (2, 10, 50, "all")  # as configs/vna_cowley_v4.py
  return c
