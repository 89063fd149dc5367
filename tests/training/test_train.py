"""The trainer end to end on a tiny simulator: learning, the single step's NaN guard,
kill -9 + resume reproducibility, restore onto another device count, workdir guard."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvna.configs import common, vna_sim
from jaxvna.data import readers, resident
from jaxvna.training import checkpoint, train

TINY_DATA = dict(seed=0, num_subjects=2, num_images=600, image_size=32,
                 neurons_per_subject=(60, 40), spatial_frequency_range=(2.0, 8.0))


def tiny_config(method="vna", steps=60):
  c = vna_sim.get_config(f"{method},tiny")
  c.train.steps = steps
  return c


@pytest.fixture(scope="module")
def tiny_dataset():
  return readers.load("simulator", **TINY_DATA)


def _cli(args, env_extra=None, **kw):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.Popen([sys.executable, "-m", "jaxvna.cli", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _overrides(config, prefix="config"):
  """--config.a.b=value flags reproducing `config`'s tiny settings on the command line."""
  flags = []
  for key, value in [("data.kwargs.num_images", 600), ("data.kwargs.image_size", 32),
                     ("data.kwargs.num_subjects", 2),
                     ("data.kwargs.neurons_per_subject", "(60,40)"),
                     ("data.kwargs.spatial_frequency_range", "(2.0,8.0)"),
                     ("model.embed_dim", 32), ("model.image_tower.type", "mlp"),
                     ("model.image_tower.channels", "(8,16)"),
                     ("model.image_tower.hidden", "(128,)"), ("optim.lr", 3e-3), ("model.neural_tower.readin_dim", 32),
                     ("model.neural_tower.hidden", "(64,)"), ("model.decoder_size", 8),
                     ("optim.warmup_steps", 5), ("train.batch_size", 64),
                     ("train.checkpoint_every", config.train.checkpoint_every),
                     ("train.steps", config.train.steps), ("train.progress_bar", False),
                     ("eval.n_ways", "(2,10)"), ("eval.draws", 50)]:
    flags.append(f"--{prefix}.{key}={value}")
  return flags


def test_short_run_learns_well_above_chance(tmp_path, tiny_dataset):
  out = train.train_and_evaluate(tiny_config(steps=80), tmp_path, dataset=tiny_dataset)
  res = out["results"]["vna"]
  for task in ("decoding", "encoding"):
    # Chance is 0.1 (10-way) and 0.5 (2-way); 80 steps on 480 images is a short run.
    assert res[task]["10"]["top1"] > 0.2, res[task]["10"]
    assert res[task]["10"]["top1_ci95"][0] > 0.12, res[task]["10"]
    assert res[task]["2"]["top1"] > 0.7
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["steps"] == 80 and len(summary["params_digest"]) == 64
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 80 and rows[-1]["loss"] < rows[0]["loss"]


@pytest.mark.parametrize("method", ["direct_encoding", "direct_decoding"])
def test_baselines_train_and_evaluate(tmp_path, tiny_dataset, method):
  out = train.train_and_evaluate(tiny_config(method, steps=30), tmp_path, dataset=tiny_dataset)
  res = out["results"][method]
  assert set(res) >= {"decoding", "encoding", "single_trial", "per_subject"}
  # The loss falls: measured (seed 0) 1.267 -> 0.629 (direct_encoding) and 0.246 -> 0.125
  # (direct_decoding) from step 10 to 30, a ratio of 0.50 and 0.51; margin 0.1.
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 30 and rows[-1]["loss"] < 0.6 * rows[0]["loss"], rows
  if method == "direct_encoding":
    # 2-way decoding: measured 0.592, untrained 0.531, chance 0.5; margin 0.042. (Direct
    # decoding is still at chance after 30 steps, 0.507 as untrained: its loss is checked.)
    assert res["decoding"]["2"]["top1"] > 0.55


