"""Crash-safe checkpoints of a training state, and a guard against reusing a workdir.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager`. Each step is saved as three
items in `directory/<step>/`:

  state      the pytree of jax Arrays (orbax StandardSave; sharded arrays are written by
             the devices that hold them and can be restored onto any other mesh);
  meta       a JSON dict (grain iterator state, config hash, step, ...);
  checksums  one JSON file per process, `process_<i>.json`, holding the sha256 of every
             distinct shard that process holds, so that a checkpoint whose bytes changed
             after it was written is detected on restore (orbax/tensorstore notice
             truncated or missing files, but not every flipped byte inside a chunk).

The checksum records. Each process hashes only its addressable shards with
`replica_id == 0`, i.e. one copy of every distinct shard across the whole run: nothing
moves between processes (a leaf replicated over all devices is hashed once, by the
process that holds its replica 0, the first process). A record names the leaf's key path,
its dtype, its global shape, the shard's global index as [start, stop) bounds per
dimension, and the sha256 of the shard's bytes in C order; a typed PRNG key is recorded
as its uint32 key data. Each file also states the process count, so that a step that
lacks any process's file is treated as corrupt. On the training thread `save` only
checks that the state is finite and starts a host copy of each shard to hash, one that
outlives the state (on accelerators an asynchronous `jax.device_put` into the device's
"pinned_host" memory; on CPU, whose device memory is host memory, a numpy view that
keeps the buffer alive), so the caller may donate or delete the state as soon as `save`
returns. Waiting for those copies and hashing them happen in orbax's background commit of
the step, before the step is finalised.

What `restore` verifies. Every leaf of the restored state must have records whose shards
cover its whole global shape (else the step is corrupt). Leaves restored into another
dtype or shape than recorded are not checked (their bytes differ on purpose). Otherwise a
recorded shard is checked, by hashing the matching block of the restored value, when one
process holds that whole block in one piece:
  - a restored array held entirely by this process (single-process runs, whatever the
    saved and restored meshes or device counts): its assembled value holds every block,
    so every recorded shard is checked;
  - a restored array spread over several processes: each process checks the recorded
    shards that lie entirely inside one of its restored shards with `replica_id == 0`
    (so each is checked at most once). All recorded shards are checked when the restored
    layout is the saved one, is replicated, or is coarser than the saved one (each
    restored shard a union of saved shards); a recorded shard that straddles restored
    shards of a finer or different split is not checked.
The trainer's layouts (a replicated state on any number of devices and processes, a
single device, another device count) are therefore checked in full. Steps written before
per-shard records existed carry an `integrity` item instead (one JSON record with the
sha256 of each leaf's whole value); they are read as records of one full-array shard per
leaf and checked by the same rules.

In a multi-process run each process reads and checks other shards, so a step can fail on
one process only: after each step they try, the processes agree (a gather of two
integers per process) whether any of them failed, and all fall back together. One case
is beyond this: an error that orbax raises inside its own restore on some processes only
(e.g. a garbled compressed chunk that only one process reads) skips orbax's closing
barrier on those processes, and the run stops in a collective mismatch rather than
falling back. A replicated state is read by every process, so its damage fails everywhere.

`save` also refuses a state whose floating-point leaves hold NaN or Inf (a jitted
reduction on the devices, collective over all processes): such a step would be restored
as the "latest valid" one and poison every resumed run.

Why it survives a kill at any moment: orbax writes a step into
`<step>.orbax-checkpoint-tmp-<timestamp>/` and renames it to `<step>/` only once every
file (the checksums included) is written, so an unfinished save is never listed as a step
(and its temporary folder is removed when the next writable `Checkpointer` opens the
directory). A finished step that was damaged later (missing, truncated or garbled files)
fails to restore or to verify; `restore` then warns with `CheckpointFallbackWarning`,
moves the bad step aside to `directory/<step>.corrupt-<time>/` (kept for inspection,
invisible to orbax, and out of the way of the next save of that step) and falls back to
the previous step. When no step can be restored, `restore` raises `CheckpointError`
listing every step's error: silently starting over would throw away a run that may only
need a fix (a mismatched `abstract_state`, for instance, makes every step fail the same
way).

`params_digest` is a sharding-independent fingerprint of a pytree (used by summary.json to
show that a killed and resumed run ends with the same parameters), and `check_workdir`
refuses to resume a workdir that holds a run of another config.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fnmatch
import functools
import gc
import hashlib
import json
import math
import os
import time
import warnings
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxvna import files
from jaxvna.errors import NonFiniteError, UserError

CONFIG_FILE = "config.json"
CORRUPT_SUFFIX = ".corrupt-"
CHECKSUMS_ITEM = "checksums"
LEGACY_INTEGRITY_ITEM = "integrity"  # Whole-leaf records of steps written before.
CHECKSUMS_FORMAT = "jaxvna-shard-sha256-1"

# Config fields that may change when a run is resumed: its length, how often it
# checkpoints/logs/evaluates, and the evaluators. A pattern matches a dotted key that
# equals it, lies below it ("eval" covers "eval.batch_size") or fnmatch-es it.
DEFAULT_RESUMABLE_KEYS = (
    "train.steps",
    "train.total_steps",
    "train.num_steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.eval_every",
    "eval",
    "evals",
    "evaluators",
    "*.log_every",
    "*.eval_every",
    "*.checkpoint_every",
)


class CheckpointError(RuntimeError):
  """No checkpoint in a directory could be restored (or, in a multi-process run, another
  process could not restore a step)."""


class CorruptCheckpointError(RuntimeError):
  """A restored leaf's bytes differ from those recorded when the step was saved."""


