"""The one in-memory structure every reader and the simulator produce.

A `Dataset` is a tuple of `Recording`s, one per subject or session. Each recording
keeps its own neurons; images may or may not be shared between recordings.

Shapes (per recording, N images, R repeats, K neurons):
  images        (N, H, W, C) uint8
  responses     (N, R, K) float32; repeats that were not recorded are NaN. Data that
                only exists trial-averaged has R == 1.
  neuron_coords (K, D) float32; cortical or array coordinates, or (K, 0) if unknown.
  split         (N,) int8 index into `SPLITS`.
  stimulus_ids  (N,) int64, unique within the recording; the same id in two recordings
                of one dataset means the same image.
  image_features (N, F) float32 or None: precomputed features of each image (e.g. of a
                frozen pretrained network) for the `features` image tower (LiT-style).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxvna.errors import UserError

SPLITS = ("train", "validation", "test")


class DataError(UserError, ValueError):
  """Bad input data; the message names the file (or field) and what was expected."""


def split_index(name: str, *, source: str = "split") -> int:
  """Returns the index of a split name, with a clear error for unknown names."""
  if name not in SPLITS:
    raise DataError(f"{source}: unknown split {name!r}; expected one of {SPLITS}")
  return SPLITS.index(name)


@dataclasses.dataclass(frozen=True, eq=False)
class Recording:
  """One subject or session: stimuli, responses and neuron metadata."""

  name: str
  images: np.ndarray
  responses: np.ndarray
  neuron_coords: np.ndarray
  split: np.ndarray
  stimulus_ids: np.ndarray
  source: str = ""  # file or folder it was read from, for error messages
  truth: Mapping[str, Any] | None = None  # simulator ground truth, else None
  image_features: np.ndarray | None = None  # (N, F) precomputed image features

  def __post_init__(self):
    validate_recording(self)

  @property
  def num_images(self) -> int:
    return self.images.shape[0]

  @property
  def num_neurons(self) -> int:
    return self.responses.shape[2]

  @property
  def num_repeats(self) -> np.ndarray:
    """(N,) number of recorded (non-NaN) repeats of each image."""
    return np.sum(~np.isnan(self.responses[..., 0]), axis=1) if self.num_neurons else (
        np.zeros(self.num_images, np.int64))

  @property
  def mean_responses(self) -> np.ndarray:
    """(N, K) responses averaged over the recorded repeats."""
    counts = np.maximum(self.num_repeats, 1)[:, None]
    return (np.nansum(self.responses, axis=1) / counts).astype(np.float32)

  def indices(self, split: str) -> np.ndarray:
    """Image indices of one split, in stored order."""
    return np.flatnonzero(self.split == split_index(split, source=f"{self.source or self.name}"))

  def subset(self, image_indices: np.ndarray) -> "Recording":
    """The same recording restricted to some images (truth is kept as is)."""
    idx = np.asarray(image_indices)
    features = None if self.image_features is None else self.image_features[idx]
    return dataclasses.replace(
        self, images=self.images[idx], responses=self.responses[idx],
        split=self.split[idx], stimulus_ids=self.stimulus_ids[idx], image_features=features)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A named collection of recordings (subjects/sessions)."""

  name: str
  recordings: tuple[Recording, ...]

  def __post_init__(self):
    if not self.recordings:
      raise DataError(f"dataset {self.name!r}: no recordings")
    names = [r.name for r in self.recordings]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
      raise DataError(f"dataset {self.name!r}: duplicate recording names {dupes}")
    feature_dims = {None if r.image_features is None else r.image_features.shape[1]
                    for r in self.recordings}
    if len(feature_dims) > 1:
      raise DataError(f"dataset {self.name!r}: recordings disagree on image_features "
                      f"(feature dimensions {sorted(map(str, feature_dims))}); give every "
                      "recording features of one dimension, or none")
    shapes = {r.images.shape[1:] for r in self.recordings}
    if len(shapes) > 1:
      raise DataError(f"dataset {self.name!r}: recordings have different image shapes "
                      f"{sorted(shapes)}; resize them to one shape first")

  def __getitem__(self, name: str) -> Recording:
    for r in self.recordings:
      if r.name == name:
        return r
    raise DataError(f"dataset {self.name!r}: unknown recording {name!r}; "
                    f"available: {[r.name for r in self.recordings]}")

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.recordings[0].images.shape[1:])

  @property
  def neuron_counts(self) -> tuple[int, ...]:
    return tuple(r.num_neurons for r in self.recordings)

  def select(self, names: Sequence[str]) -> "Dataset":
    """A dataset with only the named recordings, in the given order."""
    return Dataset(self.name, tuple(self[n] for n in names))


