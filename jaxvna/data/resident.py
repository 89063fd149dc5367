"""Device-resident training input: the training split on the devices, batches drawn in the
step.

`place` puts one split's records on every device once (replicated); `draw` is a pure
function, traced inside the jitted step, that builds the global batch of a step from
`(seed, step)` alone, with the semantics of `pipeline.make_train_iterator`:

  subject_weighting "size"   every record once per epoch, in a fresh shuffle per epoch
                    "equal"  positions cycle over the subjects; each subject's records
                             once per (subject) epoch, reshuffled every epoch
  response_mode     "trial"  one recorded repeat, uniformly at random per example
                    "mean"   the mean over recorded repeats
  nested fractions           the same records as `pipeline.nested_subset`
  batch keys                 image, response (zero beyond the subject's neurons),
                             neuron_mask, subject, stimulus_id [, image_features]

The draws are computed for the global batch, so they do not depend on the number of
devices or processes; the batch is then constrained to be split over the mesh's "data"
axis. The shuffles are not grain's, so the examples differ from the host pipeline's (the
distribution is the same). Resuming needs only the step.

Positions of the global stream (step * B + i) outgrow int32 in long runs, so the host
splits each step's first position into small integers (`stream_offsets`) that the traced
code adds to.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jaxvna.data import pipeline
from jaxvna.data.dataset import DataError, Dataset


class Resident(NamedTuple):
  """One split's records as arrays (numpy from `arrays`, device arrays after `place`).

  images (N, H, W, C) uint8; responses (N, R, K_max) float32 NaN-padded ("trial") or
  (N, 1, K_max) repeat means ("mean"); repeats (N, R) int32, the recorded repeats of each
  record first; num_repeats (N,) int32; subjects (N,) int32; stimulus_ids (N,) int32;
  neuron_counts (S,) int32; members (S, M) int32, each subject's record indices padded
  with 0; num_members (S,) int32; image_features (N, F) float32 or None.
  """
  images: Any
  responses: Any
  repeats: Any
  num_repeats: Any
  subjects: Any
  stimulus_ids: Any
  neuron_counts: Any
  members: Any
  num_members: Any
  image_features: Any = None


def arrays(dataset: Dataset, split: str = "train", *, fraction: float = 1.0,
           subset_seed: int = 0, response_mode: str = "trial") -> Resident:
  """The records of `split` (a nested `fraction` of each subject's) as numpy arrays."""
  if response_mode not in pipeline.RESPONSE_MODES:
    raise ValueError(f"response_mode: expected one of {pipeline.RESPONSE_MODES}, "
                     f"got {response_mode!r}")
  subjects, image_index = pipeline.split_order(dataset, split)
  if fraction != 1.0:
    keep = pipeline.nested_subset(subjects, fraction, subset_seed)
    subjects, image_index = subjects[keep], image_index[keep]
  if not len(subjects):
    raise DataError(f"dataset {dataset.name!r}: split {split!r} holds no images")
  r_max, k_max = pipeline.record_shape(dataset)
  n = len(subjects)
  images = np.empty((n, *dataset.image_shape), np.uint8)
  responses = np.full((n, r_max, k_max), np.nan, np.float32)
  stimulus_ids = np.empty(n, np.int64)
  with_features = all(r.image_features is not None for r in dataset.recordings)
  features = None
  for s, rec in enumerate(dataset.recordings):
    rows = np.flatnonzero(subjects == s)
    idx = image_index[rows]
    images[rows] = rec.images[idx]
    r, k = rec.responses.shape[1:]
    responses[rows, :r, :k] = rec.responses[idx]
    stimulus_ids[rows] = rec.stimulus_ids[idx]
    if with_features:
      if features is None:
        features = np.empty((n, rec.image_features.shape[1]), np.float32)
      features[rows] = rec.image_features[idx]
  # Neuron 0 always exists, so its NaNs mark the repeats that were not recorded.
  recorded = ~np.isnan(responses[:, :, 0])
  num_repeats = recorded.sum(1).astype(np.int32)
  if (num_repeats == 0).any():
    raise DataError(f"dataset {dataset.name!r}: a record of split {split!r} has no recorded "
                    "repeat")
  repeats = np.argsort(~recorded, axis=1, kind="stable").astype(np.int32)
  if response_mode == "mean":
    responses = (np.nansum(responses, axis=1, keepdims=True)
                 / num_repeats[:, None, None]).astype(np.float32)
  info = np.iinfo(np.int32)
  if stimulus_ids.min() < info.min or stimulus_ids.max() > info.max:
    raise DataError(f"stimulus_id: values up to {stimulus_ids.max()} do not fit int32")
  num_subjects = len(dataset.recordings)
  counts = np.bincount(subjects, minlength=num_subjects).astype(np.int32)
  members = np.zeros((num_subjects, max(1, counts.max())), np.int32)
  for s in range(num_subjects):
    members[s, :counts[s]] = np.flatnonzero(subjects == s)
  return Resident(images=images, responses=responses, repeats=repeats,
                  num_repeats=num_repeats, subjects=subjects.astype(np.int32),
                  stimulus_ids=stimulus_ids.astype(np.int32),
                  neuron_counts=np.asarray(dataset.neuron_counts, np.int32),
                  members=members, num_members=counts, image_features=features)


def nbytes(data: Resident) -> int:
  """Bytes the arrays take on each device."""
  return int(sum(np.asarray(x).nbytes for x in data if x is not None))


def place(data: Resident, mesh) -> Resident:
  """`data` copied to every device of `mesh` (every process must pass the same arrays)."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  replicated = NamedSharding(mesh, P())
  return Resident(*(None if x is None else jax.make_array_from_callback(
      x.shape, replicated, lambda index, x=x: x[index]) for x in data))


def stream_offsets(step: int, batch_size: int, data: Resident, weighting: str) -> np.ndarray:
  """Small integers locating the first stream position of `step` (host side, exact).

  "size": [epoch, offset] with step * B = epoch * N + offset.
  "equal": [slot, e_0, o_0, e_1, o_1, ...]: position step * B is the `slot`-th of its
  round over the S subjects, and its round q = step * B // S is epoch e_s, offset o_s of
  subject s's records.
  Epochs only seed shuffles, so they are kept modulo 2**32 (uint32 like every entry).
  """
  first = int(step) * int(batch_size)
  wrap = lambda epoch, offset: [epoch % 2**32, offset]
  if weighting == "size":
    n = len(data.subjects)
    if batch_size > n:
      raise ValueError(f"a batch of {batch_size} exceeds the {n} training records (a batch "
                       "spans at most two epochs)")
    return np.asarray(wrap(*divmod(first, n)), np.uint32)
  if weighting != "equal":
    raise ValueError(f"subject_weighting: expected one of {pipeline.SUBJECT_WEIGHTINGS}, "
                     f"got {weighting!r}")
  present = np.asarray(data.num_members)
  if (present == 0).any():
    raise ValueError(f"subject_weighting='equal': subjects {np.flatnonzero(present == 0)} "
                     "have no training records")
  subjects = len(present)
  if present.min() < -(-batch_size // subjects):
    raise ValueError(f"subject_weighting='equal' on the device: every subject needs at least "
                     f"B/S = {-(-batch_size // subjects)} training records (a batch spans at "
                     f"most two of a subject's epochs); the smallest has {present.min()}")
  slot, q = first % subjects, first // subjects
  out = [slot]
  for count in present:
    out += wrap(*divmod(q, int(count)))
  return np.asarray(out, np.uint32)


def _permutation(key, epoch, size: int, valid=None):
  """A permutation of range(valid) (valid <= size) in its first `valid` entries, fixed by
  (key, epoch)."""
  import jax
  import jax.numpy as jnp
  u = jax.random.uniform(jax.random.fold_in(key, epoch), (size,))
  if valid is not None:
    u = u + (jnp.arange(size) >= valid) * 2.0
  return jnp.argsort(u)


def draw(data: Resident, offsets, step, *, seed: int, batch_size: int,
         response_mode: str = "trial", weighting: str = "size", sharding=None) -> dict:
  """The global batch of `step` (traced; `offsets` = `stream_offsets(step, ...)`).

  Returns the batch dict of `pipeline.make_train_iterator` (see the module docstring),
  split over `sharding` when given.
  """
  import jax
  import jax.numpy as jnp
  b = batch_size
  offsets = jnp.asarray(offsets, jnp.uint32)
  key = jax.random.key(seed)
  order_key, repeat_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  if weighting == "size":
    n = data.subjects.shape[0]
    epoch, offset = offsets[0], offsets[1].astype(jnp.int32)
    pos = offset + jnp.arange(b)  # < 2N: a batch spans at most two epochs (B <= N)
    first, second = (_permutation(order_key, epoch + e, n) for e in (0, 1))
    index = jnp.where(pos < n, first[pos % n], second[pos % n])
  else:
    num_subjects, m = data.members.shape
    t = offsets[0].astype(jnp.int32) + jnp.arange(b)
    subject = t % num_subjects
    dq = t // num_subjects
    index = jnp.zeros((b,), jnp.int32)
    for s in range(num_subjects):
      e0, o0 = offsets[1 + 2 * s], offsets[2 + 2 * s].astype(jnp.int32)
      count = data.num_members[s]
      j = o0 + dq
      safe = jnp.maximum(count, 1)
      perms = [_permutation(jax.random.fold_in(order_key, s + 1), e0 + e, m, count)
               for e in (0, 1)]
      local = jnp.where(j < safe, perms[0][j % safe], perms[1][j % safe])
      index = jnp.where(subject == s, data.members[s, local], index)
  subjects = data.subjects[index]
  if response_mode == "trial":
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(repeat_key, step), i))(
        jnp.arange(b))
    u = jax.vmap(lambda k: jax.random.uniform(k))(keys)
    pick = jnp.minimum((u * data.num_repeats[index]).astype(jnp.int32),
                       data.num_repeats[index] - 1)
    repeat = data.repeats[index, pick]
  else:
    repeat = jnp.zeros((b,), jnp.int32)
  k_max = data.responses.shape[2]
  mask = jnp.arange(k_max)[None, :] < data.neuron_counts[subjects][:, None]
  batch = {"image": data.images[index],
           "response": jnp.where(mask, data.responses[index, repeat], 0.0),
           "neuron_mask": mask, "subject": subjects,
           "stimulus_id": data.stimulus_ids[index]}
  if data.image_features is not None:
    batch["image_features"] = data.image_features[index]
  if sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, sharding)
  return batch
