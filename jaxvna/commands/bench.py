"""`jaxvna bench`: throughput of the configured training step against the matmul peak,
and of the trainer's own loop on the config's real data.

Prints one JSON line:
  samples_per_s, step_gflop (XLA's cost analysis of the compiled step, summed over
    devices), gflops (achieved by the step), peak_gflops (an f32 2048^2 matmul timed in
    the same process) and fraction_of_peak: the step alone on synthetic inputs
    (config.bench shapes);
  input_samples_per_s: the configured input (data.placement) alone, on the config's data;
  train_samples_per_s: `train.run_calls`, the loop `jaxvna train` runs (its input, its
    train.steps_per_call), in steady state on the same data;
  real_step_samples_per_s: the single step alone on one batch of that data, and
    train_vs_step = train_samples_per_s / real_step_samples_per_s.
The machine may be shared with other work, so the measurements are taken in alternating
rounds (config.bench.rounds, each of config.bench.steps steps) and their medians compared:
all see the same load.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def _times(fn, *args, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of fn(*args)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def matmul_peak(size: int = 2048):
  """(time_it, flops): time_it(repeats) times an f32 (size x size) @ (size x size) matmul
  through XLA on device 0 (compiled and warmed up) and returns the seconds of each call."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  return (lambda repeats: _times(matmul, a, repeats=repeats)), 2 * size**3


def step_flops(compiled) -> float:
  """FLOPs of one call of a compiled program by XLA's cost analysis: per device for a
  program compiled for a mesh (SPMD compiles one program for every device). XLA counts
  the body of a loop once, whatever its trip count."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def synthetic_batch(config, mesh):
  """A global batch of random inputs shaped like the pipeline's, sharded over "data"."""
  b = config.bench
  rng = np.random.default_rng(0)
  k = b.num_neurons
  batch = {
      "image": rng.integers(0, 256, (config.train.batch_size, *b.image_shape), dtype=np.uint8),
      "response": rng.poisson(2.0, (config.train.batch_size, k)).astype(np.float32),
      "neuron_mask": np.ones((config.train.batch_size, k), bool),
      "subject": np.zeros((config.train.batch_size,), np.int32),
  }
  return jax.device_put(batch, NamedSharding(mesh, P("data")))


def run(config) -> dict:
  """Measures the step of `config` (its model, loss, optimiser and batch size)."""
  from jaxvna.data.dataset import Dataset, Recording
  from jaxvna.training import train

  b = config.bench
  mesh = train.make_mesh()
  batch = synthetic_batch(config, mesh)
  # A one-image stand-in dataset: the model and its initial state only need the shapes.
  stand_in = Dataset("bench", (Recording(
      name="bench", images=np.zeros((1, *b.image_shape), np.uint8),
      responses=np.zeros((1, 1, b.num_neurons), np.float32),
      neuron_coords=np.zeros((b.num_neurons, 0), np.float32), split=np.zeros(1, np.int8),
      stimulus_ids=np.zeros(1, np.int64)),))
  model = train.make_model(config, stand_in)
  tx = train.make_optimizer(config)
  state = jax.device_put(train.init_state(config, model, tx, stand_in), NamedSharding(mesh, P()))
  step = train.make_train_step(config, train.make_objective(config, model, mesh), tx)
  time_peak, peak_flops = matmul_peak()
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch).compile()
    # XLA counts one device's share; the step runs on all of them.
    flops = step_flops(compiled) * mesh.size
    for _ in range(b.warmup_steps):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    step_times, peak_times = [], []
    for _ in range(b.rounds):
      for _ in range(b.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)  # bound what is in flight (CPU collectives)
        step_times.append(time.perf_counter() - start)
      peak_times += time_peak(3)
  seconds = float(np.median(step_times))
  peak = peak_flops / float(np.median(peak_times)) / 1e9
  gflops = flops / seconds / 1e9
  out = {"config": b.name, "devices": jax.device_count(), "batch": config.train.batch_size,
         "samples_per_s": config.train.batch_size / seconds, "step_ms": seconds * 1e3,
         "step_gflop": flops / 1e9, "gflops": gflops, "peak_gflops": peak,
         "fraction_of_peak": gflops / peak, **trainer_rates(config, mesh)}
  print(json.dumps(out))
  return out


def trainer_rates(config, mesh) -> dict:
  """Samples/s of the input alone, the trainer's loop and the step alone, on the config's
  data (medians of alternating rounds; compilation and warm-up excluded)."""
  from jaxvna.training import train

  b, batch_size = config.bench, config.train.batch_size
  dataset = train.load_dataset(config)
  model = train.make_model(config, dataset)
  tx = train.make_optimizer(config)
  objective = train.make_objective(config, model, mesh)
  replicated = NamedSharding(mesh, P())
  new_state = lambda: jax.device_put(train.init_state(config, model, tx, dataset), replicated)
  batches = train.make_input(config, dataset, mesh)
  call = train.make_train_call(config, objective, tx, getattr(batches, "draw", None))
  step = train.make_train_step(config, objective, tx)
  steps = max(b.steps, config.train.steps_per_call)
  # Enough batches that the host pipeline's read-ahead buffer (4 batches, filled while the
  # other measurements ran) does not count as input speed.
  input_steps = max(steps, 32)
  with jax.set_mesh(mesh):
    if isinstance(batches, train.DeviceInput):
      draw = jax.jit(batches.draw)
      read = lambda i: draw(batches.data, batches.call_inputs(i, 1)[0], i)
    else:
      read = lambda i: batches.call_inputs(i, 1)[0]
    batch = read(0)
    loop_state, step_state = new_state(), new_state()
    position = 0
    loop_state = train.run_calls(config, call, loop_state, batches, 0, steps)  # compiles
    position += steps
    for _ in range(b.warmup_steps):
      step_state, metrics = step(step_state, batch)
      jax.block_until_ready(metrics)
    input_times, loop_times, step_times = [], [], []
    for _ in range(b.rounds):
      start = time.perf_counter()
      for i in range(input_steps):
        jax.block_until_ready(read(position + i))
      input_times.append((time.perf_counter() - start) / input_steps)
      position += input_steps
      start = time.perf_counter()
      loop_state = train.run_calls(config, call, loop_state, batches, position,
                                   position + steps)
      jax.block_until_ready(loop_state)
      loop_times.append((time.perf_counter() - start) / steps)
      position += steps
      start = time.perf_counter()
      for _ in range(steps):
        step_state, metrics = step(step_state, batch)
        jax.block_until_ready(metrics)  # as the loop does once per call
      step_times.append((time.perf_counter() - start) / steps)
  rate = lambda times: batch_size / float(np.median(times))
  return {"placement": type(batches).__name__, "steps_per_call": config.train.steps_per_call,
          "input_samples_per_s": rate(input_times), "train_samples_per_s": rate(loop_times),
          "real_step_samples_per_s": rate(step_times),
          "train_vs_step": float(np.median(step_times) / np.median(loop_times))}
