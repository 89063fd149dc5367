"""`jaxvna features`: a pretrained backbone's features of every image of a dataset, once.

  jaxvna features --config=configs/vna_cowley_v4.py --backbone=resnet50 \
      --weights=resnet50.pth --layer=layer3 --pool=2 --out_dir=v4_resnet50_layer3
  jaxvna train --config=configs/vna_features.py:v4_resnet50_layer3 --workdir=W

`run(config, ...)` reads the configured dataset (`config.data`, as `jaxvna train` would),
computes the `layer` stage of the backbone for every image of every recording
(`extract.extract`: batched, sharded over the devices, with a progress bar), and writes
each recording with its features as `out_dir/<recording>.npz` (the `read_npz` format,
field `image_features` (N, F) float32 beside the images, responses, split and stimulus
ids, so every method and baseline still finds the pixels) and `out_dir/features.json`
(what was computed: backbone, weights file and its size, layer, pooling, input size,
feature width, recordings, the TFDS copy's folder, provenance). With `prepare_dir` it
also builds the TFDS (ArrayRecord) copy of those files there
(`tfds_builders.prepare("npz", ...)`).

`configs/vna_features.py:<out_dir>` trains VNA (and, with --config.method, a baseline)
on the files, the image tower being the `features` head (an MLP on image_features): the
backbone frozen, LiT-style.

Files already in `out_dir` are replaced only if `jaxvna features` (or `write_npz`) wrote
them; anything else there is refused before any feature is computed.
"""

from __future__ import annotations

import pathlib
import time

from jaxvna import files
from jaxvna.data import readers
from jaxvna.errors import NonFiniteError, RefusedPathError

MANIFEST = "features.json"
_MARK = "jaxvna_features"  # the manifest's first key: marks it as ours


def _manifest_is_ours(path: pathlib.Path) -> bool:
  import json  # noqa: PLC0415
  try:
    return _MARK in json.loads(path.read_text())
  except (OSError, ValueError):
    return False


def run(config, *, backbone: str, weights: str, layer: str, pool: str, out_dir: str,
        input_size: int | None = None, batch_size: int = 64,
        prepare_dir: str | None = None) -> dict:
  """Computes and writes the features (see the module doc); returns the manifest."""
  import dataclasses  # noqa: PLC0415

  import numpy as np  # noqa: PLC0415
  from tqdm import auto as tqdm  # noqa: PLC0415

  from jaxvna.models import backbones, towers  # noqa: PLC0415
  from jaxvna.models.backbones import extract  # noqa: PLC0415
  from jaxvna.training import provenance, train  # noqa: PLC0415

  started = time.time()
  net = backbones.load(backbone, weights, image_size=input_size, seed=config.seed)
  backbones.check_stage(net, layer)
  pool = towers.parse_pool(pool)
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise RefusedPathError(f"{out}: is {files.describe(out)}; expected a folder for the "
                           "feature files")
  dataset = train.load_dataset(config)
  targets = [out / f"{rec.name}.npz" for rec in dataset.recordings]
  for path in targets:  # before anything is computed
    files.check_replaceable(path, is_ours=readers.written_by_write_npz,
                            what="an .npz archive written by jaxvna")
  files.check_replaceable(out / MANIFEST, is_ours=_manifest_is_ours,
                          what="a features.json written by jaxvna features")
  out.mkdir(parents=True, exist_ok=True)

  total = sum(rec.num_images for rec in dataset.recordings)
  widths = set()
  with tqdm.tqdm(total=total, desc=f"{net.name} {layer}", unit="image") as bar:
    for rec, path in zip(dataset.recordings, targets):
      feats = extract.extract(net, rec.images, stage=layer, pool=pool,
                              batch_size=batch_size, progress=bar)
      if not np.isfinite(feats).all():
        raise NonFiniteError(f"{weights}: {net.name} {layer} gives non-finite features "
                             f"for recording {rec.name!r}; is the weights file damaged?")
      widths.add(feats.shape[1])
      readers.write_npz(dataclasses.replace(rec, image_features=feats), path)
  manifest = {
      _MARK: 1,
      "backbone": net.name, "backbone_spec": backbone,
      "weights": None if weights == backbones.RANDOM else str(pathlib.Path(weights).name),
      "weights_bytes": None if weights == backbones.RANDOM else pathlib.Path(weights).stat().st_size,
      "random_weights": weights == backbones.RANDOM,
      "layer": layer, "pool": pool, "input_size": input_size, "feature_dim": widths.pop(),
      "files": [p.name for p in targets],
      "recordings": {rec.name: rec.num_images for rec in dataset.recordings},
      "provenance": provenance.record(config, dataset, started=started),
  }
  if prepare_dir:
    from jaxvna.data import tfds_builders  # noqa: PLC0415
    manifest["prepared_dir"] = str(tfds_builders.prepare(
        "npz", prepare_dir, reader_kwargs={"paths": [str(p) for p in targets]}))
  files.write_json(out / MANIFEST, manifest, is_ours=_manifest_is_ours,
                   what="a features.json written by jaxvna features")
  return manifest
