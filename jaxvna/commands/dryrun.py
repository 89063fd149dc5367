"""`jaxvna dryrun`: compile a config's training step for N devices, on fake CPU devices.

Nothing is trained and no accelerator is needed. The model and optimiser state are built
abstractly (`jax.eval_shape`), the global batch is a dict of `jax.ShapeDtypeStruct`s with
the input pipeline's shapes and dtypes split over the "data" axis of a mesh of N CPU
devices, and the trainer's own step (`train.make_train_step`, the state replicated as in
`train.train`) is lowered and compiled for that mesh. XLA then reports the program that
every device runs: its memory (`compiled.memory_analysis()`) and its FLOPs
(`compiled.cost_analysis()`).

Shapes come from the configured data: the simulator is run at a few images (the model
does not depend on the number of images), other kinds are read, since their neuron counts
and image shape are needed.

What the numbers are:
  memory: bytes of one device's program as XLA:CPU assigns its buffers: arguments (the
    replicated state and this device's rows of the batch), outputs (the new state, which
    reuses the donated arguments' buffers: `alias`), temporaries (activations kept for the
    backward pass, gradients, optimiser temporaries), and their total, arguments +
    outputs - aliased + temporaries. TPU and GPU compilers fuse and lay out differently, so
    read these as estimates of the same order, not as the accelerator's exact figures.
    bfloat16 saves less here than on an accelerator: XLA:CPU converts much bfloat16
    arithmetic to float32 (configs/vna_pod.py at 64 devices: 488 MiB per device in
    bfloat16, 547 MiB in float32).
  flops: XLA's count for one device's program, and that times the number of devices
    (the replicated optimiser update is counted on every device). XLA counts the body of a
    loop once whatever its trip count, and the ring loss is a loop over the devices, so a
    config with loss.impl="ring" is counted on its "gather" twin: the same loss and
    gradients without the loop. The ring also recomputes each block's logits in the
    backward pass; that recomputation is not in the count (model FLOPs).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxvna import errors
from jaxvna.data import Dataset, readers
from jaxvna.commands import bench
from jaxvna.training import train

# Images the simulator makes for a shape-only dataset (its minimum is 10).
SHAPE_DATASET_IMAGES = 40


def use_fake_devices(num_devices: int) -> None:
  """Makes JAX compute on `num_devices` CPU devices (no accelerator is touched).

  Must run before JAX initialises its backends (before any computation, `jax.devices()`
  included); the CLI calls it first thing.
  """
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", num_devices)


def shape_dataset(config) -> Dataset:
  """A dataset with the neuron counts and image shape of the configured data.

  The simulator is run at `SHAPE_DATASET_IMAGES` images with the config's other settings;
  other kinds are read in full (`train.load_dataset`).
  """
  if config.data.kind != "simulator":
    return train.load_dataset(config)
  kwargs = dict(config.data.kwargs)
  kwargs["num_images"] = SHAPE_DATASET_IMAGES
  return readers.load("simulator", **kwargs)


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
  """The trainer's mesh (`train.make_mesh`) over the first `num_devices` CPU devices."""
  cpus = jax.devices("cpu")
  if num_devices > len(cpus):
    raise ValueError(f"JAX has {len(cpus)} CPU devices, not the {num_devices} asked for: "
                     "call dryrun.use_fake_devices before JAX starts (the jaxvna dryrun "
                     "command does)")
  return train.make_mesh(cpus[:num_devices])


def batch_spec(config, dataset: Dataset, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch of `pipeline.make_train_iterator` as shapes, rows split over "data".

  Keys, shapes and dtypes as in `jaxvna.data.pipeline`'s docstring, with B =
  config.train.batch_size; "image_features" (B, F) float32 when the data carries them.
  """
  b = config.train.batch_size
  k_max = max(dataset.neuron_counts)
  rows = NamedSharding(mesh, P("data"))
  ids = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
  shapes = {"image": ((b, *dataset.image_shape), jnp.uint8),
            "response": ((b, k_max), jnp.float32),
            "neuron_mask": ((b, k_max), jnp.bool_),
            "subject": ((b,), jnp.int32),
            "stimulus_id": ((b,), ids)}
  features = dataset.recordings[0].image_features
  if features is not None:
    shapes["image_features"] = ((b, features.shape[1]), jnp.float32)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
          for k, (shape, dtype) in shapes.items()}


def _bytes_per_device(tree) -> int:
  """Bytes that one device holds of the ShapeDtypeStruct leaves of `tree`."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def compile_step(config, dataset: Dataset, mesh):
  """Lowers and compiles the training step of `config` for `mesh` without running it.

  Returns:
    (compiled, state) with `state` the abstract TrainState (ShapeDtypeStruct leaves,
    replicated over the mesh as in `train.train`).
  """
  aux = train.prepare(config, dataset)
  model = train.make_model(config, dataset, aux)
  tx = train.make_optimizer(config)
  state = train.abstract_state(lambda: train.init_state(config, model, tx, dataset, aux),
                               NamedSharding(mesh, P()))
  step = train.make_train_step(config, train.make_objective(config, model, mesh, aux), tx)
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch_spec(config, dataset, mesh)).compile()
  return compiled, state


