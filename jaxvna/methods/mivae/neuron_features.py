"""Per-neuron identity features: what lets one model read subjects with different neurons.

A neural encoder that should embed a subject it never saw, without fine-tuning, cannot
learn a weight per neuron; it must compute each neuron's weight from something known
about that neuron. Two kinds of neuron features are offered:

- "tuning": a functional fingerprint, computed in closed form from the subject's own
  training data with no model involved: the Pearson correlation, over the subject's
  training images, between the neuron's trial-averaged log1p response and a FIXED bank of
  image descriptors (a coarse Gabor-energy pyramid, 1/2/4 cycles per image x 4
  orientations, and the mean luminance of a 4x4 grid). The bank is the same for every
  subject, so fingerprints are comparable across subjects even when they saw different
  images. Recordings without a train split cannot have one.
- "coords": the recording's `neuron_coords` (cortical or electrode positions), used as
  given. Only meaningful when positions share one frame across subjects.

`neuron_table` stacks the features of all subjects into padded arrays, with the
per-neuron standardisation of log1p responses the encoder applies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxvna import correlation
from jaxvna.data.dataset import DataError, Dataset, Recording

FEATURE_KINDS = ("tuning", "coords")
_TUNING_FREQUENCIES = (1.0, 2.0, 4.0)
_TUNING_ORIENTATIONS = 4
_LUMINANCE_GRID = 4


def image_descriptors(images: np.ndarray) -> np.ndarray:
  """(N, H, W, C) uint8 or [0, 1] float -> (N, 100) fixed descriptors of the tuning bank."""
  from jaxvna.models.gabor_ridge import gabor_energy_features
  energy = gabor_energy_features(images, spatial_frequencies=_TUNING_FREQUENCIES,
                                 orientations=_TUNING_ORIENTATIONS)
  x = np.asarray(images, np.float32)
  if np.asarray(images).dtype == np.uint8:
    x = x / 255.0
  grey = x.mean(axis=-1) if x.ndim == 4 else x
  n, h, w = grey.shape
  g = _LUMINANCE_GRID
  rows, cols = np.array_split(np.arange(h), g), np.array_split(np.arange(w), g)
  luminance = np.stack([grey[:, r][:, :, c].mean(axis=(1, 2)) for r in rows for c in cols], 1)
  return np.concatenate([energy, luminance], axis=1).astype(np.float32)


def tuning_fingerprints(rec: Recording, split: str = "train") -> np.ndarray:
  """(K, 100) float32 correlation of each neuron's mean log1p response with the descriptor
  bank, computed in float32."""
  idx = rec.indices(split)
  if idx.size < 3:
    raise DataError(f"recording {rec.name}: {idx.size} images in split {split!r}; tuning "
                    f"fingerprints need at least 3")
  responses = np.log1p(np.maximum(np.nan_to_num(rec.mean_responses[idx]), 0.0))
  return correlation.columns(responses.astype(np.float32, copy=False),
                             image_descriptors(rec.images[idx]))


def response_statistics(rec: Recording, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Per-neuron mean and std (K,) of log1p single-trial responses over a split (std >= 0.05)."""
  trials = np.log1p(np.maximum(rec.responses[rec.indices(split)], 0.0))
  trials = trials.reshape(-1, rec.num_neurons)  # NaN rows: repeats not recorded
  center = np.nanmean(trials, axis=0)
  scale = np.maximum(np.nanstd(trials, axis=0), 0.05)
  return center.astype(np.float32), scale.astype(np.float32)


def recording_features(rec: Recording, kinds: Sequence[str], split: str = "train") -> np.ndarray:
  """(K, F) neuron features of one recording: the `kinds` concatenated in order."""
  parts = []
  for kind in kinds:
    if kind == "tuning":
      parts.append(tuning_fingerprints(rec, split))
    elif kind == "coords":
      if rec.neuron_coords.shape[1] == 0:
        raise DataError(f"recording {rec.name}: field neuron_coords is empty (K, 0); the "
                        f"neuron feature kind 'coords' needs positions")
      parts.append(rec.neuron_coords.astype(np.float32))
    else:
      raise ValueError(f"neuron feature kind: unknown {kind!r}; expected one of {FEATURE_KINDS}")
  if not parts:
    raise ValueError("neuron features: at least one kind is needed")
  return np.concatenate(parts, axis=1)


