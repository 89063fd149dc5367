"""The input pipeline: random-access example sources and a sharded, resumable grain iterator.

Records. A source is a random-access sequence of *records*, one per (recording, image) of
one split, in a fixed order (recordings in dataset order, images in stored order):

  "image"        (H, W, C) uint8
  "responses"    (R_max, K_max) float32; NaN where the repeat was not recorded or the
                 neuron index is beyond the recording's neuron count
  "subject"      () int32, the recording's index in the dataset
  "stimulus_id"  () int64
  "num_neurons"  () int32

`DatasetSource` builds them from an in-memory `Dataset`; `tfds_builders.PreparedSource`
reads the same records from a prepared ArrayRecord copy (`tfds_builders.prepare`).

Batches. `make_train_iterator` draws records, turns each into a training example (one
random recorded repeat, or the mean over repeats) and yields global batches as jax Arrays
split over the mesh axis "data"; grain's threads assemble them ahead of the step, one
vectorised gather per batch:

  "image"        (B, H, W, C) uint8
  "response"     (B, K_max) float32, zero beyond each example's neurons
  "neuron_mask"  (B, K_max) bool, True for the example's real neurons
  "subject"      (B,) int32
  "stimulus_id"  (B,) int64 (int32 unless jax_enable_x64 is on)

Which record and repeat each position of the global stream holds is `jaxvna.data.stream`:
counter-based functions of the seed and the position, never of the number of processes,
threads or devices, and the same that device-resident input (`resident.draw`) computes
inside the step, so both inputs give the same batches.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from jaxvna.data import stream
from jaxvna.data.dataset import Dataset, DataError, split_index

RESPONSE_MODES = ("trial", "mean")
SUBJECT_WEIGHTINGS = ("size", "equal")
MAX_SEED = 2**32  # the stream hashes 32-bit words


# ----------------------------------------------------------------------------
# Records (the format shared with the TFDS builders)
# ----------------------------------------------------------------------------

RECORD_DTYPES = {"image": np.uint8, "responses": np.float32, "subject": np.int32,
                 "stimulus_id": np.int64, "num_neurons": np.int32}


def as_record(values: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A record with the canonical numpy dtypes (readers may return Python scalars)."""
  return {k: np.asarray(values[k], dtype)[()] for k, dtype in RECORD_DTYPES.items()}


def record_shape(dataset: Dataset) -> tuple[int, int]:
  """(R_max, K_max): the padded response shape of every record of `dataset`."""
  return (max(r.responses.shape[1] for r in dataset.recordings),
          max(dataset.neuron_counts))


