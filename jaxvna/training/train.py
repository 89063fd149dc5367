"""The trainer: one readable file that follows the life of a run.

Sections: workdir and logging; mesh; input; model and optimiser; the step (one jitted
pure function with donated state); checkpoints; evaluation; the loop. The method a run
trains is looked up by name (`registry.get(config.method)`); the commands (`jaxvna demo`,
`scaling`, `bench`, `dryrun`, the methods' own verbs) are built on top of this file.

Multi-process runs (`distributed`): every process runs this same code on one mesh over
all devices, reads only its rows of each batch, and saves and restores checkpoints
together with the others; process 0 alone writes the workdir's logs and results.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxvna import errors, files, registry
from jaxvna.data import Dataset, dataset as dataset_lib, pipeline, readers, resident
from jaxvna.evaluation import discriminative
from jaxvna.models import towers
from jaxvna.training import (checkpoint, distributed, preflight, provenance, summaries,
                             workdir_lock)

# What a resumed run may change: how long it runs, how often it logs and saves, which of
# its steps are profiled, how its input is computed (both placements draw the same
# batches), and its evaluations.
RESUMABLE_KEYS = ("train.steps", "train.checkpoint_every", "train.log_every",
                  "train.profile_steps", "train.steps_per_call", "data.placement",
                  "data.device_memory_mb", "data.read_threads", "data.worker_processes",
                  "eval", "interpret", "select")


# ----------------------------------------------------------------------------
# Workdir and logging
# ----------------------------------------------------------------------------

def check_workdir(config, workdir: pathlib.Path, *, force: bool = False) -> None:
  """`checkpoint.check_workdir` for a run of one or several processes.

  Process 0 alone checks and writes workdir/config.json (no two processes race on it);
  the others learn its verdict, so they all raise together rather than wait for a
  process that has stopped. Every process must be given the same config and workdir.

  Raises:
    checkpoint.WorkdirConfigError: the workdir holds a run of another config.
    AssertionError: the processes were given different configs or workdirs.
  """
  config_dict = config.to_dict()
  if jax.process_count() == 1:
    checkpoint.check_workdir(workdir, config_dict, force=force, resumable_keys=RESUMABLE_KEYS)
    return
  from jax.experimental import multihost_utils
  run = json.dumps([str(workdir), config_dict], sort_keys=True, default=str).encode()
  multihost_utils.assert_equal(np.frombuffer(hashlib.sha256(run).digest(), np.uint8),
                               "the processes of this run were given different configs or "
                               "workdirs")
  error = None
  if distributed.is_primary():
    try:
      checkpoint.check_workdir(workdir, config_dict, force=force, resumable_keys=RESUMABLE_KEYS)
    except checkpoint.WorkdirConfigError as e:
      error = e
  refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
  if error is not None:
    raise error
  if refused:
    raise checkpoint.WorkdirConfigError(f"workdir {workdir}: refused by process 0 (see its error)")


def local_copy(tree):
  """`tree` with every array spread over several processes gathered onto this process's
  first device, for computations that each process runs alone (evaluation); arrays this
  process holds entirely are returned as they are."""
  def local(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      from jax.experimental import multihost_utils
      return jax.device_put(multihost_utils.process_allgather(leaf, tiled=True),
                            jax.local_devices()[0])
    return leaf
  return jax.tree.map(local, tree)


class MetricsLog:
  """Appends one JSON object per logged step to workdir/metrics.jsonl, and the same
  numbers as TensorBoard scalars `train/<name>` to the workdir's event files
  (`summaries`).

  Rows past `after_step` (logged by an earlier attempt after its last checkpoint, and
  about to be logged again by the resumed run) are dropped first, so each step appears
  once; TensorBoard is told to ignore that attempt's events past `after_step` likewise.
  """

  def __init__(self, path: pathlib.Path, *, after_step: int = 0):
    if path.exists():
      rows = path.read_text().splitlines(keepends=True)
      kept = [r for r in rows if _logged_step(r) <= after_step]
      if len(kept) != len(rows):
        files.write_text(path, "".join(kept))
    self._file = open(path, "a")
    self._events = summaries.EventWriter(path.parent, purge_after=after_step)

  def write(self, step: int, metrics: dict) -> None:
    row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    self._events.scalars(step, {k: v for k, v in row.items() if k != "step"})

  def close(self):
    self._file.close()
    self._events.close()


def _logged_step(row: str) -> float:
  """The step of a metrics.jsonl row; a torn last row (a kill mid-write) counts as past."""
  try:
    return json.loads(row)["step"]
  except (ValueError, KeyError, TypeError):
    return float("inf")


# ----------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------

def make_mesh(devices=None) -> jax.sharding.Mesh:
  """`devices` (default: all) on one "data" axis; parameters are replicated, batches
  split."""
  count = jax.device_count() if devices is None else len(devices)
  return jax.make_mesh((count,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


# ----------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------

SOURCES = ("reader", "prepared")


def load_dataset(config) -> Dataset:
  """The configured dataset in memory: read by its reader (or the simulator), or, with
  `data.source="prepared"`, from the prepared TFDS copy in `data.prepared_dir`."""
  if prepared_source(config):
    from jaxvna.data import tfds_builders
    return tfds_builders.read_prepared(config.data.prepared_dir)
  return readers.load(config.data.kind, **config.data.kwargs)


def prepared_source(config) -> bool:
  """Whether the run reads a prepared copy (`data.source`), with a clear error if unknown."""
  source = config.data.source
  if source not in SOURCES:
    raise errors.ConfigError(f"config.data.source: unknown {source!r}; expected one of "
                             f"{SOURCES}")
  if source == "prepared" and not config.data.prepared_dir:
    raise errors.ConfigError("config.data.prepared_dir: empty; data.source='prepared' reads "
                             "the folder that `jaxvna data --prepare_dir=D` printed")
  return source == "prepared"


PLACEMENTS = ("host", "device", "sharded", "auto")


def choose_placement(config, dataset: Dataset, num_devices: int) -> str:
  """`data.placement`, with "auto" resolved: "device" (the split replicated on every
  device) when it fits `data.device_memory_mb` per device, else "sharded" (images and
  responses split by rows over the devices) when that fits, else "host"."""
  placement = config.data.placement
  if placement not in PLACEMENTS:
    raise errors.ConfigError(f"config.data.placement: unknown {placement!r}; expected one "
                             f"of {PLACEMENTS}")
  if placement != "auto":
    return placement
  for candidate, shards in (("device", 1), ("sharded", num_devices)):
    size_mb = resident.expected_nbytes(dataset, "train", fraction=config.data.train_fraction,
                                       response_mode=config.data.response_mode,
                                       shards=shards) / 2**20
    if size_mb <= config.data.device_memory_mb:
      return candidate
  return "host"


def make_input(config, dataset: Dataset, mesh):
  """The training input of `config.data.placement` (`choose_placement`): a `HostInput`
  (grain reads and assembles batches on the host, from the prepared copy's records with
  `data.source="prepared"`) or a `DeviceInput` (the split on the devices, replicated or
  sharded, batches drawn inside the step)."""
  placement = choose_placement(config, dataset, mesh.size)
  if placement in ("device", "sharded"):
    return DeviceInput(config, resident.arrays(
        dataset, "train", fraction=config.data.train_fraction, subset_seed=config.seed,
        response_mode=config.data.response_mode), mesh, sharded=placement == "sharded")
  if prepared_source(config):  # the copy's records, read by grain from ArrayRecord
    from jaxvna.data import tfds_builders
    source = tfds_builders.PreparedSource(config.data.prepared_dir, "train",
                                          fraction=config.data.train_fraction,
                                          subset_seed=config.seed)
  else:
    source = pipeline.DatasetSource(dataset, "train", fraction=config.data.train_fraction,
                                    subset_seed=config.seed)
  return HostInput(pipeline.make_train_iterator(
      source, global_batch_size=config.train.batch_size, mesh=mesh, seed=config.seed,
      response_mode=config.data.response_mode, num_threads=config.data.read_threads,
      worker_processes=config.data.worker_processes))


class HostInput:
  """Batches read by the host pipeline; each call of the step takes the next n of them."""

  data = None  # nothing resident on the devices

  def __init__(self, batches: pipeline.TrainIterator):
    self._batches = batches

  def call_inputs(self, first_step: int, n: int) -> tuple:
    del first_step  # the iterator knows where it is
    return tuple(next(self._batches) for _ in range(n))

  def get_state(self) -> dict:
    return self._batches.get_state()

  def set_state(self, state: dict, step: int) -> None:
    self._batches.set_state({**state, "next_batch": step})

  def close(self) -> None:
    self._batches.close()


class DeviceInput:
  """The training split resident on the devices (`jaxvna.data.resident`), replicated or
  split by rows (`sharded`): a call of the step gets only the small integers that locate
  its steps' batches in the stream. Its batches are the host pipeline's, so each input
  resumes the others' checkpoints."""

  def __init__(self, config, arrays: resident.Resident, mesh, *, sharded: bool = False):
    self.data = resident.place(arrays, mesh, sharded=sharded)
    self._num_members = np.asarray(arrays.num_members)
    self._batch_size = config.train.batch_size
    self.draw = functools.partial(
        resident.draw, seed=config.seed, batch_size=self._batch_size,
        response_mode=config.data.response_mode, weighting="size",
        sharding=NamedSharding(mesh, P("data")), sharded_mesh=mesh if sharded else None)
    # The fields of the host pipeline's state that fix the stream.
    self._fingerprint = {"seed": int(config.seed), "global_batch_size": int(self._batch_size),
                         "response_mode": config.data.response_mode,
                         "subject_weighting": "size", "num_epochs": None,
                         "num_records": len(arrays.subjects)}

  def call_inputs(self, first_step: int, n: int) -> np.ndarray:
    """(n, 2) uint32 stream offsets of steps first_step .. first_step + n - 1."""
    return np.stack([resident.stream_offsets(first_step + k, self._batch_size,
                                             self._num_members, "size") for k in range(n)])

  def get_state(self) -> dict:
    return dict(self._fingerprint)

  def set_state(self, state: dict, step: int) -> None:
    del step  # a step's batch depends on nothing else
    pipeline.check_fingerprint(state, self._fingerprint)

  def close(self) -> None:
    pass  # the resident arrays go with the object


