"""A toy dataset for the input pipeline tests: three recordings of different sizes, repeat
counts and neuron counts, stimulus ids unique across recordings."""

import numpy as np

from jaxvna.data.dataset import Dataset, Recording

# (name, images, repeats, neurons): different sizes, repeat counts and neuron counts.
LAYOUT = (("a", 40, 3, 4), ("b", 16, 1, 7), ("c", 24, 2, 5))
K_MAX, R_MAX = 7, 3


def make_recording(rng, index, name, n, r, k):
  responses = rng.normal(size=(n, r, k)).astype(np.float32)
  if r > 1:  # some images lack their last repeats (NaN-padded whole repeats)
    responses[: n // 2, r - 1] = np.nan
  return Recording(
      name=name, images=rng.integers(0, 256, (n, 5, 4, 1), dtype=np.uint8),
      responses=responses, neuron_coords=rng.normal(size=(k, 2)).astype(np.float32),
      split=np.array([0, 0, 1, 0, 2, 0, 0, 0][: 8] * (n // 8), np.int8),
      # ids unique across recordings, so an example's id tells its recording
      stimulus_ids=np.arange(n, dtype=np.int64) * 3 + index + 10)


def make_dataset(seed=0, layout=LAYOUT):
  rng = np.random.default_rng(seed)
  return Dataset("toy", tuple(make_recording(rng, i, *spec) for i, spec in enumerate(layout)))


def owner(dataset, stimulus_id):
  """(subject, image index) of a stimulus id (ids are unique across recordings here)."""
  for s, rec in enumerate(dataset.recordings):
    hits = np.flatnonzero(rec.stimulus_ids == stimulus_id)
    if len(hits):
      return s, int(hits[0])
  raise AssertionError(f"unknown stimulus id {stimulus_id}")


def vna_demo_run(config, workdir):
  """`jaxvna demo` of `config` with VNA as its only method (workdir/vna is a `jaxvna
  train` run; workdir holds results.json and demo.png); returns workdir."""
  import pytest  # pylint: disable=g-import-not-at-top
  from jaxvna import registry  # pylint: disable=g-import-not-at-top
  from jaxvna.commands import demo  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(registry, "in_demo", lambda: [registry.get("vna")])
    demo.run(config, workdir)
  return workdir


def features_folder(folder, num_features=6, seed=0):
  """`folder` holding the toy recordings as `jaxvna features` writes them (one .npz each,
  with image_features), for configs/vna_features.py."""
  import dataclasses
  from jaxvna.data import readers
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for rec in make_dataset(seed).recordings:
    feats = rng.normal(size=(rec.num_images, num_features)).astype(np.float32)
    readers.write_npz(dataclasses.replace(rec, image_features=feats), folder / f"{rec.name}.npz")
  return folder