def split_order(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The record order of one split.

  Returns:
    (subjects, image_indices): (n,) int32 recording index and (n,) int64 image index
    within that recording of each record; recordings in dataset order, images in
    stored order.
  """
  split_index(split)
  subjects, images = [], []
  for s, rec in enumerate(dataset.recordings):
    idx = rec.indices(split)
    subjects.append(np.full(idx.shape, s, np.int32))
    images.append(idx.astype(np.int64))
  return np.concatenate(subjects), np.concatenate(images)


def make_record(dataset: Dataset, subject: int, image_index: int,
                shape: tuple[int, int]) -> dict[str, np.ndarray]:
  """The record of image `image_index` of recording `subject`, responses padded to `shape`."""
  rec = dataset.recordings[subject]
  responses = np.full(shape, np.nan, np.float32)
  r, k = rec.responses.shape[1:]
  responses[:r, :k] = rec.responses[image_index]
  record = {"image": rec.images[image_index],
            "responses": responses,
            "subject": np.int32(subject),
            "stimulus_id": np.int64(rec.stimulus_ids[image_index]),
            "num_neurons": np.int32(k)}
  if rec.image_features is not None:
    record["image_features"] = rec.image_features[image_index]
  return record


class ExampleSource(Protocol):
  """What the pipeline needs of a source (see the module docstring for the records)."""

  subjects: np.ndarray  # (n,) int32 subject of each record, in record order
  neuron_counts: tuple[int, ...]
  record_shape: tuple[int, int]
  image_shape: tuple[int, ...]

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


def nested_subset(subjects: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Bool mask keeping `fraction` of each subject's records (at least one).

  The records kept are the first of a per-subject permutation fixed by `seed` alone, so
  the subset for a smaller fraction is contained in the subset for a larger one (nested
  training sets for data-size studies).
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"training fraction: expected 0 < fraction <= 1, got {fraction}")
  keep = np.zeros(len(subjects), bool)
  for s in np.unique(subjects):
    pos = np.flatnonzero(subjects == s)
    order = np.random.default_rng([seed, int(s)]).permutation(pos.size)
    keep[pos[order[:max(1, int(round(fraction * pos.size)))]]] = True
  return keep


class DatasetSource:
  """Random access to the records of one split of an in-memory `Dataset`, optionally a
  nested `fraction` of each subject's records (`nested_subset`)."""

  def __init__(self, dataset: Dataset, split: str, *, fraction: float = 1.0,
               subset_seed: int = 0):
    self.dataset = dataset
    self.split = split
    self.subjects, self._image_indices = split_order(dataset, split)
    if fraction != 1.0:
      keep = nested_subset(self.subjects, fraction, subset_seed)
      self.subjects, self._image_indices = self.subjects[keep], self._image_indices[keep]
    if not len(self.subjects):
      raise DataError(f"dataset {dataset.name!r}: split {split!r} holds no images")
    self.neuron_counts = dataset.neuron_counts
    self.record_shape = record_shape(dataset)
    self.image_shape = dataset.image_shape

  def __len__(self) -> int:
    return len(self.subjects)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} records")
    return make_record(self.dataset, int(self.subjects[index]),
                       int(self._image_indices[index]), self.record_shape)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    return [self[i] for i in indices]

  def take(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """The records of `indices` stacked (leading axis len(indices)), gathered with one
    fancy index per recording rather than one call per record."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"records {indices} out of range for {len(self)} records")
    subjects, image_index = self.subjects[indices], self._image_indices[indices]
    n = len(indices)
    out = {"image": np.empty((n, *self.image_shape), np.uint8),
           "responses": np.full((n, *self.record_shape), np.nan, np.float32),
           "subject": subjects.astype(np.int32),
           "stimulus_id": np.empty(n, np.int64),
           "num_neurons": np.asarray(self.neuron_counts, np.int32)[subjects]}
    recordings = self.dataset.recordings
    with_features = recordings[0].image_features is not None
    if with_features:
      out["image_features"] = np.empty((n, recordings[0].image_features.shape[1]), np.float32)
    for s in np.unique(subjects):
      rows = np.flatnonzero(subjects == s)
      rec, idx = recordings[s], image_index[rows]
      out["image"][rows] = rec.images[idx]
      r, k = rec.responses.shape[1:]
      out["responses"][rows, :r, :k] = rec.responses[idx]
      out["stimulus_id"][rows] = rec.stimulus_ids[idx]
      if with_features:
        out["image_features"][rows] = rec.image_features[idx]
    return out

  def __repr__(self):
    return f"DatasetSource({self.dataset.name!r}, {self.split!r}, {len(self)} records)"


# ----------------------------------------------------------------------------
# Per-example transforms
# ----------------------------------------------------------------------------

def to_example(record: Mapping[str, np.ndarray], response_mode: str,
               pick: int | None = None) -> dict[str, np.ndarray]:
  """One training example from a record: `to_examples` of a batch of one.

  Args:
    record: a record (see the module docstring).
    response_mode: "trial" takes recorded repeat number `pick` (0 is the first recorded
      one); "mean" averages the recorded repeats.
    pick: needed for "trial".

  Returns:
    {"image" (H,W,C) uint8, "response" (K_max,) float32 zero-padded, "neuron_mask"
    (K_max,) bool, "subject" () int32, "stimulus_id" () int64}.
  """
  records = {k: np.asarray(v)[None] for k, v in record.items()}
  picks = None if pick is None else np.asarray([pick])
  return {k: v[0] for k, v in to_examples(records, response_mode, picks).items()}


def recorded_repeats(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(order, counts) of NaN-padded responses (n, R, K): each record's recorded repeats
  first, in stored order, and how many there are. Neuron 0 always exists, so its NaNs
  mark the repeats that were not recorded."""
  recorded = ~np.isnan(responses[:, :, 0])
  return np.argsort(~recorded, axis=1, kind="stable"), recorded.sum(axis=1)


def to_examples(records: Mapping[str, np.ndarray], response_mode: str,
                picks: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Training examples from stacked records, vectorised over the batch.

  Args:
    records: records stacked along a leading axis of n (see the module docstring).
    response_mode: "trial" takes recorded repeat `picks[i]` of example i (`stream.
      repeat_pick`); "mean" averages the recorded repeats.
    picks: (n,) integers in [0, recorded repeats of each example), for "trial".

  Returns:
    {"image" (n,H,W,C) uint8, "response" (n,K_max) float32 zero-padded, "neuron_mask"
    (n,K_max) bool, "subject" (n,) int32, "stimulus_id" (n,) int64[, "image_features"]}.
  """
  responses = np.asarray(records["responses"], np.float32)
  n, _, k_max = responses.shape
  mask = np.arange(k_max)[None, :] < np.asarray(records["num_neurons"])[:, None]
  order, counts = recorded_repeats(responses)
  if response_mode == "trial":
    picks = np.asarray(picks, np.int64)
    if picks.shape != (n,) or (picks < 0).any() or (picks >= counts).any():
      raise ValueError(f"picks: expected ({n},) integers below each example's recorded "
                       f"repeats {counts.tolist()}, got {picks.tolist()}")
    response = responses[np.arange(n), order[np.arange(n), picks]]
  elif response_mode == "mean":
    # The sum runs over the repeats in order, unrecorded ones adding 0: the mean of the
    # recorded rows, to the bit.
    recorded = ~np.isnan(responses[:, :, 0])
    response = (np.where(recorded[:, :, None], responses, np.float32(0)).sum(axis=1)
                / counts[:, None].astype(np.float32))
  else:
    raise ValueError(f"response_mode: expected one of {RESPONSE_MODES}, got {response_mode!r}")
  examples = {"image": np.asarray(records["image"], np.uint8),
              "response": np.where(mask, response, 0.0).astype(np.float32),
              "neuron_mask": mask,
              "subject": np.asarray(records["subject"], np.int32),
              "stimulus_id": np.asarray(records["stimulus_id"], np.int64)}
  if "image_features" in records:
    examples["image_features"] = np.asarray(records["image_features"], np.float32)
  return examples


def check_seed(seed: int) -> int:
  """`seed` as an int, checked to lie in [0, 2**32) (the stream hashes 32-bit words)."""
  if not 0 <= int(seed) < MAX_SEED:
    raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed}")
  return int(seed)


def subject_members(subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(table, counts): the record indices of each subject that has records, in subject
  order (the subjects that "equal" weighting cycles over), as an (S', M) int32 table
  padded with 0, and their (S',) int32 counts."""
  members = [m for s in range(int(subjects.max()) + 1)
             if len(m := np.flatnonzero(subjects == s))]
  table = np.zeros((len(members), max(len(m) for m in members)), np.int32)
  for s, m in enumerate(members):
    table[s, :len(m)] = m
  return table, np.asarray([len(m) for m in members], np.int32)


# ----------------------------------------------------------------------------
# Process-local batches
# ----------------------------------------------------------------------------

def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """Rows of each global batch read by one of `process_count` equal processes."""
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of the "
                     f"{process_count} processes")
  per = global_batch_size // process_count
  return slice(process_index * per, (process_index + 1) * per)


def sharding_rows(sharding, global_batch_size: int) -> slice:
  """The contiguous rows of a batch that this process's devices hold under `sharding`."""
  index_map = sharding.addressable_devices_indices_map((global_batch_size,))
  starts = sorted({idx[0].indices(global_batch_size)[:2] for idx in index_map.values()})
  lo, hi = starts[0][0], starts[-1][1]
  covered = sum(stop - start for start, stop in starts)
  if covered != hi - lo:
    raise ValueError(f"this process's devices hold non-contiguous rows {starts} of the batch; "
                     "order the mesh's devices by process")
  return slice(lo, hi)


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _read(source, indices: list[int]) -> dict[str, np.ndarray]:
  """The records of `indices`, stacked: `source.take` when it has one, else one read per
  record (`__getitems__` or indexing)."""
  if hasattr(source, "take"):
    return source.take(indices)
  getitems = getattr(source, "__getitems__", None)
  return _stack(list(getitems(indices)) if getitems else [source[i] for i in indices])


def make_local_batches(source: ExampleSource, *, global_batch_size: int, rows: slice,
                       seed: int, response_mode: str = "trial",
                       subject_weighting: str = "size", num_epochs: int | None = None):
  """This process's rows of every global batch, as a `grain.MapDataset` of numpy dicts.

  Global batch b holds stream positions [b*B, (b+1)*B); this process reads only the
  positions `b*B + rows`, so it never touches another process's records. The last
  incomplete global batch of a finite stream is dropped.

  Returns:
    a `grain.MapDataset` whose element b is the process-local part of global batch b
    (keys and shapes as in the module docstring, leading dimension rows.stop-rows.start).
  """
  import grain
  if response_mode not in RESPONSE_MODES:
    raise ValueError(f"response_mode: expected one of {RESPONSE_MODES}, got {response_mode!r}")
  if subject_weighting not in SUBJECT_WEIGHTINGS:
    raise ValueError(f"subject_weighting: expected one of {SUBJECT_WEIGHTINGS}, "
                     f"got {subject_weighting!r}")
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size: expected >= 1, got {global_batch_size}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs: expected None or >= 1, got {num_epochs}")
  seed = check_seed(seed)
  n = len(source)
  members, member_counts = (subject_members(np.asarray(source.subjects))
                            if subject_weighting == "equal" else (None, None))
  num_batches = (sys.maxsize // global_batch_size if num_epochs is None
                 else num_epochs * n // global_batch_size)
  if num_batches == 0:
    raise ValueError(f"{num_epochs * n} examples do not fill one batch of {global_batch_size}")
  rows_of_batch = np.arange(rows.start, rows.stop)

  def load(batch_index: int) -> dict[str, np.ndarray]:
    positions = np.int64(batch_index) * global_batch_size + rows_of_batch
    records = _read(source, stream.records(positions, seed=seed, weighting=subject_weighting,
                                           num_records=n, members=members,
                                           member_counts=member_counts))
    picks = None
    if response_mode == "trial":
      _, counts = recorded_repeats(records["responses"])
      picks = stream.repeat_pick(seed, stream.as_uint32(batch_index), rows_of_batch, counts)
    return to_examples(records, response_mode, picks)

  return grain.MapDataset.range(num_batches).map(load)


# ----------------------------------------------------------------------------
# Global sharded batches
# ----------------------------------------------------------------------------

class TrainIterator:
  """Yields global batches (dicts of jax Arrays sharded along "data"); resumable.

  grain assembles the process-local batches ahead of the step (threads, and optionally
  worker processes); the next `device_prefetch` batches are already sent to the devices
  when one is handed out, so their transfer overlaps the step. `get_state()` returns a
  JSON-serialisable dict; `set_state(state)` on an iterator built with the same arguments
  continues with exactly the batches that would have followed.
  """

  def __init__(self, local_batches, *, sharding, global_batch_size: int,
               fingerprint: Mapping[str, Any], num_threads: int, prefetch_batches: int,
               worker_processes: int = 0, device_prefetch: int = 2):
    import grain
    self._local = local_batches
    self._sharding = sharding
    self._global_batch_size = global_batch_size
    self._fingerprint = dict(fingerprint)
    self._options = grain.ReadOptions(num_threads=num_threads,
                                      prefetch_buffer_size=prefetch_batches)
    self._worker_processes = worker_processes
    self._device_prefetch = device_prefetch
    self._start(0)

  def _start(self, first_batch: int) -> None:
    """(Re)starts reading at global batch `first_batch`."""
    import grain
    dataset = self._local[first_batch:].to_iter_dataset(self._options)
    if self._worker_processes:
      from absl import flags
      if not flags.FLAGS.is_parsed():  # grain's workers read its flags; none were given
        flags.FLAGS.mark_as_parsed()
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._worker_processes))
    self.close()
    self._iterator = iter(dataset)
    self._next_batch = first_batch
    self._on_devices = collections.deque()

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self

  def __next__(self) -> dict[str, Any]:
    while len(self._on_devices) <= self._device_prefetch:
      try:
        self._on_devices.append(self._to_devices(next(self._iterator)))
      except StopIteration:
        break
    if not self._on_devices:
      raise StopIteration
    self._next_batch += 1
    return self._on_devices.popleft()

  def _to_devices(self, local: dict[str, np.ndarray]) -> dict[str, Any]:
    import jax
    if not jax.config.jax_enable_x64:
      local["stimulus_id"] = _as_int32(local["stimulus_id"])
    return {k: jax.make_array_from_process_local_data(
        self._sharding, v, (self._global_batch_size, *v.shape[1:])) for k, v in local.items()}

  def __len__(self) -> int:
    """Number of global batches (sys.maxsize // B for an endless stream)."""
    return len(self._local)

  def get_state(self) -> dict[str, Any]:
    return {"next_batch": self._next_batch, **self._fingerprint}

  def set_state(self, state: Mapping[str, Any]) -> None:
    check_fingerprint(state, self._fingerprint)
    self._start(int(state["next_batch"]))

  def close(self) -> None:
    """Stops grain's worker processes, if any (also done when the iterator is collected)."""
    close = getattr(getattr(self, "_iterator", None), "close", None)
    if close is not None:
      close()