# ----------------------------------------------------------------------------
# Model and optimiser
# ----------------------------------------------------------------------------

@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_model(config, dataset: Dataset, aux=None):
  """The module of `config.method` for the dataset's neuron counts and image shape."""
  return registry.get(config.method).build_model(config, dataset, aux)


def prepare(config, dataset: Dataset):
  """What `config.method` computes once from its training data before the model is built
  (`registry.Method.prepare`: miVAE's neuron table; None for most methods)."""
  return registry.get(config.method).prepare(config, dataset)


def make_objective(config, model, mesh, aux=None):
  """The objective of `config.method`: (params, batch, rng, step) -> (loss, metrics)."""
  return registry.get(config.method).objective(config, model, mesh, aux)


def learning_rate_schedule(config) -> optax.Schedule:
  """Warmup + cosine decay: the learning rate of the n-th applied update is schedule(n - 1)."""
  o = config.optim
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
      decay_steps=max(o.decay_steps or config.train.steps, o.warmup_steps + 1),
      end_value=o.lr * o.final_lr_fraction)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay and global-norm clipping; non-finite updates skipped.

  Frozen parameters (`towers.trained_mask`: a pretrained tower's locked weights and its
  BatchNorm statistics) get no weight decay; their gradient is zero (they sit behind
  stop_gradient), so Adam's update of them is exactly zero too and they never move.
  """
  o = config.optim
  mask = towers.trained_mask if towers.has_frozen_params(config.get("model", {})) else None
  tx = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                   optax.adamw(learning_rate_schedule(config), weight_decay=o.weight_decay,
                               mask=mask))
  # A NaN/Inf gradient (for example from a corrupt batch) leaves the parameters as they
  # were and is counted in the optimiser state, reported as `skipped_steps`. The wrapper
  # never gives up and applies a non-finite update (its counter saturates below this
  # bound); the loop stops the run after `optim.max_consecutive_nonfinite` skips instead.
  return optax.apply_if_finite(tx, max_consecutive_errors=np.iinfo(np.int32).max)


def init_state(config, model, tx, dataset: Dataset, aux=None) -> TrainState:
  args = registry.get(config.method).init_args(config, dataset, aux)
  rng = jax.random.key(config.seed)
  params = model.init({"params": rng, "dropout": rng, "latent": rng}, *args,
                      train=False)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_state(init_fn, sharding) -> TrainState:
  """The TrainState that `init_fn()` would build, as ShapeDtypeStruct leaves placed with
  `sharding` (for checkpoint restores and compiling without data); nothing is computed."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(init_fn))