def test_nan_batch_is_skipped_and_counted(tiny_dataset):
  config = tiny_config()
  mesh = train.make_mesh()
  model = train.make_model(config, tiny_dataset)
  tx = train.make_optimizer(config)
  state = train.init_state(config, model, tx, tiny_dataset)
  before = jax.tree.map(np.asarray, state.params)
  step = train.make_train_step(config, train.make_objective(config, model, mesh), tx)
  k = max(tiny_dataset.neuron_counts)
  batch = {"image": jnp.zeros((64, 32, 32, 1), jnp.uint8),
           "response": jnp.full((64, k), jnp.nan, jnp.float32),
           "neuron_mask": jnp.ones((64, k), bool), "subject": jnp.zeros((64,), jnp.int32)}
  with jax.set_mesh(mesh):
    state, metrics = step(state, batch)
  assert int(metrics["skipped_steps"]) == 1
  after = jax.tree.map(np.asarray, state.params)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(b).all()


@pytest.mark.parametrize("placement,steps_per_call", [("host", 1), ("device", 4)])
def test_kill9_and_resume_gives_the_uninterrupted_parameters(tmp_path, placement,
                                                             steps_per_call):
  config = tiny_config(steps=60)
  flags = _overrides(config) + [f"--config.data.placement={placement}",
                                f"--config.train.steps_per_call={steps_per_call}"]
  straight = tmp_path / "straight"
  p = _cli(["train", "--config=" + vna_sim.__file__, f"--workdir={straight}", *flags])
  out, _ = p.communicate(timeout=600)
  assert p.returncode == 0, out[-3000:]

  killed = tmp_path / "killed"
  p = _cli(["train", "--config=" + vna_sim.__file__, f"--workdir={killed}", *flags])
  deadline = time.time() + 300
  # Kill as soon as a checkpoint past the first exists, mid-run.
  while time.time() < deadline and p.poll() is None:
    steps = [d for d in (killed / "checkpoints").glob("[0-9]*") if d.name.isdigit()] if (
        killed / "checkpoints").exists() else []
    if any(int(d.name) >= 20 for d in steps):
      break
    time.sleep(0.05)
  assert p.poll() is None, "run finished before it could be killed"
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (killed / "summary.json").exists()
  p = _cli(["train", "--config=" + vna_sim.__file__, f"--workdir={killed}", *flags])
  out, _ = p.communicate(timeout=600)
  assert p.returncode == 0, out[-3000:]
  digest = lambda d: json.loads((d / "summary.json").read_text())["params_digest"]
  assert digest(killed) == digest(straight)


@pytest.mark.parametrize("placement", ["host", "device"])
def test_several_steps_per_call_give_the_parameters_of_single_steps(tmp_path, tiny_dataset,
                                                                     placement):
  digests = {}
  for k in (1, 8):
    config = tiny_config(steps=24)
    config.data.placement = placement
    config.train.steps_per_call = k
    config.train.log_every = config.train.checkpoint_every = 10  # calls of 8, 2, 8, 2, 4
    train.train(config, tmp_path / f"k{k}", dataset=tiny_dataset)
    digests[k] = json.loads((tmp_path / f"k{k}" / "summary.json").read_text())["params_digest"]
    logged = [json.loads(l)["step"] for l in (tmp_path / f"k{k}" / "metrics.jsonl").open()]
    assert logged == [10, 20, 24]
  assert digests[1] == digests[8]


def test_auto_placement_follows_the_budget_and_placements_resume_each_other(tmp_path,
                                                                            tiny_dataset):
  config = tiny_config(steps=2)
  mesh = train.make_mesh()
  assert config.data.placement == "auto" and mesh.size == 8
  replicated_mb = resident.expected_nbytes(tiny_dataset) / 2**20
  sharded_mb = resident.expected_nbytes(tiny_dataset, shards=8) / 2**20
  for budget, placement, kind in ((replicated_mb, "device", train.DeviceInput),
                                  ((replicated_mb + sharded_mb) / 2, "sharded",
                                   train.DeviceInput),
                                  (sharded_mb * 0.9, "host", train.HostInput)):
    config.data.device_memory_mb = budget
    assert train.choose_placement(config, tiny_dataset, mesh.size) == placement
    made = train.make_input(config, tiny_dataset, mesh)
    assert isinstance(made, kind)
    if placement == "sharded":
      assert made.data.images.sharding.spec == jax.sharding.PartitionSpec("data")
  config.data.placement = "device"  # whatever the budget
  assert isinstance(train.make_input(config, tiny_dataset, mesh), train.DeviceInput)
  config.data.placement = "gpu"
  with pytest.raises(ValueError, match="data.placement"):
    train.make_input(config, tiny_dataset, mesh)
  # All draw the same batches: host to 10 steps, sharded to 20, replicated to 30 equals
  # replicated all the way.
  config = tiny_config(steps=30)
  config.optim.decay_steps = 30
  train.train(config, tmp_path / "straight", dataset=tiny_dataset)
  for placement, steps in (("host", 10), ("sharded", 20), ("device", 30)):
    config.data.placement, config.train.steps = placement, steps
    train.train(config, tmp_path / "switched", dataset=tiny_dataset)
  digest = lambda d: json.loads((tmp_path / d / "summary.json").read_text())["params_digest"]
  assert digest("switched") == digest("straight")