class CheckpointFallbackWarning(UserWarning):
  """The latest checkpoint was unreadable; an older one was restored instead."""


class WorkdirConfigError(UserError, ValueError):
  """A workdir holds a run of a different config."""


# --- Fingerprints ------------------------------------------------------------------


def _as_data(leaf):
  """A typed PRNG key array as its raw uint32 data; any other leaf unchanged."""
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(leaf)
  return leaf


def _host_leaves(tree) -> list[tuple[str, np.ndarray]]:
  """(key path, host numpy copy) of every leaf of `tree`, in tree-flatten order."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = _as_data(leaf)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      # Arrays spread over several processes: gather the global value on every host.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    out.append((jax.tree_util.keystr(path), np.asarray(leaf)))
  return out


def _bytes_view(array: np.ndarray) -> np.ndarray:
  # reshape(-1) first: a 0-d array cannot be re-viewed as a different item size.
  return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _sha256(array: np.ndarray) -> str:
  return hashlib.sha256(_bytes_view(array)).hexdigest()


def params_digest(params) -> str:
  """sha256 hex digest of a pytree's leaves, identical however the arrays are sharded.

  Hashes, for every leaf in tree-flatten order, its key path, dtype and shape and then
  the bytes of a host numpy copy (the global value, gathered across processes if
  needed). Two pytrees have the same digest iff they have the same structure, key
  paths, dtypes, shapes and bytes.

  Args:
    params: any pytree of jax/numpy arrays or scalars.

  Returns:
    A 64-character hexadecimal string.
  """
  digest = hashlib.sha256()
  for path, array in _host_leaves(params):
    digest.update(f"{path}|{array.dtype.name}|{array.shape}\n".encode())
    digest.update(_bytes_view(array))
  return digest.hexdigest()


# --- Finite check ------------------------------------------------------------------


def _spread(x: jax.Array, mesh: jax.sharding.Mesh) -> jax.Array:
  """`x` (inside jit) split over all of `mesh`'s devices; a replicated `x` needs no
  communication for this, each device keeps a slice of its copy."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
  if all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return jax.sharding.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