def _gather_twin(config):
  """`config` with loss.impl="gather": a loop-free step for XLA's FLOP count."""
  twin = config.copy_and_resolve_references()
  with twin.unlocked():
    twin.loss.impl = "gather"
  return twin


def run(config, devices: int = 8, *, dataset: Dataset | None = None) -> dict:
  """Compiles the step of `config` for `devices` CPU devices; prints a table and a JSON line.

  Args:
    config: a training config (the fields `jaxvna train` reads).
    devices: the size of the "data" mesh axis; JAX must have at least this many CPU
      devices (`use_fake_devices`).
    dataset: the data whose shapes to use (default: `shape_dataset(config)`).

  Returns:
    The printed dict: devices, global and per-device batch, parameter count, per-device
    bytes of the parameters, the optimiser state and the batch, XLA's per-device memory
    (argument/output/alias/temp/total bytes), FLOPs per device and in total, the compile
    time.

  Raises:
    ValueError: the global batch is not a multiple of `devices`, or JAX has fewer CPU
      devices.
  """
  global_batch = config.train.batch_size
  if global_batch % devices:
    raise errors.ConfigError(f"config.train.batch_size={global_batch} is not a multiple of the "
                     f"{devices} devices (per-device batches must be equal)")
  mesh = make_mesh(devices)
  dataset = train.training_dataset(config, dataset if dataset is not None
                                   else shape_dataset(config))
  start = time.perf_counter()
  compiled, state = compile_step(config, dataset, mesh)
  compile_s = time.perf_counter() - start
  loss_impl = config.loss.impl
  if loss_impl == "ring":
    flops = bench.step_flops(compile_step(_gather_twin(config), dataset, mesh)[0])
  else:
    flops = bench.step_flops(compiled)
  memory = compiled.memory_analysis()
  out = {
      "method": config.method, "devices": devices, "global_batch": global_batch,
      "per_device_batch": global_batch // devices, "loss_impl": loss_impl,
      "dtype": config.model.dtype,
      "params": sum(x.size for x in jax.tree.leaves(state.params)),
      "param_bytes": _bytes_per_device(state.params),
      "opt_state_bytes": _bytes_per_device(state.opt_state),
      "batch_bytes": _bytes_per_device(batch_spec(config, dataset, mesh)),
      "argument_bytes": memory.argument_size_in_bytes,
      "output_bytes": memory.output_size_in_bytes,
      "alias_bytes": memory.alias_size_in_bytes,
      "temp_bytes": memory.temp_size_in_bytes,
      "total_bytes": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                      - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
      "flops_per_device": flops, "flops_total": flops * devices,
      "compile_s": round(compile_s, 2),
  }
  print(format_table(out))
  print(json.dumps(out))
  return out


def format_table(out: dict) -> str:
  """The dict of `run` as a few aligned lines (MiB, GFLOP)."""
  mib = lambda key: f"{out[key] / 2**20:,.1f} MiB"
  rows = [
      ("method, loss, dtype", f"{out['method']}, {out['loss_impl']}, {out['dtype']}"),
      ("devices", f"{out['devices']}"),
      ("batch (global / per device)", f"{out['global_batch']} / {out['per_device_batch']}"),
      ("parameters", f"{out['params']:,}"),
      ("per device: parameters", mib("param_bytes")),
      ("per device: optimiser state", mib("opt_state_bytes")),
      ("per device: batch", mib("batch_bytes")),
      ("per device: XLA arguments", mib("argument_bytes")),
      ("per device: XLA outputs (aliased)", f"{mib('output_bytes')} ({mib('alias_bytes')})"),
      ("per device: XLA temporaries", mib("temp_bytes")),
      ("per device: XLA total", mib("total_bytes")),
      ("GFLOP per step (device / all)",
       f"{out['flops_per_device'] / 1e9:,.1f} / {out['flops_total'] / 1e9:,.1f}"),
  ]
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