def test_training_from_a_prepared_copy_reads_its_records_and_gives_the_same_run(
    tmp_path, tiny_dataset, monkeypatch):
  from jaxvna.data import tfds_builders
  path = tfds_builders.prepare("simulator", tmp_path / "tfds", reader_kwargs=TINY_DATA)
  config = tiny_config(steps=12)
  config.data.placement = "host"
  train.train(config, tmp_path / "memory", dataset=tiny_dataset)
  config.data.source, config.data.prepared_dir = "prepared", str(path)
  taken = []
  take = tfds_builders.PreparedSource.take
  monkeypatch.setattr(tfds_builders.PreparedSource, "take",
                      lambda self, indices: taken.append(len(indices)) or take(self, indices))
  train.train(config, tmp_path / "prepared")  # the dataset, too, comes from the copy
  assert sum(taken) >= 12 * config.train.batch_size  # batches read from the records
  digest = lambda d: json.loads((tmp_path / d / "summary.json").read_text())["params_digest"]
  assert digest("prepared") == digest("memory")
  for source, folder, message in (("disk", str(path), "data.source"),
                                  ("prepared", "", "data.prepared_dir")):
    config.data.source, config.data.prepared_dir = source, folder
    with pytest.raises(ValueError, match=message):
      train.load_dataset(config)


def test_resume_on_another_device_count(tmp_path):
  """Train 20 steps on 8 devices, continue to 40 on 1 device: same as 40 steps on 1."""
  config = tiny_config(steps=40)
  flags = [f for f in _overrides(config) if "train.steps" not in f] + [
      "--config.optim.decay_steps=40"]
  eight = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  one = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  run = lambda workdir, steps, env: _cli(
      ["train", "--config=" + vna_sim.__file__, f"--workdir={workdir}", *flags,
       f"--config.train.steps={steps}"], env_extra=env).communicate(timeout=600)
  out, _ = run(tmp_path / "moved", 20, eight)
  out, _ = run(tmp_path / "moved", 40, one)
  assert json.loads((tmp_path / "moved" / "summary.json").read_text())["steps"] == 40, out[-2000:]
  out, _ = run(tmp_path / "single", 40, one)
  moved, single = (_final_params(tmp_path / d, config) for d in ("moved", "single"))
  for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(single)):
    # Another device count sums gradients in another order: equal up to rounding.
    # Adam amplifies rounding where its second moment is tiny; a resume bug moves
    # parameters by about lr * steps = 2e-2, far beyond this tolerance.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-4)


def _final_params(workdir, config):
  dataset = readers.load("simulator", **TINY_DATA)
  step, state = train.restore_latest(config, train.make_model(config, dataset), dataset,
                                     workdir)
  assert step == config.train.steps
  return jax.tree.map(np.asarray, state.params)


def test_workdir_of_another_config_is_refused(tmp_path, tiny_dataset):
  train.train(tiny_config(steps=5), tmp_path, dataset=tiny_dataset)
  other = tiny_config(steps=5)
  other.optim.lr = 0.5
  with pytest.raises(checkpoint.WorkdirConfigError, match="optim.lr"):
    train.train(other, tmp_path, dataset=tiny_dataset)
  train.train(other, tmp_path, dataset=tiny_dataset, force=True)  # told to: accepted


def test_unknown_config_key_is_a_clear_error(tmp_path):
  p = _cli(["train", "--config=" + vna_sim.__file__, f"--workdir={tmp_path}",
            "--config.train.stepz=3"])
  out, _ = p.communicate(timeout=120)
  assert p.returncode != 0 and "stepz" in out