def neuron_table(recordings: Sequence[Recording] | Dataset, kinds: Sequence[str], *,
                 k_max: int | None = None, features: Sequence[np.ndarray] | None = None,
                 split: str = "train") -> dict[str, np.ndarray]:
  """Padded per-subject neuron arrays for the miVAE neural encoder.

  Args:
    recordings: the subjects, in subject-index order.
    kinds: feature kinds (FEATURE_KINDS), concatenated.
    k_max: padded neuron axis (default: the largest neuron count).
    features: optional (K_s, F) features per recording, used instead of computing them
      (for users who bring their own); checked for shape and finiteness.
    split: the split the features and statistics are computed from.

  Returns:
    {"features": (S, K_max, F) float32 (zero on padding), "center", "scale": (S, K_max)
    float32 per-neuron standardisation of log1p responses (0 / 1 on padding),
    "mask": (S, K_max) bool}.
  """
  recs = list(recordings.recordings if isinstance(recordings, Dataset) else recordings)
  for rec in recs:
    if rec.num_neurons == 0:
      raise DataError(f"recording {rec.name}: field responses has zero neurons; miVAE needs "
                      f"at least one")
  if features is not None and len(features) != len(recs):
    raise DataError(f"neuron features: {len(features)} arrays for {len(recs)} recordings")
  per_rec = []
  for s, rec in enumerate(recs):
    f = recording_features(rec, kinds, split) if features is None else np.asarray(
        features[s], np.float32)
    if f.ndim != 2 or f.shape[0] != rec.num_neurons:
      raise DataError(f"recording {rec.name}: neuron features have shape {f.shape}; expected "
                      f"({rec.num_neurons}, F), one row per neuron")
    if not np.all(np.isfinite(f)):
      raise DataError(f"recording {rec.name}: neuron features contain NaN or Inf")
    per_rec.append(f)
  dims = {f.shape[1] for f in per_rec}
  if len(dims) != 1:
    raise DataError(f"neuron features: recordings differ in feature dimension "
                    f"{[f.shape[1] for f in per_rec]}; all must have the same F")
  k_max = k_max or max(rec.num_neurons for rec in recs)
  s, f_dim = len(recs), dims.pop()
  table = {"features": np.zeros((s, k_max, f_dim), np.float32),
           "center": np.zeros((s, k_max), np.float32),
           "scale": np.ones((s, k_max), np.float32),
           "mask": np.zeros((s, k_max), bool)}
  for i, (rec, f) in enumerate(zip(recs, per_rec)):
    k = rec.num_neurons
    if k > k_max:
      raise DataError(f"recording {rec.name}: {k} neurons exceed K_max={k_max}")
    table["features"][i, :k] = f
    table["center"][i, :k], table["scale"][i, :k] = response_statistics(rec, split)
    table["mask"][i, :k] = True
  return table


def shuffled_across_subjects(features: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
  """miVAE's neuron null control: the (K_s, F) identity features of several subjects,
  their rows pooled and permuted (seeded) so that each neuron carries another neuron's
  features, mostly another subject's; returned in the same shapes.

  A model that reads neurons by these features can no longer tell a new subject's
  neurons apart by what they encode, so its zero-shot identification must fall to chance.
  """
  pooled = np.concatenate([np.asarray(f, np.float32) for f in features])
  pooled = pooled[np.random.default_rng(seed).permutation(len(pooled))]
  return np.split(pooled, np.cumsum([len(f) for f in features])[:-1])


def check_feature_dim(table: dict, expected: int, where: str) -> None:
  """Raises DataError when a table's feature dimension differs from the model's."""
  got = table["features"].shape[-1]
  if got != expected:
    raise DataError(f"{where}: neuron features have dimension {got}; the model was trained "
                    f"with {expected} (same neuron feature kinds needed)")