@functools.partial(jax.jit, static_argnums=1)
def _nonfinite_flags(leaves, spread_over):
  """One bool per leaf: it holds a NaN or Inf. A leaf whose `spread_over` entry is a mesh
  (a replicated leaf) is split over that mesh's devices first, so that each device scans
  a part of it rather than the whole of its copy."""
  flags = []
  for x, mesh in zip(leaves, spread_over):
    parts = [x]
    if mesh is not None:
      flat = x.reshape(-1)
      whole = flat.size // mesh.size * mesh.size
      parts = [_spread(flat[:whole], mesh), flat[whole:]]
    flags.append(jnp.logical_not(jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in parts]))))
  return jnp.stack(flags)


def _spread_mesh(leaf: jax.Array) -> jax.sharding.Mesh | None:
  sharding = leaf.sharding
  if not (isinstance(sharding, jax.sharding.NamedSharding) and sharding.is_fully_replicated
          and 1 < sharding.mesh.size <= leaf.size):
    return None
  kinds = set(sharding.mesh.axis_types)
  return sharding.mesh if kinds in ({jax.sharding.AxisType.Explicit},
                                    {jax.sharding.AxisType.Auto}) else None


def _own_mesh(sharding: jax.sharding.Sharding):
  """The mesh of a sharding (a one-device mesh for one device), else its device set."""
  if isinstance(sharding, jax.sharding.NamedSharding) and isinstance(sharding.mesh,
                                                                      jax.sharding.Mesh):
    return sharding.mesh
  if isinstance(sharding, jax.sharding.SingleDeviceSharding):
    return jax.sharding.Mesh(np.array(list(sharding.device_set)), ("device",))
  return frozenset(sharding.device_set)


def _check_finite(state) -> None:
  """Raises NonFiniteError naming the floating-point leaves of `state` with NaN or Inf.

  A jitted reduction on the devices that hold each leaf (collective when a leaf spans
  several processes; all of them call `save` together); host values are checked on host.
  """
  flagged = []  # (flatten position, key path)
  groups = collections.defaultdict(list)  # device layout -> [(position, path, array)]
  for position, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0]):
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
    if not jax.dtypes.issubdtype(dtype, jnp.inexact):  # PRNG keys and integers pass.
      continue
    name = jax.tree_util.keystr(path)
    if isinstance(leaf, jax.Array):
      # One computation per mesh (or device set): a computation takes arrays of one.
      groups[_own_mesh(leaf.sharding)].append((position, name, leaf))
    elif not np.all(np.isfinite(leaf)):
      flagged.append((position, name))
  for mesh, members in groups.items():
    leaves = [leaf for _, _, leaf in members]
    # Under the leaves' own mesh: the caller's mesh context (the trainer's) may differ.
    with jax.set_mesh(mesh) if isinstance(mesh, jax.sharding.Mesh) else contextlib.nullcontext():
      flags = np.asarray(_nonfinite_flags(leaves, tuple(_spread_mesh(x) for x in leaves)))
    flagged += [(position, name) for (position, name, _), bad in zip(members, flags) if bad]
  if flagged:
    names = [name for _, name in sorted(flagged)]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise NonFiniteError(f"refusing to checkpoint a state with NaN or Inf values in "
                         f"{len(names)} leaves: {shown}")


# --- Per-shard checksums -----------------------------------------------------------


def _bounds(index: Sequence[slice], shape: Sequence[int]) -> list[list[int]]:
  """A shard's global index (a tuple of slices) as [start, stop) per dimension."""
  return [[int(s.start or 0), int(dim if s.stop is None else s.stop)]
          for s, dim in zip(index, shape)]


def _full_bounds(shape: Sequence[int]) -> list[list[int]]:
  return [[0, int(dim)] for dim in shape]


@dataclasses.dataclass
class _PendingShard:
  """A shard being copied to host memory for hashing; `data` becomes numpy when read."""
  path: str
  dtype: str
  shape: list[int]
  index: list[list[int]]
  data: Any