def check_fingerprint(state: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> None:
  """Raises ValueError unless a saved input state has every field of `fingerprint` (what
  fixes the stream: seed, batch size, ...) at the same value."""
  mismatched = {k: (state.get(k), v) for k, v in fingerprint.items() if state.get(k) != v}
  if mismatched:
    raise ValueError("input pipeline state was saved by a different pipeline "
                     f"(saved, current): {mismatched}")


def _as_int32(ids: np.ndarray) -> np.ndarray:
  info = np.iinfo(np.int32)
  if ids.size and (ids.min() < info.min or ids.max() > info.max):
    raise DataError(f"stimulus_id: values up to {ids.max()} do not fit int32; "
                    "enable jax_enable_x64 to keep 64-bit ids")
  return ids.astype(np.int32)


def make_train_iterator(source: ExampleSource, *, global_batch_size: int, mesh, seed: int,
                        response_mode: str = "trial", num_epochs: int | None = None,
                        subject_weighting: str = "size", num_threads: int = 2,
                        prefetch_batches: int = 4, worker_processes: int = 0,
                        device_prefetch: int = 2) -> TrainIterator:
  """The training input: shuffled, mixed-subject global batches sharded over "data".

  Args:
    source: a `DatasetSource` or `tfds_builders.PreparedSource` (usually the train split).
    global_batch_size: B, a multiple of the mesh's "data" axis size.
    mesh: a `jax.sharding.Mesh` with a "data" axis; batches get NamedSharding(mesh,
      P("data")) and each process reads only the rows its devices hold.
    seed: in [0, 2**32); fixes the order and the repeats drawn.
    response_mode: "trial" (one random recorded repeat per example) or "mean".
    num_epochs: None for an endless stream, else the stream holds num_epochs *
      len(source) draws (the last incomplete batch is dropped).
    subject_weighting: "size" (each record once per epoch, so subjects in proportion to
      their records) or "equal" (each subject the same share of every batch).
    num_threads, prefetch_batches: grain read threads and the batches read ahead.
    worker_processes: grain worker processes assembling batches (0: none, the threads
      of this process do).
    device_prefetch: batches sent to the devices ahead of the one handed out.

  Returns:
    a `TrainIterator`.
  """
  from jax.sharding import NamedSharding, PartitionSpec as P
  sharding = NamedSharding(mesh, P("data"))
  data_size = mesh.shape["data"]
  if global_batch_size % data_size:
    raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of the "
                     f"{data_size} devices on the mesh's 'data' axis")
  rows = sharding_rows(sharding, global_batch_size)
  local = make_local_batches(source, global_batch_size=global_batch_size, rows=rows, seed=seed,
                             response_mode=response_mode, subject_weighting=subject_weighting,
                             num_epochs=num_epochs)
  fingerprint = {"seed": int(seed), "global_batch_size": int(global_batch_size),
                 "response_mode": response_mode, "subject_weighting": subject_weighting,
                 "num_epochs": num_epochs, "num_records": len(source)}
  return TrainIterator(local, sharding=sharding, global_batch_size=global_batch_size,
                       fingerprint=fingerprint, num_threads=num_threads,
                       prefetch_batches=prefetch_batches, worker_processes=worker_processes,
                       device_prefetch=device_prefetch)


