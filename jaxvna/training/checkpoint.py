"""Crash-safe checkpoints of a training state, and a guard against reusing a workdir.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager`. Each step is saved as three
items in `directory/<step>/`:

  state      the pytree of jax Arrays (orbax StandardSave; sharded arrays are written by
             the devices that hold them and can be restored onto any other mesh);
  meta       a JSON dict (grain iterator state, config hash, step, ...);
  integrity  a JSON record of every leaf's path, dtype, shape and sha256, so that a
             checkpoint whose bytes changed after it was written is detected on restore
             (orbax/tensorstore notice truncated or missing files, but not every flipped
             byte inside a compressed chunk).

Why it survives a kill at any moment: orbax writes a step into
`<step>.orbax-checkpoint-tmp-<timestamp>/` and renames it to `<step>/` only once every
file is written, so an unfinished save is never listed as a step (and its temporary
folder is removed when the next `Checkpointer` opens the directory). A finished step
that was damaged later (missing, truncated or garbled files) fails to restore or to
verify; `restore` then warns with `CheckpointFallbackWarning`, moves the bad step aside
to `directory/<step>.corrupt-<time>/` (kept for inspection, invisible to orbax, and out
of the way of the next save of that step) and falls back to the previous step. When no
step can be restored, `restore` raises `CheckpointError` listing every step's error:
silently starting over would throw away a run that may only need a fix (a mismatched
`abstract_state`, for instance, makes every step fail the same way).

`params_digest` is a sharding-independent fingerprint of a pytree (used by summary.json to
show that a killed and resumed run ends with the same parameters), and `check_workdir`
refuses to resume a workdir that holds a run of another config.
"""

from __future__ import annotations

import fnmatch
import gc
import hashlib
import json
import os
import time
import warnings
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

CONFIG_FILE = "config.json"
CORRUPT_SUFFIX = ".corrupt-"

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
  """No checkpoint in a directory could be restored."""


class CorruptCheckpointError(RuntimeError):
  """A restored leaf's bytes differ from those recorded when the step was saved."""


class CheckpointFallbackWarning(UserWarning):
  """The latest checkpoint was unreadable; an older one was restored instead."""


class WorkdirConfigError(ValueError):
  """A workdir holds a run of a different config."""


# --- Fingerprints ------------------------------------------------------------------


def _host_leaves(tree) -> list[tuple[str, np.ndarray]]:
  """(key path, host numpy copy) of every leaf of `tree`, in tree-flatten order."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      # Arrays spread over several processes: gather the global value on every host.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    out.append((jax.tree_util.keystr(path), np.asarray(leaf)))
  return out


def _bytes_view(array: np.ndarray) -> np.ndarray:
  # reshape(-1) first: a 0-d array cannot be re-viewed as a different item size.
  return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _leaf_sha256(array: np.ndarray) -> str:
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


def _integrity_record(state) -> dict:
  return {"leaves": [{"path": path, "dtype": array.dtype.name, "shape": list(array.shape),
                      "sha256": _leaf_sha256(array)} for path, array in _host_leaves(state)]}


def _verify_integrity(state, record: Mapping[str, Any]) -> None:
  """Raises CorruptCheckpointError if a restored leaf's bytes differ from `record`."""
  saved = {leaf["path"]: leaf for leaf in record["leaves"]}
  for path, array in _host_leaves(state):
    if path not in saved:
      raise CorruptCheckpointError(f"leaf {path} has no integrity record")
    leaf = saved[path]
    if leaf["dtype"] != array.dtype.name or list(array.shape) != leaf["shape"]:
      continue  # Restored into another dtype/shape on purpose: the bytes differ anyway.
    if _leaf_sha256(array) != leaf["sha256"]:
      raise CorruptCheckpointError(
          f"leaf {path} ({leaf['dtype']}{leaf['shape']}): the restored bytes do not match "
          "the sha256 recorded when the step was saved")


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

  All processes of a multi-process run must call `save` and `restore` together.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True, verify: bool = True):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: folder of the step folders; a relative path is made absolute.
      max_to_keep: how many of the newest steps to keep (None keeps all).
      save_interval_steps: `save` writes only steps that are multiples of this
        (pass force=True to write another step, e.g. the last one).
      async_save: write in a background thread once the arrays are copied to host
        memory, so that training continues during the write.
      verify: record each leaf's sha256 when saving (a blocking host copy of the state)
        and check it when restoring.
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.verify = verify
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
        preservation_policy=checkpoint_managers.LatestN(max_to_keep),  # None keeps all.
        create=True,
        cleanup_tmp_directories=True,  # Remove what a killed save left behind.
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Saves `state` and `meta` as step `step` (asynchronously if so configured).

    Args:
      step: the training step; must be greater than every step already saved.
      state: pytree of jax Arrays, possibly sharded over a mesh.
      meta: JSON-serialisable dict stored next to the state.
      force: save even if `step` is not a multiple of `save_interval_steps`.

    Returns:
      True if a save was started, False if the interval policy skipped this step or
      `step` is not newer than the latest saved step.
    """
    step = int(step)
    if not force and not self._manager.should_save(step):
      return False  # Decide before the (blocking) host copy for the integrity record.
    try:
      # A deep copy too: an async save must not see later changes to the caller's dict.
      meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as error:
      raise TypeError(f"checkpoint meta for step {step} is not JSON-serialisable: {error}"
                      ) from error
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if self.verify:
      items["integrity"] = ocp.args.JsonSave(_integrity_record(state))
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
      (step, state, meta), or None when the directory holds no finished step.

    Raises:
      CheckpointError: steps exist but none could be restored (the message lists
        each step's error).
    """
    _check_abstract_state(abstract_state)
    self._manager.wait_until_finished()
    self._manager.reload()  # See steps written or removed by another process.
    failures = []  # (step, short description of its error)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, meta = self._restore_step(step, abstract_state)
      except Exception as error:  # pylint: disable=broad-except
        # Anything that stops a step from loading makes it unusable; try the previous.
        failures.append((step, _short(error)))
        warnings.warn(
            f"checkpoint step {step} in {self.directory} could not be restored "
            f"({failures[-1][1]}); falling back to the previous step",
            CheckpointFallbackWarning, stacklevel=2)
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
      raise CheckpointError(f"no checkpoint in {self.directory} could be restored (all "
                            f"{len(failures)} steps failed):\n{details}")
    return None

  def _restore_step(self, step: int, abstract_state) -> tuple[Any, dict]:
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if self.verify:
      items["integrity"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if self.verify:
      if restored.integrity is None:
        raise CorruptCheckpointError("the integrity record is missing")
      _verify_integrity(restored.state, restored.integrity)
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
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self._manager.all_steps())

  def wait(self) -> None:
    """Blocks until an asynchronous save has been written and finalised."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
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


def _atomic_write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)  # Atomic: a reader sees the old file or the new one, never half.


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
    _atomic_write_json(path, new)
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
    _atomic_write_json(path, new)
