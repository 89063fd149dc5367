"""`jaxvna bench`: throughput of the configured training step against the matmul peak.

Prints one JSON line: samples_per_s, gflops (achieved by the step, FLOPs from XLA's cost
analysis of the compiled step), peak_gflops (an f32 matmul timed in the same process) and
fraction_of_peak. Inputs are synthetic (config.bench), so only the step is measured.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def _time(fn, *args, repeats: int) -> float:
  """Median seconds per call of fn(*args) after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
  """GFLOP/s of an f32 (size x size) @ (size x size) matmul through XLA on device 0."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  seconds = _time(jax.jit(lambda x: x @ x), a, repeats=repeats)
  return 2 * size**3 / seconds / 1e9


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
  from jaxvna.training import objectives, train

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
  step = train.make_train_step(config, objectives.make_objective(config, model, mesh), tx)
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"])
    for _ in range(b.warmup_steps):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(b.steps):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)  # bound what is in flight (CPU collectives)
    seconds = (time.perf_counter() - start) / b.steps
  peak = matmul_peak_gflops()
  gflops = flops / seconds / 1e9
  out = {"config": b.name, "devices": jax.device_count(), "batch": config.train.batch_size,
         "samples_per_s": config.train.batch_size / seconds, "step_ms": seconds * 1e3,
         "gflops": gflops, "peak_gflops": peak, "fraction_of_peak": gflops / peak}
  print(json.dumps(out))
  return out
