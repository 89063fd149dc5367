"""Fault injection: what a run survives, end to end, through the command line.

Each test breaks a run as a hostile but realistic user or machine would (kill -9 at random
moments and during an asynchronous save, a corrupt newest checkpoint, a second run on a
live workdir, the stale lock a killed run leaves, data that overflows every step, a
read-only workdir) and checks that nothing is lost, nothing non-finite is written and the
error is one clear line. Kill -9 during the lock's own take-over is in
tests/training/test_workdir_lock.py.
"""

import dataclasses
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxvna.configs import vna_sim
from jaxvna.data import readers
from jaxvna.training import checkpoint, train, workdir_lock

TINY = vna_sim.__file__ + ":vna,tiny"
STEPS = 60


def _start(workdir, *flags, prefix=(), config=TINY):
  steps = [] if config != TINY else [f"--config.train.steps={STEPS}"]
  return subprocess.Popen([*prefix, sys.executable, "-m", "jaxvna.cli", "train",
                           f"--config={config}", f"--workdir={workdir}", *steps, *flags],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process, timeout=600):
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


def _digest(workdir):
  return json.loads((workdir / "summary.json").read_text())["params_digest"]


def _logged_steps(workdir):
  return [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _steps_saved(workdir):
  folder = workdir / "checkpoints"
  return sorted(int(d.name) for d in folder.iterdir() if d.name.isdigit()) if (
      folder.is_dir()) else []


def _wait_for(condition, process, limit=300):
  deadline = time.time() + limit
  while time.time() < deadline and process.poll() is None and not condition():
    time.sleep(0.002)  # a tiny run's save is in flight for about 0.1 s
  return process.poll() is None and condition()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """An uninterrupted CLI run of the tiny config: what every broken run must end with."""
  workdir = tmp_path_factory.mktemp("straight")
  code, _, err = _finish(_start(workdir))
  assert code == 0, err[-3000:]
  return workdir


def test_kill9_at_random_moments_and_during_a_save_loses_nothing(tmp_path, straight_run):
  """Killed three times (while an asynchronous save is in flight, then at two seeded random
  moments), each time resumed on the stale lock the kill left: the run ends with the
  uninterrupted run's parameters and logs every step once. The save is caught first, while
  every save of the run is still ahead (a random kill may land after the last one)."""
  workdir = tmp_path / "run"
  moments = random.Random(0)
  for attempt in ("during_save", "random", "random"):
    process = _start(workdir)
    if attempt == "during_save":
      saving = lambda: any(".orbax-checkpoint-tmp" in d.name
                           for d in (workdir / "checkpoints").glob("*")) if (
          workdir / "checkpoints").is_dir() else False
      assert _wait_for(saving, process), "no save was seen in flight"
    else:
      started = lambda: (workdir / workdir_lock.LOCK_FILE).exists()
      assert _wait_for(started, process)
      time.sleep(moments.uniform(0.0, 8.0))
    if process.poll() is not None:
      break  # finished before this kill: nothing left to break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (workdir / workdir_lock.LOCK_FILE).exists()  # the stale lock of a killed run
  code, _, err = _finish(_start(workdir))
  assert code == 0, err[-3000:]
  assert _digest(workdir) == _digest(straight_run)
  assert _logged_steps(workdir) == _logged_steps(straight_run)
  assert not (workdir / workdir_lock.LOCK_FILE).exists()


def test_a_corrupt_newest_checkpoint_falls_back_and_the_run_still_ends_right(tmp_path):
  config = vna_sim.get_config("vna,tiny")
  dataset = readers.load("simulator", **config.data.kwargs)
  config.optim.decay_steps = 30  # one schedule, whatever length each attempt runs to
  config.train.steps = 30
  train.train(config, tmp_path / "straight", dataset=dataset)
  config.train.steps = 20
  train.train(config, tmp_path / "run", dataset=dataset)
  newest = tmp_path / "run" / "checkpoints" / "20" / "state"
  data = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  data.write_bytes(bytes(raw))
  config.train.steps = 30
  with pytest.warns(checkpoint.CheckpointFallbackWarning, match="step 20"):
    train.train(config, tmp_path / "run", dataset=dataset)
  assert _digest(tmp_path / "run") == _digest(tmp_path / "straight")
  assert list((tmp_path / "run" / "checkpoints").glob("20.corrupt-*"))  # kept, set aside


def test_a_second_run_on_a_live_workdir_is_refused_and_harms_nothing(tmp_path, straight_run):
  workdir = tmp_path / "run"
  first = _start(workdir)
  assert _wait_for(lambda: bool(_steps_saved(workdir)), first)
  first.send_signal(signal.SIGSTOP)  # alive, mid-run, however fast the rest would go
  try:
    second = _start(workdir)
    code, _, err = _finish(second, timeout=120)
  finally:
    first.send_signal(signal.SIGCONT)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  assert lines[0].startswith(f"jaxvna train: error: workdir {workdir}")
  assert f"pid {first.pid}" in lines[0]
  code, _, err = _finish(first)
  assert code == 0, err[-3000:]
  assert _digest(workdir) == _digest(straight_run)
  assert _logged_steps(workdir) == _logged_steps(straight_run)


def test_data_that_overflows_every_step_stops_with_one_line_and_finite_checkpoints(tmp_path):
  recording = readers.load("simulator", **vna_sim.get_config("vna,tiny").data.kwargs
                           ).recordings[0]
  huge = np.minimum(1e38 * (1 + recording.responses.astype(np.float64)), 3e38)
  path = readers.write_npz(dataclasses.replace(recording, responses=huge.astype(np.float32),
                                               truth=None), tmp_path / "huge.npz")
  config_file = tmp_path / "huge_config.py"
  config_file.write_text(CONFIG_OF_ONE_NPZ.format(vna_sim=vna_sim.__file__, path=str(path)))
  workdir = tmp_path / "run"
  code, _, err = _finish(_start(workdir, config=config_file))
  assert code == 2, err[-3000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxvna train: error: training stopped at "
                                                 "step 5: 5 steps in a row"), err[-3000:]
  assert not (workdir / "summary.json").exists() and not (workdir / "results.json").exists()
  assert _steps_saved(workdir) == [2, 4]
  spec = importlib.util.spec_from_file_location("huge_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  dataset = readers.load(config.data.kind, **config.data.kwargs)
  step, state = train.restore_latest(config, train.make_model(config, dataset), dataset,
                                     workdir)
  assert step == 4
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))