# ----------------------------------------------------------------------------
# Evaluation arrays
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalArrays:
  """The images and responses of one recording in one split, in stored order."""

  subject: int
  name: str
  images: np.ndarray  # (N, H, W, C) uint8
  responses: np.ndarray  # (N, R, K) float32, NaN for repeats not recorded
  stimulus_ids: np.ndarray  # (N,) int64

  @property
  def mean_responses(self) -> np.ndarray:
    """(N, K) float32 average over the recorded repeats."""
    counts = np.maximum(np.sum(~np.isnan(self.responses[..., 0]), axis=1), 1)[:, None]
    return (np.nansum(self.responses, axis=1) / counts).astype(np.float32)


def eval_arrays(dataset: Dataset, split: str) -> list[EvalArrays]:
  """Held-out data per recording (recordings without images in `split` are left out)."""
  split_index(split)
  out = []
  for s, rec in enumerate(dataset.recordings):
    idx = rec.indices(split)
    if len(idx):
      out.append(EvalArrays(subject=s, name=rec.name, images=rec.images[idx],
                            responses=rec.responses[idx],
                            stimulus_ids=rec.stimulus_ids[idx].astype(np.int64)))
  return out


__all__ = ["DatasetSource", "EvalArrays", "RECORD_DTYPES", "RESPONSE_MODES",
           "SUBJECT_WEIGHTINGS", "TrainIterator", "as_record", "check_fingerprint",
           "check_seed", "eval_arrays", "make_local_batches", "make_record",
           "make_train_iterator", "process_rows", "record_shape", "recorded_repeats",
           "sharding_rows", "split_order", "subject_members", "to_example", "to_examples"]