def _is_host_memory(device) -> bool:
  return device.platform == "cpu"


def _start_host_copies(arrays: list[jax.Array]) -> list:
  """Host copies of single-device arrays, in a form that outlives the arrays, started
  without waiting; np.asarray of an element waits for its copy.

  On a CPU device the array already lies in host memory: a numpy view of it keeps its
  buffer alive and unchanged (XLA neither reuses a buffer with such a view for a donated
  argument nor frees it on delete; orbax's own host copies on CPU rely on this). Other
  devices copy asynchronously into their "pinned_host" memory, into buffers of their own
  (may_alias=False), so that the caller may donate or delete `arrays` at once. A device
  with no such memory gets a blocking copy.
  """
  out, targets = list(arrays), []
  for i, data in enumerate(arrays):
    device = next(iter(data.devices()))
    if _is_host_memory(device):
      out[i] = np.asarray(data)
    elif any(m.kind == "pinned_host" for m in device.addressable_memories()):
      targets.append((i, jax.sharding.SingleDeviceSharding(device, memory_kind="pinned_host")))
    else:
      out[i] = np.array(data)
  if targets:  # One batched call: much cheaper to dispatch than one call per shard.
    copies = jax.device_put([arrays[i] for i, _ in targets], [s for _, s in targets],
                            may_alias=False)
    for (i, _), copy in zip(targets, copies):
      out[i] = copy
  return out


def _start_shard_copies(state) -> list[_PendingShard]:
  """The shards this process must hash (replica 0 of each), their host copies started."""
  pending, device_data = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name, leaf = jax.tree_util.keystr(path), _as_data(leaf)
    if isinstance(leaf, jax.Array):
      shape = list(leaf.shape)
      for shard in leaf.addressable_shards:
        if shard.replica_id == 0:
          pending.append(_PendingShard(name, leaf.dtype.name, shape,
                                       _bounds(shard.index, shape), None))
          device_data.append((len(pending) - 1, shard.data))
    elif jax.process_index() == 0:  # Host values are the same on every process.
      array = np.array(leaf)  # A copy: the caller may change its own after `save`.
      pending.append(_PendingShard(name, array.dtype.name, list(array.shape),
                                   _full_bounds(array.shape), array))
  copies = _start_host_copies([data for _, data in device_data])
  for (i, _), copy in zip(device_data, copies):
    pending[i].data = copy
  return pending


class _ChecksumHandler(ocp.handlers.AsyncCheckpointHandler):
  """Writes this process's shard records to `process_<i>.json`; reads every process's."""

  def _write(self, directory, pending: list[_PendingShard]) -> None:
    shards = []
    while pending:
      shard = pending.pop(0)  # Drop each host copy once hashed.
      shards.append({"path": shard.path, "dtype": shard.dtype, "shape": shard.shape,
                     "index": shard.index, "sha256": _sha256(np.asarray(shard.data))})
    record = {"format": CHECKSUMS_FORMAT, "process_index": jax.process_index(),
              "process_count": jax.process_count(), "shards": shards}
    (directory / f"process_{jax.process_index()}.json").write_text(json.dumps(record))

  async def async_save(self, directory, args: "_ChecksumSave"):
    async def write():  # In orbax's background commit, once the step's folders exist.
      self._write(directory, list(args.pending))
    return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="jaxvna_checksums")]

  def save(self, directory, args: "_ChecksumSave"):
    self._write(directory, list(args.pending))

  def restore(self, directory, args: "_ChecksumRestore | None" = None) -> list[dict]:
    del args
    return [json.loads(path.read_text()) for path in sorted(directory.glob("process_*.json"))]


@ocp.args.register_with_handler(_ChecksumHandler, for_save=True)
@dataclasses.dataclass
class _ChecksumSave(ocp.args.CheckpointArgs):
  pending: list[_PendingShard]


@ocp.args.register_with_handler(_ChecksumHandler, for_restore=True)
@dataclasses.dataclass
class _ChecksumRestore(ocp.args.CheckpointArgs):
  pass


