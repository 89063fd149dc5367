"""Device-resident training input: the training split on the devices, batches drawn in the
step.

`place` puts one split's records on every device once (replicated), or splits its images
and responses by rows over the devices (sharded: each step then gathers its B drawn rows
across devices); `draw` is a pure
function, traced inside the jitted step, that builds the global batch of a step from
`(seed, step)` alone. It computes the stream of `jaxvna.data.stream` with jax.numpy, so its
batches equal the host pipeline's (`pipeline.make_train_iterator`) to the bit: the same
records (subject weighting "size" or "equal", nested training fractions), the same
recorded repeat or repeat mean, the same masks; batch keys image, response (zero beyond
the subject's neurons), neuron_mask, subject, stimulus_id [, image_features].

The draws are computed for the global batch, so they do not depend on the number of
devices or processes; the batch is then constrained to be split over the mesh's "data"
axis. Resuming needs only the step.

Positions of the global stream (step * B + i) outgrow int32 in long runs, so the host
splits each step's first position into small integers (`stream_offsets`) that the traced
code adds to.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from jaxvna.data import pipeline, stream
from jaxvna.data.dataset import DataError, Dataset


class Resident(NamedTuple):
  """One split's records as arrays (numpy from `arrays`, device arrays after `place`).

  images (N, H, W, C) uint8; responses (N, R, K_max) float32 NaN-padded ("trial") or
  (N, 1, K_max) repeat means ("mean"); repeats (N, R) int32, the recorded repeats of each
  record first; num_repeats (N,) int32; subjects (N,) int32; stimulus_ids (N,) int32;
  neuron_counts (S,) int32; members (S', M) int32, the record indices of each of the S'
  subjects that have records, padded with 0; num_members (S',) int32; image_features
  (N, F) float32 or None.
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
  source = pipeline.DatasetSource(dataset, split, fraction=fraction, subset_seed=subset_seed)
  records = source.take(np.arange(len(source)))
  responses = records["responses"]
  repeats, num_repeats = pipeline.recorded_repeats(responses)
  if (num_repeats == 0).any():
    raise DataError(f"dataset {dataset.name!r}: a record of split {split!r} has no recorded "
                    "repeat")
  if response_mode == "mean":  # the host pipeline's mean examples, to the bit
    responses = pipeline.to_examples(records, "mean")["response"][:, None]
  stimulus_ids = records["stimulus_id"]
  info = np.iinfo(np.int32)
  if stimulus_ids.min() < info.min or stimulus_ids.max() > info.max:
    raise DataError(f"stimulus_id: values up to {stimulus_ids.max()} do not fit int32")
  members, member_counts = pipeline.subject_members(source.subjects)
  return Resident(images=records["image"], responses=responses.astype(np.float32),
                  repeats=repeats.astype(np.int32), num_repeats=num_repeats.astype(np.int32),
                  subjects=records["subject"], stimulus_ids=stimulus_ids.astype(np.int32),
                  neuron_counts=np.asarray(dataset.neuron_counts, np.int32),
                  members=members, num_members=member_counts,
                  image_features=records.get("image_features"))


def expected_nbytes(dataset: Dataset, split: str = "train", *, fraction: float = 1.0,
                    response_mode: str = "trial", shards: int = 1) -> int:
  """About what `nbytes(arrays(...), shards)` will be, from the shapes alone (nothing is
  gathered), to decide a placement before building the arrays: exact for the per-record
  arrays, the small per-subject index tables counted as 4 bytes a record."""
  per_subject = [len(r.indices(split)) for r in dataset.recordings]
  n = sum(max(1, round(fraction * c)) if c and fraction != 1.0 else c for c in per_subject)
  r_max, k_max = pipeline.record_shape(dataset)
  features = dataset.recordings[0].image_features
  split_by_rows = (int(np.prod(dataset.image_shape))  # uint8 images
                   + 4 * k_max * (r_max if response_mode == "trial" else 1)
                   + (0 if features is None else 4 * features.shape[1]))
  # repeats; num_repeats, subjects, stimulus ids, members: on every device
  everywhere = 4 * r_max + 4 * 4
  return -(-n // shards) * split_by_rows + n * everywhere


# The per-record arrays that `place(..., sharded=True)` splits by rows; the others are
# small (a few int32 per record) and stay on every device.
SHARDED_FIELDS = ("images", "responses", "image_features")


def nbytes(data: Resident, shards: int = 1) -> int:
  """Bytes the arrays take on each device, placed on `shards` devices with
  `place(..., sharded=True)` (1: replicated)."""
  total = 0
  for field, x in zip(Resident._fields, data):
    if x is not None:
      x = np.asarray(x)
      rows = -(-x.shape[0] // shards) if field in SHARDED_FIELDS else x.shape[0]
      total += rows * (x.nbytes // max(x.shape[0], 1))
  return int(total)


def place(data: Resident, mesh, *, sharded: bool = False) -> Resident:
  """`data` on the devices of `mesh`: copied to every device, or, with `sharded`, the
  `SHARDED_FIELDS` split by rows over the mesh axis "data" (zero rows padding N to a
  multiple of its size; `draw` never picks them). Every process passes the same arrays
  and keeps only what its devices hold."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  replicated, by_rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  placed = []
  for field, x in zip(Resident._fields, data):
    if x is None:
      placed.append(None)
    elif sharded and field in SHARDED_FIELDS:
      rows = x.shape[0] + -x.shape[0] % mesh.shape["data"]
      placed.append(jax.make_array_from_callback((rows, *x.shape[1:]), by_rows,
                                                 functools.partial(_padded_rows, x, rows)))
    else:
      placed.append(jax.make_array_from_callback(x.shape, replicated,
                                                 lambda index, x=x: x[index]))
  return Resident(*placed)


def _padded_rows(x: np.ndarray, num_rows: int, index: tuple) -> np.ndarray:
  """x zero-padded to `num_rows` rows, at `index`: the padding of a sharded placement,
  built per shard rather than as a padded copy of x."""
  start, stop, _ = index[0].indices(num_rows)
  rest = index[1:]
  block = x[min(start, x.shape[0]):min(stop, x.shape[0])]
  missing = stop - start - block.shape[0]
  if missing:
    block = np.concatenate([block, np.zeros((missing, *x.shape[1:]), x.dtype)])
  return block[(slice(None), *rest)]


def _take(x, mesh, index, *more):
  """x[index, *more] for (B,) `index`: a plain gather, or, with `mesh`, for `x` split by
  rows over the mesh axis "data": each device gathers the drawn rows it holds (zeros for
  the others) and a reduce-scatter sums them into the batch's row shards, so each step
  moves B rows between devices, never the split."""
  if mesh is None:
    return x[(index, *more)]
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P

  def local(x, index, *more):
    rows = x.shape[0]
    local_index = index - jax.lax.axis_index("data") * rows
    held = (local_index >= 0) & (local_index < rows)
    picked = x[(jnp.where(held, local_index, 0), *more)]
    held = held.reshape(held.shape + (1,) * (picked.ndim - 1))
    picked = jnp.where(held, picked, jnp.zeros((), picked.dtype))
    return jax.lax.psum_scatter(picked, "data", scatter_dimension=0, tiled=True)

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P("data"),) + (P(),) * (1 + len(more)),
                     out_specs=P("data"), axis_names={"data"})
  return fn(x, index, *more)


def stream_offsets(step: int, batch_size: int, num_members, weighting: str) -> np.ndarray:
  """Small integers locating the first stream position of `step` (host side, exact), for
  a split whose subjects have `num_members` records each (`Resident.num_members`).

  "size": [epoch, offset] with step * B = epoch * N + offset.
  "equal": [slot, e_0, o_0, e_1, o_1, ...]: position step * B is the `slot`-th of its
  round over the S subjects that have records, and its round q = step * B // S is epoch
  e_s, offset o_s of subject s's records.
  Epochs only seed shuffles, so they are kept modulo 2**32 (uint32 like every entry).
  """
  first = int(step) * int(batch_size)
  wrap = lambda epoch, offset: [epoch % 2**32, offset]
  counts = np.asarray(num_members)
  if weighting == "size":
    return np.asarray(wrap(*divmod(first, int(counts.sum()))), np.uint32)
  if weighting != "equal":
    raise ValueError(f"subject_weighting: expected one of {pipeline.SUBJECT_WEIGHTINGS}, "
                     f"got {weighting!r}")
  slot, q = first % len(counts), first // len(counts)
  return np.asarray([slot] + [v for count in counts for v in wrap(*divmod(q, int(count)))],
                    np.uint32)


def draw(data: Resident, offsets, step, *, seed: int, batch_size: int,
         response_mode: str = "trial", weighting: str = "size", sharding=None,
         sharded_mesh=None) -> dict:
  """The global batch of `step` (traced; `offsets` = `stream_offsets(step, ...)`).

  Returns the batch dict of `pipeline.make_train_iterator` (see the module docstring),
  split over `sharding` when given. `sharded_mesh`: the mesh when `data` was placed with
  `place(..., sharded=True)` (its rows gathered across devices), else None.
  """
  import jax
  import jax.numpy as jnp
  offsets = jnp.asarray(offsets, jnp.uint32)
  row = jnp.arange(batch_size, dtype=jnp.uint32)
  if weighting == "size":
    n = data.subjects.shape[0]
    position = offsets[1] + row  # offsets and batches are far below 2**31
    epoch = offsets[0] + position // n
    index = stream.permute(position % n, n, stream.order_key(seed, 0, epoch, xp=jnp), xp=jnp)
  else:
    num_subjects = data.num_members.shape[0]
    turn = offsets[0] + row
    slot = turn % num_subjects
    count = data.num_members[slot].astype(jnp.uint32)
    draws = offsets[2 + 2 * slot] + turn // num_subjects
    epoch = offsets[1 + 2 * slot] + draws // count
    local = stream.permute(draws % count, count,
                           stream.order_key(seed, slot + 1, epoch, xp=jnp), xp=jnp)
    index = data.members[slot, local.astype(jnp.int32)]
  index = index.astype(jnp.int32)
  subjects = data.subjects[index]
  if response_mode == "trial":
    step = jnp.asarray(step).astype(jnp.uint32)
    pick = stream.repeat_pick(seed, step, row, data.num_repeats[index], xp=jnp)
    repeat = data.repeats[index, pick.astype(jnp.int32)]
  else:
    repeat = jnp.zeros((batch_size,), jnp.int32)
  k_max = data.responses.shape[2]
  mask = jnp.arange(k_max)[None, :] < data.neuron_counts[subjects][:, None]
  batch = {"image": _take(data.images, sharded_mesh, index),
           "response": jnp.where(mask, _take(data.responses, sharded_mesh, index, repeat),
                                 0.0),
           "neuron_mask": mask, "subject": subjects,
           "stimulus_id": data.stimulus_ids[index]}
  if data.image_features is not None:
    batch["image_features"] = _take(data.image_features, sharded_mesh, index)
  if sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, sharding)
  return batch