def validate_recording(rec: Recording) -> None:
  """Checks shapes, dtypes and values; raises DataError naming the source and field."""
  where = rec.source or rec.name

  def fail(field, msg):
    raise DataError(f"{where}: field '{field}': {msg}")

  def check_array(field, value, ndim, kinds):
    if not isinstance(value, np.ndarray):
      fail(field, f"expected a numpy array, got {type(value).__name__}")
    if value.ndim != ndim:
      fail(field, f"expected {ndim} dimensions, got shape {value.shape}")
    if value.dtype.kind not in kinds:
      fail(field, f"expected dtype kind in {kinds!r}, got {value.dtype}")

  check_array("images", rec.images, 4, "u")
  if rec.images.dtype != np.uint8:
    fail("images", f"expected uint8, got {rec.images.dtype}")
  check_array("responses", rec.responses, 3, "f")
  check_array("neuron_coords", rec.neuron_coords, 2, "f")
  check_array("split", rec.split, 1, "iu")
  check_array("stimulus_ids", rec.stimulus_ids, 1, "iu")
  n = rec.images.shape[0]
  if n == 0:
    fail("images", "no images")
  for field in ("responses", "split", "stimulus_ids"):
    if getattr(rec, field).shape[0] != n:
      fail(field, f"{getattr(rec, field).shape[0]} entries for {n} images "
                  "(image/response count mismatch)")
  k = rec.responses.shape[2]
  if k == 0:
    fail("responses", "zero neurons")
  if rec.neuron_coords.shape[0] != k:
    fail("neuron_coords", f"{rec.neuron_coords.shape[0]} rows for {k} neurons")
  resp = rec.responses
  if np.isinf(resp).any():
    fail("responses", f"{int(np.isinf(resp).sum())} infinite values")
  # NaN is only legal as padding of whole repeats: a (image, repeat) is either all
  # recorded or all NaN, and every image has at least one recorded repeat.
  nan = np.isnan(resp)
  partial = nan.any(axis=2) & ~nan.all(axis=2)
  if partial.any():
    i, r = np.argwhere(partial)[0]
    fail("responses", f"NaN in some but not all neurons of image {i}, repeat {r} "
                      f"({int(partial.sum())} such trials); NaN may only pad whole repeats")
  missing = nan.all(axis=(1, 2))
  if missing.any():
    fail("responses", f"image {int(np.argmax(missing))} has no recorded repeat "
                      f"({int(missing.sum())} images are all NaN)")
  if np.isnan(rec.neuron_coords).any() or np.isinf(rec.neuron_coords).any():
    fail("neuron_coords", "non-finite values")
  if rec.split.size and (rec.split.min() < 0 or rec.split.max() >= len(SPLITS)):
    fail("split", f"values must index {SPLITS}, got range [{rec.split.min()}, {rec.split.max()}]")
  if rec.image_features is not None:
    check_array("image_features", rec.image_features, 2, "f")
    if rec.image_features.shape[0] != n:
      fail("image_features", f"{rec.image_features.shape[0]} rows for {n} images")
    if not np.isfinite(rec.image_features).all():
      fail("image_features", "non-finite values")
  uniq, counts = np.unique(rec.stimulus_ids, return_counts=True)
  if (counts > 1).any():
    fail("stimulus_ids", f"duplicate ids {uniq[counts > 1][:5].tolist()}")


def summarize(ds: Dataset) -> str:
  """A human-readable table of subjects, neurons, images, repeats and splits."""
  h, w, c = ds.image_shape
  lines = [f"dataset {ds.name}: {len(ds.recordings)} recordings, images {h}x{w}x{c}",
           f"{'recording':<16}{'neurons':>8}{'images':>8}{'repeats':>12}"
           + "".join(f"{s:>12}" for s in SPLITS)]
  for r in ds.recordings:
    reps = r.num_repeats
    rep = f"{reps.min()}" if reps.min() == reps.max() else f"{reps.min()}-{reps.max()}"
    counts = [int(np.sum(r.split == i)) for i in range(len(SPLITS))]
    lines.append(f"{r.name:<16}{r.num_neurons:>8}{r.num_images:>8}{rep:>12}"
                 + "".join(f"{c:>12}" for c in counts))
  return "\n".join(lines)


def fingerprint(ds: Dataset) -> str:
  """sha256 (hex) of what a run learns from: every recording's name, images, responses
  (NaN padding included), split, stimulus ids and image features. Equal datasets give
  equal fingerprints on any machine; a changed value, split or order changes it."""
  import hashlib
  h = hashlib.sha256(ds.name.encode())
  for rec in ds.recordings:
    h.update(rec.name.encode())
    for array in (rec.images, rec.responses, rec.split, rec.stimulus_ids, rec.image_features):
      if array is None:
        h.update(b"none")
        continue
      array = np.ascontiguousarray(array)
      h.update(f"{array.dtype.str}{array.shape}".encode())
      h.update(array.data)
  return h.hexdigest()


def shuffle_training_pairs(ds: Dataset, seed: int) -> Dataset:
  """The null control's data: within every recording, the train-split responses permuted
  among the train-split images (a seeded permutation per recording); every other split,
  and the images, untouched.

  A model trained on it can learn nothing about which image evoked which response, so its
  held-out identification must sit at chance: above chance, something other than the
  image-response pairing (a leak) carries the signal.
  """
  rng = np.random.default_rng(seed)
  recordings = []
  for rec in ds.recordings:
    train = rec.indices("train")
    responses = rec.responses.copy()
    responses[train] = rec.responses[rng.permutation(train)]
    recordings.append(dataclasses.replace(rec, responses=responses))
  return Dataset(ds.name, tuple(recordings))