def _shards_from_process_records(records: list[dict]) -> list[dict]:
  """Every process's shard records, checking that no process's file is missing."""
  if not records:
    raise CorruptCheckpointError("the checksum records are missing")
  if any(record.get("format") != CHECKSUMS_FORMAT for record in records):
    raise CorruptCheckpointError("the checksum records are of an unknown format")
  indices = sorted(record["process_index"] for record in records)
  counts = sorted({record["process_count"] for record in records})
  if len(counts) != 1 or indices != list(range(counts[0])):
    raise CorruptCheckpointError(
        f"the checksum records are incomplete (files of processes {indices} of a run of "
        f"{' or '.join(map(str, counts))} processes)")
  return [shard for record in records for shard in record["shards"]]


def _shards_from_legacy_record(record: Mapping[str, Any]) -> list[dict]:
  """A whole-leaf sha256 record (the earlier format) as records of full-array shards."""
  return [{"path": leaf["path"], "dtype": leaf["dtype"], "shape": leaf["shape"],
           "index": _full_bounds(leaf["shape"]), "sha256": leaf["sha256"]}
          for leaf in record["leaves"]]


def _replica0_pieces(leaf: jax.Array) -> list[tuple[list[list[int]], np.ndarray]]:
  """(global bounds, host value) of this process's shards of `leaf` with replica_id 0."""
  shape = list(leaf.shape)
  return [(_bounds(shard.index, shape), np.asarray(shard.data))
          for shard in leaf.addressable_shards if shard.replica_id == 0]


def _local_pieces(leaf) -> list[tuple[list[list[int]], np.ndarray]]:
  """(global bounds, host value) of the blocks of `leaf` that this process checks."""
  if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
    return [(_full_bounds(np.shape(leaf)), np.asarray(leaf))]  # Every block, any layout.
  return _replica0_pieces(leaf)


def _contains(outer: list[list[int]], inner: list[list[int]]) -> bool:
  return all(o0 <= i0 and i1 <= o1 for (o0, o1), (i0, i1) in zip(outer, inner))


def _verify_shards(state, shards: list[dict]) -> None:
  """Raises CorruptCheckpointError if a checkable block of `state` differs from `shards`."""
  recorded = collections.defaultdict(list)
  for shard in shards:
    recorded[shard["path"]].append(shard)
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name, leaf = jax.tree_util.keystr(path), _as_data(leaf)
    leaf = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
    records = recorded.get(name)
    if not records:
      raise CorruptCheckpointError(f"leaf {name} has no integrity record")
    if any(r["dtype"] != leaf.dtype.name or list(r["shape"]) != list(leaf.shape)
           for r in records):
      continue  # Restored into another dtype/shape on purpose: the bytes differ anyway.
    covered = sum(math.prod(stop - start for start, stop in r["index"]) for r in records)
    if covered != math.prod(leaf.shape):
      raise CorruptCheckpointError(
          f"leaf {name}: the checksum records cover {covered} of its "
          f"{math.prod(leaf.shape)} elements")
    pieces = _local_pieces(leaf)
    for record in records:
      for bounds, value in pieces:
        if _contains(bounds, record["index"]):
          block = value[tuple(slice(i0 - o0, i1 - o0) for (i0, i1), (o0, _)
                              in zip(record["index"], bounds))]
          if _sha256(block) != record["sha256"]:
            raise CorruptCheckpointError(
                f"leaf {name} ({record['dtype']}{record['shape']}), shard "
                f"{record['index']}: the restored bytes do not match the sha256 recorded "
                "when the step was saved")
          break