# ----------------------------------------------------------------------------
# Step
# ----------------------------------------------------------------------------

def make_train_step(config, objective, tx):
  """The single jitted update: (state, batch) -> (state, metrics), state donated."""
  return jax.jit(_update(config, objective, tx), donate_argnums=(0,))


def make_train_call(config, objective, tx, draw=None):
  """Several updates in one jitted call (`lax.scan`), state donated.

  (state, data, inputs) -> (state, metrics). Host input: `data` is None and `inputs` a
  tuple of n batches. Device input: `data` is the resident split and `inputs` the (n, .)
  stream offsets that `draw(data, offsets, step)` turns into each step's batch. The
  metrics are the last step's, with `nonfinite_streak` the longest streak of the call.
  One update (n = 1) is the update of `make_train_step`, not a scan of one.
  """
  update = _update(config, objective, tx)

  def one(state, data, x):
    return update(state, x if draw is None else draw(data, x, state.step))

  def call(state: TrainState, data, inputs):
    if len(inputs) == 1:
      return one(state, data, inputs[0])
    if draw is None:
      inputs = jax.tree.map(lambda *xs: jnp.stack(xs), *inputs)
    state, metrics = jax.lax.scan(lambda s, x: one(s, data, x), state, inputs)
    last = jax.tree.map(lambda m: m[-1], metrics)
    return state, dict(last, nonfinite_streak=metrics["nonfinite_streak"].max())

  return jax.jit(call, donate_argnums=(0,))


