"""`jaxvna dryrun` compiles a config's step for N fake devices: its FLOPs against a hand
count, its memory per device against the device count, its batch against the pipeline's,
and the command line (device count, clear error for an indivisible batch)."""

import json
import math
import subprocess
import sys

import pytest

from jaxvna.configs import common, vna_sim
from jaxvna.data import pipeline, readers
from jaxvna.commands import dryrun

TINY_DATA = dict(seed=0, num_subjects=2, num_images=40, image_size=16,
                 neurons_per_subject=(60, 40), spatial_frequency_range=(2.0, 6.0))


@pytest.fixture(scope="module")
def tiny_dataset():
  return readers.load("simulator", **TINY_DATA)


def mlp_config(batch_size: int, impl: str):
  """VNA with one-hidden-layer MLP towers (no dropout): FLOPs easy to count by hand."""
  c = vna_sim.get_config()
  c.data.kwargs = dict(TINY_DATA)
  c.model.embed_dim = 32
  c.model.image_tower = common.image_tower("mlp", hidden=(64,))
  c.model.neural_tower = common.neural_tower(readin_dim=32, hidden=(64,), neuron_dropout=0.0)
  c.train.batch_size = batch_size
  c.loss.impl = impl
  return c


def hand_flops(config, dataset) -> float:
  """Matmul FLOPs of one step, all devices: 6 per weight and example (forward, input and
  weight gradients) but 4 for each tower's first layer (no gradient for the data), and
  6 B^2 D for the CLIP logits (forward and both gradients)."""
  def tower(widths):
    return 4 * widths[0] * widths[1] + sum(6 * a * b for a, b in zip(widths[1:], widths[2:]))
  b, d = config.train.batch_size, config.model.embed_dim
  image = tower([math.prod(dataset.image_shape), 64, d])
  # The per-subject read-in is one (B, S * K_max) @ (S * K_max, readin) product.
  readin_inputs = len(dataset.neuron_counts) * max(dataset.neuron_counts)
  neural = tower([readin_inputs, 32, 64, d])
  return b * (image + neural) + 6 * b * b * d


def test_flops_match_a_hand_count_and_ring_is_counted_without_its_loop(tiny_dataset, capsys):
  gather = dryrun.run(mlp_config(512, "gather"), 8, dataset=tiny_dataset)
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == gather
  hand = hand_flops(mlp_config(512, "gather"), tiny_dataset)
  # Beyond the matmuls XLA counts activations, the softmax and AdamW (on every device).
  assert hand < gather["flops_total"] < 1.15 * hand, (gather["flops_total"], hand)
  assert gather["flops_total"] == 8 * gather["flops_per_device"]
  # The ring loss's loop would be counted once: its FLOPs are those of the gather twin.
  ring = dryrun.run(mlp_config(512, "ring"), 8, dataset=tiny_dataset)
  assert ring["flops_per_device"] == gather["flops_per_device"]
  assert ring["temp_bytes"] != gather["temp_bytes"]  # but its memory is the ring's own
  assert (gather["devices"], gather["global_batch"], gather["per_device_batch"]) == (8, 512, 64)
  params = 256 * 64 + 64 + 64 * 32 + 32 + 2 * 60 * 32 + 2 * 32 + 32 * 64 + 64 + 64 * 32 + 32 + 2
  assert gather["params"] == params and gather["param_bytes"] == 4 * params
  # AdamW: two moments per parameter, plus a few counters.
  assert 8 * params <= gather["opt_state_bytes"] < 8 * params + 1024


def test_ring_memory_per_device_shrinks_as_devices_double(tiny_dataset):
  """Fixed global batch 2048: the ring loss's (B/N)^2 logits block shrinks 4x per doubling
  of the devices, the gathered loss's (B/N) x B only 2x."""
  config = mlp_config(2048, "ring")
  compiled = {n: dryrun.compile_step(config, tiny_dataset, dryrun.make_mesh(n))[0]
              for n in (4, 8)}
  temp = {n: c.memory_analysis().temp_size_in_bytes for n, c in compiled.items()}
  assert temp[8] < 0.5 * temp[4], temp
  gathered = dryrun.compile_step(mlp_config(2048, "gather"), tiny_dataset, dryrun.make_mesh(8))[0]
  assert temp[8] < 0.5 * gathered.memory_analysis().temp_size_in_bytes


def test_batch_spec_matches_the_input_pipeline(tiny_dataset):
  config = mlp_config(16, "gather")
  mesh = dryrun.make_mesh(8)
  batch = next(pipeline.make_train_iterator(
      pipeline.DatasetSource(tiny_dataset, "train"), global_batch_size=16, mesh=mesh, seed=0))
  spec = dryrun.batch_spec(config, tiny_dataset, mesh)
  assert {k: (v.shape, v.dtype, v.sharding) for k, v in spec.items()} == {
      k: (v.shape, v.dtype, v.sharding) for k, v in batch.items()}


def test_too_few_devices_and_an_indivisible_batch_are_clear_errors(tiny_dataset):
  with pytest.raises(ValueError, match="is not a multiple of the 6 devices"):
    dryrun.run(mlp_config(512, "ring"), 6, dataset=tiny_dataset)
  with pytest.raises(ValueError, match="JAX has 8 CPU devices, not the 16"):
    dryrun.run(mlp_config(512, "ring"), 16, dataset=tiny_dataset)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxvna.cli", "dryrun",
                         "--config=" + vna_sim.__file__, *args],
                        capture_output=True, text=True, timeout=300)


def test_command_compiles_for_the_requested_device_count():
  # The tests' 8 fake devices (XLA_FLAGS) are overridden by --devices.
  out = _cli("--devices=16", "--config.train.batch_size=64",
             "--config.data.kwargs.image_size=16",
             "--config.data.kwargs.spatial_frequency_range=(2.0,6.0)")
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert (report["devices"], report["per_device_batch"], report["loss_impl"]) == (16, 4, "gather")
  assert report["flops_total"] > 0 and report["total_bytes"] > report["temp_bytes"] > 0
  assert "per device: XLA total" in out.stdout
  out = _cli("--devices=24")
  assert out.returncode != 0
  assert "config.train.batch_size=256 is not a multiple of the 24 devices" in out.stderr