def _agree_on_failure(step: int, error: BaseException | None) -> BaseException | None:
  """`error`, or on a process that restored step `step` a CheckpointError when another
  process could not: each process reads and checks other shards, so a step may fail on
  one process only, and all processes must fall back together (their later collectives
  would otherwise pair up wrongly and hang)."""
  if jax.process_count() == 1:
    return error
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = multihost_utils.process_allgather(np.array([step, error is not None], np.int64))
  gathered = np.asarray(gathered).reshape(-1, 2)
  if (gathered[:, 0] != step).any():
    raise CheckpointError(f"processes tried different checkpoint steps at once "
                          f"({gathered[:, 0].tolist()}); the directory changed during restore?")
  failed = np.flatnonzero(gathered[:, 1])
  if error is None and failed.size:
    return CheckpointError(f"process {int(failed[0])} could not restore or verify this step "
                           "(its warning says why)")
  return error


# --- Checkpointer --------------------------------------------------------------------


def _short(error: BaseException, limit: int = 300) -> str:
  # TensorStore errors embed a whole JSON spec; the first line says what went wrong.
  text = (str(error).strip().splitlines() or [""])[0]
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}"


def _check_abstract_state(abstract_state) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
    if not isinstance(leaf, jax.ShapeDtypeStruct) or leaf.sharding is None:
      raise TypeError(
          f"abstract_state leaf {jax.tree_util.keystr(path)} is {leaf!r}; expected a "
          "jax.ShapeDtypeStruct with a sharding (the layout to restore onto), e.g. "
          "jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))")