def _update(config, objective, tx):
  """One update (state, batch) -> (state, metrics), not jitted."""
  base_rng = jax.random.key(config.seed + 1)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch, rng,
                                                                     state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   skipped_steps=opt_state.total_notfinite,
                   nonfinite_streak=opt_state.notfinite_count)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


# ----------------------------------------------------------------------------
# Loop
# ----------------------------------------------------------------------------

def train(config, workdir: str | os.PathLike, *, dataset: Dataset | None = None,
          force: bool = False):
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  The workdir is held by this run for its whole length (`workdir_lock`); the config and
  what the data must provide are checked before anything is compiled.

  Returns (model, params, dataset).

  Raises:
    errors.ConfigError, DataError: the config or the data cannot work (nothing written).
    workdir_lock.WorkdirLockedError: another live run holds the workdir.
    errors.NonFiniteError: `optim.max_consecutive_nonfinite` steps in a row had
      non-finite gradients; the checkpoints hold the last finite parameters.
  """
  preflight.check_config(config)
  workdir = pathlib.Path(workdir)
  with workdir_lock.hold(workdir, command=f"train {config.method}"):
    return _train(config, workdir, dataset=dataset, force=force)


def _train(config, workdir: pathlib.Path, *, dataset: Dataset | None, force: bool):
  from tqdm import auto as tqdm
  profiled = summaries.profile_steps(config) is not None  # a malformed value stops here
  dataset = dataset if dataset is not None else load_dataset(config)
  mesh = make_mesh()
  preflight.check_training_data(config, dataset, mesh.size)
  check_workdir(config, workdir, force=force)
  primary = distributed.is_primary()

  aux = prepare(config, dataset)
  model = make_model(config, dataset, aux)
  tx = make_optimizer(config)
  replicated = NamedSharding(mesh, P())
  # One compiled program (not one per operation) that every process runs, each building
  # its devices' copies of the replicated state; the values equal the eager init's.
  initial_state = jax.jit(lambda: init_state(config, model, tx, dataset, aux),
                          out_shardings=replicated)
  batches = make_input(config, dataset, mesh)
  call_fn = make_train_call(config, make_objective(config, model, mesh, aux), tx,
                            getattr(batches, "draw", None))

  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints)
  restored = ckpt.restore(abstract_state(initial_state, replicated))
  if restored is not None:
    step, state, meta = restored
    batches.set_state(meta["input_state"], step)
    logging.info("resumed from step %d", step)
  else:
    state = initial_state()
  start = int(state.step)
  log = MetricsLog(workdir / "metrics.jsonl", after_step=start) if primary else None
  schedule = jax.jit(learning_rate_schedule(config))  # one small program, not op by op
  total = config.train.steps
  try:
    with jax.set_mesh(mesh), tqdm.tqdm(total=total, initial=start, desc=config.method,
                                       disable=not (config.train.progress_bar and primary)
                                       ) as bar:
      def after_call(step, n, state, metrics, streak):
        bar.update(n)
        if streak >= config.optim.max_consecutive_nonfinite:
          raise errors.NonFiniteError(nonfinite_message(config, step, streak,
                                                        jax.device_get(metrics),
                                                        ckpt.latest_step()))
        if step % config.train.log_every == 0 or step == total:
          host = jax.device_get(metrics)  # replicated scalars: every process holds them
          if log is not None:
            # The rate of the last applied update (skipped ones leave the schedule's count),
            # from the schedule on the host: the jitted step stays as it is.
            applied = step - int(host["skipped_steps"])
            log.write(step, dict(host, learning_rate=float(schedule(max(applied - 1, 0)))))
          bar.set_postfix(loss=f"{float(host['loss']):.3f}")
          if streak:
            logging.warning("step %d: non-finite gradients; the update was skipped", step)
        if step % config.train.checkpoint_every == 0 or step == total:
          ckpt.save(step, state, {"input_state": batches.get_state(), "step": step})

      # Only process 0 traces (the others split their calls at the profiled steps alike).
      profiling = ({"profile_dir": workdir / summaries.PROFILE_DIR}
                   if profiled and primary else {})
      state = run_calls(config, call_fn, state, batches, start, total, after_call, **profiling)
  finally:
    batches.close()
    ckpt.close()  # waits for a save in flight, also when the run stops with an error
    if log is not None:
      log.close()
  params = state.params
  summary = {"method": config.method, "steps": int(state.step),
             # Every process takes part: the digest gathers arrays across processes.
             "params_digest": checkpoint.params_digest(params),
             "skipped_steps": int(jax.device_get(state.opt_state.total_notfinite))}
  if primary:
    files.write_json(workdir / "summary.json", summary)
  return model, params, dataset


# Backends where the host waits for every call: back-to-back sharded calls on XLA:CPU can
# stall in a collective unless what is in flight is bounded (benchmarks/cpu_stall.py).
SYNC_EVERY_CALL_BACKENDS = ("cpu",)


def run_calls(config, call_fn, state, batches, start: int, stop: int, after_call=None, *,
              profile_dir: pathlib.Path | None = None):
  """The training loop proper: calls of `call_fn` from step `start` to `stop`.

  A call runs up to train.steps_per_call updates and ends at every log and checkpoint
  step, so what is logged and saved does not depend on it. The host waits for the devices
  only at those steps and at `stop` (on the backends of SYNC_EVERY_CALL_BACKENDS after
  every call as well); there `after_call(step, n, state, metrics, streak)` runs (logging,
  checkpoints, the non-finite guard), with n the updates since it last ran and `streak`
  the longest run of skipped updates among them.

  Profiling (`train.profile_steps = "A:B"`): calls also end before step A and at step B,
  so that exactly steps A..B run inside a `jax.profiler` trace written to `profile_dir`
  (None: this process traces nothing); the trace waits for the devices at its ends. Each
  call is a `StepTraceAnnotation("train", step_num=<its first step>)`.

  Returns the final state.
  """
  every_call = jax.default_backend() in SYNC_EVERY_CALL_BACKENDS
  span = summaries.profile_steps(config)
  step, since, worst, tracing = start, 0, None, False
  try:
    while step < stop:
      n = min(config.train.steps_per_call, stop - step,
              _until_multiple(step, config.train.log_every),
              _until_multiple(step, config.train.checkpoint_every),
              _until_profile_edge(step, span))
      if profile_dir is not None and not tracing and span[0] <= step + 1 <= span[1]:
        jax.block_until_ready(state)  # earlier calls stay out of the trace
        jax.profiler.start_trace(str(profile_dir), create_perfetto_trace=True)
        tracing = True
      with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
        state, metrics = call_fn(state, batches.data, batches.call_inputs(step, n))
      step, since = step + n, since + n
      if tracing and step >= span[1]:
        jax.block_until_ready((state, metrics))  # the trace holds the devices' work
        tracing = False
        jax.profiler.stop_trace()
      # The streak counts consecutive skipped updates across calls, so the maximum over the
      # calls since the last wait misses none; it stays on the device until then.
      streak = metrics["nonfinite_streak"]
      worst = streak if worst is None else jnp.maximum(worst, streak)
      if every_call or step == stop or step % config.train.log_every == 0 or (
          step % config.train.checkpoint_every == 0):
        longest = int(jax.device_get(worst))  # waits for the call
        if after_call is not None:
          after_call(step, since, state, metrics, longest)
        since, worst = 0, None
  finally:
    if tracing:  # the run stopped (an error, or `stop`) inside the profiled steps
      jax.profiler.stop_trace()
  return state


def _until_multiple(step: int, every: int) -> int:
  """Updates from `step` to the next multiple of `every`."""
  return every - step % every


def _until_profile_edge(step: int, span: tuple[int, int] | None) -> int | float:
  """Updates from `step` to the next edge of the profiled steps (A - 1 or B), or inf."""
  if span is None:
    return float("inf")
  first, last = span
  return next((edge - step for edge in (first - 1, last) if edge > step), float("inf"))


def nonfinite_message(config, step: int, streak: int, metrics: dict,
                      checkpoint_step: int | None) -> str:
  """Why a run stopped after `streak` non-finite steps, and what to check."""
  bad = sorted(k for k, v in metrics.items()
               if k not in ("nonfinite_streak", "skipped_steps") and not np.isfinite(v))
  loss_terms = [k for k in bad if k != "grad_norm"]
  if loss_terms:
    cause = f"the loss overflowed (non-finite: {', '.join(loss_terms)})"
  else:
    cause = "the gradient overflowed (grad_norm is non-finite) while the loss was finite"
  kept = (f"the newest checkpoint, step {checkpoint_step}, holds the last finite parameters"
          if checkpoint_step is not None else "no checkpoint was written")
  preprocess = config.get("model", {}).get("neural_tower", {}).get("preprocess")
  fields = [f"data.kind={config.data.kind!r} (responses: huge, NaN or Inf values?)"]
  if preprocess is not None:
    fields.append(f"model.neural_tower.preprocess={preprocess!r}")
  fields += [f"optim.lr={config.optim.lr}", f"optim.clip_norm={config.optim.clip_norm}"]
  if config.get("model", {}).get("dtype") is not None:
    fields.append(f"model.dtype={config.model.dtype!r}")
  return (f"training stopped at step {step}: {streak} steps in a row "
          f"(config.optim.max_consecutive_nonfinite={config.optim.max_consecutive_nonfinite}) "
          f"had non-finite gradients and were skipped; {cause}. No non-finite update was "
          f"applied; {kept}. Check {', '.join(fields)}.")


def training_dataset(config, dataset: Dataset) -> Dataset:
  """The subjects a run trains on (all of them, except e.g. miVAE's held-out subjects)."""
  return registry.get(config.method).training_subjects(config, dataset)


def evaluate(config, model, params, dataset: Dataset, workdir) -> dict:
  """{name: results} of `config.method` on held-out data (`registry.Method.evaluate`)."""
  method = registry.get(config.method)
  if method.evaluate is not None:
    return method.evaluate(config, model, params, dataset, workdir)
  if method.represent is not None:
    return {config.method: discriminative.evaluate_model(
        config, dataset, method.represent(config, model, params))}
  raise errors.ConfigError(f"config.method={config.method!r} has no evaluation of its own "
                           f"(it is trained as a stage of {method.title})")


def train_and_evaluate(config, workdir, *, force: bool = False, dataset: Dataset | None = None,
                       null_control: bool = False):
  """`jaxvna train`: trains, evaluates on held-out images, writes workdir/results.json.

  With the null controls (`config.eval.null_control`; None takes `null_control`) the same
  training runs again on shuffled pairs, and under the method's own controls
  (`run_null_controls`).
  """
  started = time.time()
  preflight.check_config(config)
  with workdir_lock.hold(workdir, command=f"train {config.method}"):
    dataset = dataset if dataset is not None else load_dataset(config)
    preflight.check_evaluation_data(config, dataset)
    model, params, _ = train(config, workdir, dataset=training_dataset(config, dataset),
                             force=force)
    nulls = None
    if null_control_on(config, default=null_control):
      nulls = run_null_controls(config, dataset, workdir, force=force)
    return evaluate_and_write(config, model, params, dataset, workdir, started=started,
                              null_controls=nulls)


def null_control_on(config, *, default: bool) -> bool:
  """`config.eval.null_control`, or the command's `default` where it is None."""
  value = config.eval.get("null_control")
  return default if value is None else bool(value)


PAIRS_SHUFFLED = registry.NullControl(
    name="null_control",
    at_chance=lambda config, dataset: [rec.name for rec in dataset.recordings],
    description="image-response pairs shuffled within subject",
    data=lambda config, dataset: dataset_lib.shuffle_training_pairs(dataset, config.seed))


def null_controls(config, only: Sequence[str] | None = None
                  ) -> tuple[registry.NullControl, ...]:
  """The controls of `config.method`: pairs shuffled within subject
  (`data.dataset.shuffle_training_pairs`, in workdir/null_control), then the method's own
  (`registry.Method.null_controls`); with `only`, those it names (a name the method lacks
  is a `UserError`)."""
  controls = (PAIRS_SHUFFLED, *registry.get(config.method).null_controls)
  unknown = set(only or ()) - {c.name for c in controls}
  if unknown:
    raise errors.UserError(f"method {config.method!r} has no null control "
                           f"{', '.join(sorted(unknown))}; it has "
                           f"{', '.join(c.name for c in controls)}")
  return tuple(c for c in controls if only is None or c.name in only)


def run_null_controls(config, dataset: Dataset, workdir, *, force: bool = False,
                      train_it: bool = True, only: Sequence[str] | None = None) -> dict:
  """Every control of `null_controls(config, only)`, each trained (or,
  `train_it=False`, restored where workdir/<name> holds a checkpoint) and evaluated like
  the run itself on the same untouched held-out images.

  Returns {control name: {result name: results}}, each result with "chance_check"
  (`discriminative.chance_check` over the control's `at_chance` subjects) where it has
  identification reports; a result off chance is logged as a warning: something other
  than what the control keeps carries signal.
  """
  out = {}
  for control in null_controls(config, only):
    control_dir = pathlib.Path(workdir) / control.name
    if not train_it and not (control_dir / "checkpoints").is_dir():
      continue
    control_config = control.change(config)
    data = control.data(config, dataset)
    subjects = control.at_chance(control_config, data)
    if not subjects:
      logging.info("%s skipped: no subject it could check", control.name)
      continue
    trained_on = training_dataset(control_config, data)
    if train_it:
      model, params, _ = train(control_config, control_dir, dataset=trained_on, force=force)
    else:
      model = make_model(control_config, trained_on)
      params = restore_latest(control_config, model, trained_on, control_dir)[1].params
    primary = distributed.is_primary()
    results = evaluate(control_config, model, local_copy(params), data,
                       control_dir if primary else None)
    for name, res in results.items():
      if isinstance(res, dict) and "per_subject" in res and "decoding" in res:
        res["chance_check"] = discriminative.chance_check(res, subjects=subjects)
        if not res["chance_check"]["at_chance"] and primary:
          check = res["chance_check"]
          off = [f"{task} {n}-way {check[task][n]['top1']:.3f} (chance band "
                 f"{check[task][n]['band'][0]:.3f}-{check[task][n]['band'][1]:.3f})"
                 for task, n in discriminative.off_chance(check)]
          logging.warning("%s of %s (%s) is off chance: %s. It should identify nothing; look "
                          "for a leak between the splits or in the evaluation.", control.name,
                          name, control.description, "; ".join(off))
    out[control.name] = results
  return out


def evaluate_and_write(config, model, params, dataset: Dataset, workdir, *,
                       step: int | None = None, started: float | None = None,
                       null_controls: dict | None = None) -> dict:
  """`evaluate`, then workdir/results.json; returns its content.

  results.json: {"dataset", "results": {name: results}, "provenance":
  `provenance.record`}; the `run_null_controls` output given as `null_controls` goes under
  each result's control names ("null_control", ...). The results (as `eval/<method>/...`
  scalars) and the figures the evaluation wrote are added to the workdir's TensorBoard
  events at `step`, the step of `params` (default: the step the workdir's training ended
  at, `summaries.trained_step`).

  In a multi-process run every process evaluates the whole held-out set on its own copy
  of the parameters (the same numbers everywhere); process 0 writes the results.
  """
  started = time.time() if started is None else started
  primary = distributed.is_primary()
  figures_before = summaries.figure_times(workdir) if primary else {}
  results = evaluate(config, model, local_copy(params), dataset, workdir if primary else None)
  for control, per_name in (null_controls or {}).items():
    for name, null in per_name.items():
      if isinstance(results.get(name), dict):
        results[name][control] = null
  out = {"dataset": dataset.name, "results": results,
         "provenance": provenance.record(config, dataset, started=started)}
  if primary:
    files.write_json(pathlib.Path(workdir) / "results.json", out)
    summaries.write_outputs(
        workdir, summaries.trained_step(workdir) if step is None else step,
        results={"eval": results},
        figures=summaries.figures_written_since(workdir, figures_before))
  return out


def restore_latest(config, model, dataset: Dataset, workdir) -> tuple[int, TrainState]:
  """(step, state) of the latest checkpoint in workdir/checkpoints, a whole copy on this
  process's first device (`dataset`: the subjects the run trained on).

  Raises:
    errors.MissingCheckpointError: the workdir holds no checkpoint (nothing is created).
  """
  directory = pathlib.Path(workdir) / "checkpoints"
  tx = make_optimizer(config)
  abstract = abstract_state(lambda: init_state(config, model, tx, dataset),
                            jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  with checkpoint.Checkpointer(directory, create=False) as ckpt:
    restored = ckpt.restore(abstract)
  if restored is None:
    raise errors.MissingCheckpointError(f"{directory}: no checkpoint (train in this workdir "
                                        "first)")
  step, state, _ = restored
  return step, state


def evaluate_workdir(config, workdir):
  """`jaxvna eval`: re-evaluates the latest checkpoint of a finished or interrupted run
  (and of each null control whose workdir/<name> holds one)."""
  started = time.time()
  preflight.check_config(config)
  if not (pathlib.Path(workdir) / "checkpoints").is_dir():
    raise errors.MissingCheckpointError(f"{workdir}: no checkpoint to evaluate (train in "
                                        "this workdir first)")
  with workdir_lock.hold(workdir, command="eval"):
    dataset = load_dataset(config)
    preflight.check_evaluation_data(config, dataset)
    trained_on = training_dataset(config, dataset)
    model = make_model(config, trained_on)
    step, state = restore_latest(config, model, trained_on, workdir)
    nulls = run_null_controls(config, dataset, workdir, train_it=False)
    return evaluate_and_write(config, model, state.params, dataset, workdir, step=step,
                              started=started, null_controls=nulls)