CONFIG_OF_ONE_NPZ = """
import importlib.util
spec = importlib.util.spec_from_file_location("vna_sim", {vna_sim!r})
vna_sim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vna_sim)


def get_config():
  c = vna_sim.get_config("vna,tiny")
  c.data.kind = "npz"
  c.data.kwargs = dict(paths={path!r})
  c.model.neural_tower.preprocess = "none"
  c.train.checkpoint_every = 2
  c.optim.max_consecutive_nonfinite = 5
  return c
"""


def _snapshot(folder):
  return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
          for p in sorted(folder.rglob("*"))}


def test_a_read_only_workdir_is_one_clear_line_and_stays_as_it_was(tmp_path, straight_run):
  workdir = tmp_path / "run"
  shutil.copytree(straight_run, workdir)
  before = _snapshot(workdir)
  workdir.chmod(0o555)
  prefix = []
  try:
    if os.access(workdir, os.W_OK):
      # Root ignores permission bits unless it gives up CAP_DAC_OVERRIDE.
      drop = "-dac_override,-dac_read_search"
      prefix = [shutil.which("setpriv") or "setpriv", f"--inh-caps={drop}",
                f"--bounding-set={drop}"]
      if subprocess.run(prefix + ["true"], capture_output=True).returncode:
        pytest.skip("running as root, whom permission bits do not bind, and setpriv cannot "
                    "drop CAP_DAC_OVERRIDE here")
    code, _, err = _finish(_start(workdir, "--config.train.steps=80", prefix=prefix),
                           timeout=120)
  finally:
    workdir.chmod(0o755)
  assert code == 2 and "Traceback" not in err, err[-3000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1 and str(workdir) in lines[0] and "writable" in lines[0], err
  assert _snapshot(workdir) == before