class Checkpointer:
  """Saves a training state every few steps and restores the latest valid one.

  Usage (the trainer)::

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=3)
    restored = ckpt.restore(abstract_state)  # None on a fresh run
    if restored is not None:
      step, state, meta = restored
    ...
    ckpt.save(step, state, {"step": step, "data": iterator.get_state()})
    ...
    ckpt.close()  # waits for the last asynchronous save

  To read a directory that may not exist without creating it (an evaluation)::

    with Checkpointer(path, create=False) as ckpt:
      restored = ckpt.restore(abstract_state)  # None if `path` does not exist

  All processes of a multi-process run must call `save` and `restore` together.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True, verify: bool = True,
               create: bool = True):
    """Opens a checkpoint directory.

    Args:
      directory: folder of the step folders; a relative path is made absolute.
      max_to_keep: how many of the newest steps to keep (None keeps all).
      save_interval_steps: `save` writes only steps that are multiples of this
        (pass force=True to write another step, e.g. the last one).
      async_save: write in a background thread once the arrays are copied to host
        memory, so that training continues during the write.
      verify: record each distinct shard's sha256 when saving (hashed in the background
        part of the save) and check the restored shards against the records.
      create: create `directory` if it is missing, and remove the temporary folders that
        killed saves left in it. False is for reading (an evaluation): nothing is created
        or cleaned up (a save that another program is writing is left alone), and a
        missing directory holds no step (`restore` returns None, creating nothing;
        `save` raises FileNotFoundError). An existing directory opened so can still be
        saved to, and `restore` still moves damaged steps aside.
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.verify = verify
    self._manager = None
    if not create and not os.path.isdir(self.directory):
      return  # Nothing to read; orbax would fail on (or create) the missing folder.
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
        preservation_policy=checkpoint_managers.LatestN(max_to_keep),  # None keeps all.
        create=create,
        # Remove what a killed save left behind; a reader must not (it may be in progress).
        cleanup_tmp_directories=create,
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Saves `state` and `meta` as step `step` (asynchronously if so configured).

    Before it returns, `save` checks on the devices that the state is finite, starts
    asynchronous host copies of the shards it will hash, and lets orbax copy the state
    to host memory; the state may then be donated or deleted. Hashing and writing
    continue in the background (`wait` blocks until they end).

    Args:
      step: the training step; must be greater than every step already saved.
      state: pytree of jax Arrays, possibly sharded over a mesh.
      meta: JSON-serialisable dict stored next to the state.
      force: save even if `step` is not a multiple of `save_interval_steps`.

    Returns:
      True if a save was started, False if the interval policy skipped this step or
      `step` is not newer than the latest saved step.

    Raises:
      NonFiniteError: a floating-point leaf holds NaN or Inf (the message names the
        first few); nothing is written.
      TypeError: `meta` is not JSON-serialisable.
      FileNotFoundError: the Checkpointer was opened with create=False on a missing
        directory.
    """
    step = int(step)
    if self._manager is None:
      raise FileNotFoundError(f"{self.directory} does not exist and the Checkpointer was "
                              "opened with create=False")
    if not force and not self._manager.should_save(step):
      return False  # Decide before any work on the state.
    try:
      # A deep copy too: an async save must not see later changes to the caller's dict.
      meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as error:
      raise TypeError(f"checkpoint meta for step {step} is not JSON-serialisable: {error}"
                      ) from error
    _check_finite(state)
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if self.verify:
      items[CHECKSUMS_ITEM] = _ChecksumSave(_start_shard_copies(state))
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state) -> tuple[int, Any, dict] | None:
    """Restores the latest valid step onto the shardings of `abstract_state`.

    A step that fails to restore or to verify is reported with a
    `CheckpointFallbackWarning` naming the step and the error, moved aside to
    `<step>.corrupt-<time>/`, and the previous step is tried.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with `sharding` set, of the same
        structure as the saved state; the shardings may use any mesh (another device
        count included).

    Returns:
      (step, state, meta), or None when the directory holds no finished step (or does
      not exist and was opened with create=False).

    Raises:
      CheckpointError: steps exist but none could be restored (the message lists
        each step's error).
    """
    _check_abstract_state(abstract_state)
    if self._manager is None:
      return None
    self._manager.wait_until_finished()
    self._manager.reload()  # See steps written or removed by another process.
    failures = []  # (step, short description of its error)
    steps = sorted(self._manager.all_steps(), reverse=True)
    for position, step in enumerate(steps):
      error = None
      try:
        state, meta = self._restore_step(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        # Anything that stops a step from loading makes it unusable; try the previous.
        error = e
      error = _agree_on_failure(step, error)
      if error is not None:
        failures.append((step, _short(error)))
        then = ("falling back to the previous step" if position + 1 < len(steps)
                else "there is no earlier step to fall back to")
        warnings.warn(
            f"checkpoint step {step} in {self.directory} could not be restored "
            f"({failures[-1][1]}); {then}", CheckpointFallbackWarning, stacklevel=2)
        error = None  # Keep no reference to the failed read (see gc.collect below).
        continue
      if failures:
        # A failed orbax read leaves abandoned coroutines behind; collect them now (the
        # errors are no longer referenced) so that Python's "Exception ignored in
        # <coroutine ...>" notes appear next to the warning, not at some later moment.
        gc.collect()
        self._set_aside([s for s, _ in failures])
      return step, state, meta
    if failures:
      gc.collect()  # As above.
      details = "\n".join(f"  step {s}: {e}" for s, e in failures)
      which = ("its only step" if len(failures) == 1
               else f"all {len(failures)} steps")
      raise CheckpointError(f"no checkpoint in {self.directory} could be restored "
                            f"({which} failed):\n{details}")
    return None

  def _records_item(self, step: int) -> str:
    """The name of the checksum item that step `step` holds."""
    step_dir = os.path.join(self.directory, str(step))
    for name in (CHECKSUMS_ITEM, LEGACY_INTEGRITY_ITEM):
      if os.path.isdir(os.path.join(step_dir, name)):
        return name
    raise CorruptCheckpointError("the integrity record is missing")

  def _restore_step(self, step: int, abstract_state) -> tuple[Any, dict]:
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if self.verify:
      records_item = self._records_item(step)
      items[records_item] = (_ChecksumRestore() if records_item == CHECKSUMS_ITEM
                             else ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if self.verify:
      error = None
      try:
        if records_item == CHECKSUMS_ITEM:
          shards = _shards_from_process_records(restored[CHECKSUMS_ITEM])
        else:
          shards = _shards_from_legacy_record(restored[LEGACY_INTEGRITY_ITEM])
        _verify_shards(restored.state, shards)
      except CorruptCheckpointError as e:
        error = e
      except (KeyError, TypeError, ValueError) as e:  # A record of an unexpected form.
        error = CorruptCheckpointError(f"the checksum records are unreadable ({_short(e)})")
      if error is not None:
        raise error
    if not isinstance(restored.meta, dict):
      raise CorruptCheckpointError(f"meta is {type(restored.meta).__name__}, not a dict")
    return restored.state, restored.meta

  def _set_aside(self, steps: Iterable[int]) -> None:
    """Renames bad step folders so that orbax neither lists nor collides with them."""
    steps = list(steps)
    if not steps:
      return
    if jax.process_index() == 0:
      stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}"
      for step in steps:
        path = os.path.join(self.directory, str(step))
        if os.path.isdir(path):
          os.replace(path, f"{path}{CORRUPT_SUFFIX}{stamp}")
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("jaxvna_checkpoint_set_aside")
    self._manager.reload()

  def latest_step(self) -> int | None:
    """The newest finished (or in-flight) step, or None; it is not checked for damage."""
    return None if self._manager is None else self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return [] if self._manager is None else sorted(self._manager.all_steps())

  def wait(self) -> None:
    """Blocks until an asynchronous save has been written and finalised."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    if self._manager is not None:
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# --- Workdir guard -------------------------------------------------------------------


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping) and tree:
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _is_resumable(key: str, patterns: Iterable[str]) -> bool:
  return any(key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p)
             for p in patterns)