def test_ring_and_sigmoid_losses_train_in_the_same_step(tmp_path, tiny_dataset):
  """On 8 devices the ring loss reproduces the gather loss's run; SigLIP trains too."""
  gather = tiny_config(steps=10)
  ring = tiny_config(steps=10)
  ring.loss.impl = "ring"
  _, p_gather, _ = train.train(gather, tmp_path / "gather", dataset=tiny_dataset)
  _, p_ring, _ = train.train(ring, tmp_path / "ring", dataset=tiny_dataset)
  for a, b in zip(jax.tree.leaves(p_gather), jax.tree.leaves(p_ring)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  sigmoid = tiny_config(steps=10)
  sigmoid.loss.type = "sigmoid"
  sigmoid.train.log_every = 1
  train.train(sigmoid, tmp_path / "sigmoid", dataset=tiny_dataset)
  losses = [json.loads(l)["loss"]
            for l in (tmp_path / "sigmoid" / "metrics.jsonl").read_text().splitlines()]
  # SigLIP learns: measured (seed 0) mean loss 7.64 over steps 1-3, 6.55 over steps 8-10
  # (8.43 at step 1, 6.21 at step 10); a 1.09 drop, margin 0.49.
  assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.6, losses


def test_eval_command_rescores_the_latest_checkpoint(tmp_path):
  config = tiny_config(steps=10)
  flags = _overrides(config)
  out, _ = _cli(["train", "--config=" + vna_sim.__file__, f"--workdir={tmp_path}",
                 *flags]).communicate(timeout=600)
  trained = json.loads((tmp_path / "results.json").read_text())
  (tmp_path / "results.json").unlink()
  out, _ = _cli(["eval", "--config=" + vna_sim.__file__, f"--workdir={tmp_path}",
                 *flags]).communicate(timeout=600)
  rescored = json.loads((tmp_path / "results.json").read_text())
  assert rescored["results"] == trained["results"], out[-2000:]
  # Each file names the command that wrote it, on the same data.
  assert trained["provenance"]["command"].startswith("jaxvna train --config=")
  assert rescored["provenance"]["command"].startswith("jaxvna eval --config=")
  assert rescored["provenance"]["data"] == trained["provenance"]["data"]


def test_features_tower_trains_on_precomputed_image_features(tmp_path, tiny_dataset):
  """LiT-style: a head over fixed features (here Gabor-energy features) learns."""
  import dataclasses
  from jaxvna.data import Dataset
  from jaxvna.models import gabor_ridge
  with_features = Dataset(tiny_dataset.name, tuple(
      dataclasses.replace(r, image_features=gabor_ridge.gabor_energy_features(
          r.images, spatial_frequencies=(1, 2, 4, 8)))
      for r in tiny_dataset.recordings))
  config = tiny_config(steps=80)
  config.model.image_tower = common.image_tower("features", hidden=(128,))
  out = train.train_and_evaluate(config, tmp_path, dataset=with_features)
  res = out["results"]["vna"]
  for task in ("decoding", "encoding"):
    assert res[task]["10"]["top1"] > 0.2, res[task]["10"]
  with pytest.raises(ValueError, match="image_features"):
    train.train(config, tmp_path / "no_features", dataset=tiny_dataset)


def test_all_non_finite_data_stops_the_run_and_writes_no_non_finite_parameter(tmp_path,
                                                                              tiny_dataset):
  """Responses of 1e38 and more without preprocessing overflow every step: the run stops
  with a clear error after optim.max_consecutive_nonfinite steps, and every checkpoint
  written holds finite parameters (the trainer once applied the NaN update and exited 0)."""
  from jaxvna.data.dataset import Dataset
  from jaxvna.errors import NonFiniteError
  huge = Dataset(tiny_dataset.name, tuple(
      dataclasses.replace(r, responses=np.minimum(1e38 * (1 + r.responses.astype(np.float64)), 3e38)
                          .astype(np.float32)) for r in tiny_dataset.recordings))
  config = tiny_config(steps=40)
  config.model.neural_tower.preprocess = "none"
  config.optim.max_consecutive_nonfinite = 5
  config.train.checkpoint_every = 2
  with pytest.raises(NonFiniteError) as error:
    train.train(config, tmp_path, dataset=huge)
  message = str(error.value)
  assert "training stopped at step 5: 5 steps in a row" in message
  assert "loss overflowed" in message and "newest checkpoint, step 4" in message
  assert "model.neural_tower.preprocess='none'" in message and "optim.lr" in message
  assert not (tmp_path / "summary.json").exists()
  with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
    assert ckpt.all_steps() == [2, 4]
  step, state = train.restore_latest(config, train.make_model(config, huge), huge, tmp_path)
  assert step == 4 and int(state.opt_state.total_notfinite) == 4  # skipped, not applied
  for leaf in jax.tree.leaves(state.params):
    assert np.isfinite(np.asarray(leaf)).all()


def test_waiting_only_at_log_and_checkpoint_steps_changes_nothing(tmp_path, tiny_dataset,
                                                                  monkeypatch):
  """The GPU/TPU loop waits for the devices only at log and checkpoint steps (the CPU loop
  after every call). Run on one CPU device (no collective that could stall): the same
  parameters and logs, and the non-finite guard still stops the run, at the next wait."""
  waits = []
  run_calls = train.run_calls

  def counted(config, call_fn, state, batches, start, stop, after_call=None):
    def after(step, n, *rest):
      waits.append((step, n))
      return after_call(step, n, *rest)
    return run_calls(config, call_fn, state, batches, start, stop, after)

  monkeypatch.setattr(train, "run_calls", counted)
  config = tiny_config(steps=24)
  train.train(config, tmp_path / "every_call", dataset=tiny_dataset)
  assert waits == [(step, 1) for step in range(1, 25)]
  waits.clear()
  monkeypatch.setattr(train, "SYNC_EVERY_CALL_BACKENDS", ())
  train.train(config, tmp_path / "at_boundaries", dataset=tiny_dataset)
  assert waits == [(10, 10), (20, 10), (24, 4)]
  read = lambda d, f: (tmp_path / d / f).read_text()
  assert read("at_boundaries", "metrics.jsonl") == read("every_call", "metrics.jsonl")
  digest = lambda d: json.loads(read(d, "summary.json"))["params_digest"]
  assert digest("at_boundaries") == digest("every_call")

  from jaxvna.data.dataset import Dataset
  from jaxvna.errors import NonFiniteError
  huge = Dataset(tiny_dataset.name, tuple(
      dataclasses.replace(r, responses=np.full_like(r.responses, 3e38))
      for r in tiny_dataset.recordings))
  config.model.neural_tower.preprocess = "none"
  config.optim.max_consecutive_nonfinite = 5
  config.train.checkpoint_every = 2
  with pytest.raises(NonFiniteError, match="training stopped at step 6: 6 steps in a row"):
    train.train(config, tmp_path / "huge", dataset=huge)


def test_a_resumed_run_logs_each_step_once(tmp_path, tiny_dataset):
  config = tiny_config(steps=20)
  config.train.log_every = 5
  train.train(config, tmp_path, dataset=tiny_dataset)
  log = tmp_path / "metrics.jsonl"
  # An attempt killed at step 30, after its last checkpoint (20), logged 25 and 30 and
  # tore its last row.
  log.write_text(log.read_text() + '{"step": 25, "loss": 1.0}\n{"step": 30, "loss": 1.0}\n'
                 '{"step": 3')
  config.train.steps = 30
  train.train(config, tmp_path, dataset=tiny_dataset)
  steps = [json.loads(l)["step"] for l in log.read_text().splitlines()]
  assert steps == [5, 10, 15, 20, 25, 30]


def test_eval_of_an_empty_workdir_says_so_and_creates_nothing(tmp_path):
  from jaxvna.errors import MissingCheckpointError
  config = tiny_config()
  with pytest.raises(MissingCheckpointError, match="no checkpoint"):
    train.evaluate_workdir(config, tmp_path)
  assert list(tmp_path.iterdir()) == []
  p = _cli(["eval", "--config=" + vna_sim.__file__ + ":vna,tiny", f"--workdir={tmp_path}"])
  out, _ = p.communicate(timeout=300)
  assert p.returncode == 2
  assert out.strip().splitlines()[-1] == (
      f"jaxvna eval: error: {tmp_path}: no checkpoint to evaluate (train in this workdir "
      "first)"), out[-3000:]
  assert "Traceback" not in out
  assert list(tmp_path.iterdir()) == []