def check_workdir(workdir: str | os.PathLike, config_dict: Mapping[str, Any], *,
                  force: bool = False,
                  resumable_keys: Iterable[str] = DEFAULT_RESUMABLE_KEYS) -> None:
  """Refuses to resume a workdir that holds a run of another config.

  The first call writes `workdir/config.json` (creating `workdir`). Later calls compare
  the stored config with `config_dict`, key by dotted key (e.g. "train.lr"), ignoring
  keys that match `resumable_keys`; on any other difference they raise, unless `force`,
  in which case the new config replaces the stored one. When only resumable keys differ
  the stored file is updated to the new config.

  Args:
    workdir: the run's folder.
    config_dict: the run's config as nested dicts (e.g. `config.to_dict()`); values
      that JSON cannot hold are stored as their str().
    force: reuse the workdir whatever it holds.
    resumable_keys: patterns of keys that may change on resume: a key matches a pattern
      equal to it, a prefix of it at a dot ("eval" covers "eval.batch_size"), or an
      fnmatch pattern ("*.log_every").

  Raises:
    WorkdirConfigError: the configs differ in a non-resumable key (the message names
      each such key with its stored and new values), or config.json is unreadable.
  """
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  # The round trip gives the stored form (tuples become lists) so the two compare alike.
  new = json.loads(json.dumps(config_dict, sort_keys=True, default=str))
  if not os.path.exists(path) or force:
    files.write_json(path, new, indent=2, sort_keys=True)
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as error:
    raise WorkdirConfigError(
        f"{path} is unreadable ({error}); pass force=True (--force) to replace it") from error
  old_flat, new_flat = _flatten(old), _flatten(new)
  missing = object()
  differing = sorted(
      key for key in set(old_flat) | set(new_flat)
      if old_flat.get(key, missing) != new_flat.get(key, missing)
      and not _is_resumable(key, resumable_keys))
  if differing:
    lines = "\n".join(
        f"  {key}: stored {old_flat.get(key, '<absent>')!r}, now {new_flat.get(key, '<absent>')!r}"
        for key in differing)
    raise WorkdirConfigError(
        f"workdir {workdir} holds a run of another config ({path}); differing keys:\n"
        f"{lines}\nUse another workdir, or pass force=True (--force) to reuse it.")
  if old != new:
    files.write_json(path, new, indent=2, sort_keys=True)
