"""Multi-process training: `jaxvna train` as 2 processes x 2 CPU devices (gloo collectives
over loopback) reproduces 1 process x 4 devices, through a checkpoint that both processes
save and restore together; and the settings that launch such runs are checked."""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxvna.configs import vna_sim
from jaxvna.data import readers
from jaxvna.training import checkpoint, distributed, train

STEPS = 20
# vna_sim.py's tiny run with these dotted config keys changed (--config.<key>=<value>).
OVERRIDES = {
    "optim.decay_steps": STEPS,  # the same schedule for a run stopped early and resumed
    "train.log_every": 1}
# A hang (a process waiting on a collective its peer never joins) fails the test.
LAUNCH_TIMEOUT_S = 300


def _flags(steps, placement="host"):
  return ["--config=" + vna_sim.__file__ + ":vna,tiny", f"--config.train.steps={steps}",
          f"--config.data.placement={placement}"] + [
      f"--config.{key}={value}" for key, value in OVERRIDES.items()]


def _tiny_config():
  config = vna_sim.get_config("vna,tiny")
  config.update_from_flattened_dict(OVERRIDES)
  return config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  # The test process runs on 8 fake devices (conftest's XLA_FLAGS); each launched process
  # gets its device count from --local_device_count instead.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _launch(workdir: pathlib.Path, steps: int, *, processes: int, devices: int,
            logs: pathlib.Path, placement: str = "host") -> None:
  """Runs `jaxvna train` as `processes` processes of `devices` CPU devices each."""
  command = [sys.executable, "-m", "jaxvna.cli", "train", f"--workdir={workdir}",
             f"--local_device_count={devices}", *_flags(steps, placement)]
  if processes > 1:
    command += [f"--coordinator_address=127.0.0.1:{_free_port()}",
                f"--num_processes={processes}"]
  logs.mkdir(parents=True, exist_ok=True)
  paths = [logs / f"{workdir.name}-{steps}-process{i}.log" for i in range(processes)]
  running = []
  try:
    for i, path in enumerate(paths):
      with open(path, "w") as log:  # a file, not a pipe: a full pipe would block a process
        running.append(subprocess.Popen(
            command + ([f"--process_id={i}"] if processes > 1 else []), env=_env(),
            stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    for p in running:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for p in running:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, path in zip(running, paths):
    assert p.returncode == 0, (f"{path.name} exited with {p.returncode}:\n"
                               + path.read_text()[-3000:])


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _final_params(workdir):
  """The parameters of the latest checkpoint in `workdir`, a pytree of numpy arrays."""
  config = _tiny_config()
  dataset = readers.load(config.data.kind, **config.data.kwargs)
  step, state = train.restore_latest(config, train.make_model(config, dataset), dataset,
                                     workdir)
  assert step == STEPS
  return jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("placements", [("host", "host"), ("sharded", "device")])
def test_multihost_two_processes_match_one_process_through_a_resume(tmp_path, placements):
  """2 x 2 devices, stopped at step 10 and resumed to 20 == 1 x 4 devices for 20 steps,
  with the host pipeline (each process reads its rows) or device-resident input (the
  batch drawn from the seed and the step): steps 1-10 with each process holding only its
  devices' rows of the split ("sharded"), 11-20 with each holding all of it ("device")."""
  logs = tmp_path / "logs"
  single, multi = tmp_path / "single", tmp_path / "multi"
  launch = functools.partial(_launch, logs=logs)
  launch(single, STEPS, processes=1, devices=4, placement=placements[1])
  launch(multi, STEPS // 2, processes=2, devices=2, placement=placements[0])
  # Restores step 10 collectively.
  launch(multi, STEPS, processes=2, devices=2, placement=placements[1])

  # Process 0 alone logs: every step once, across both launches.
  rows_single, rows_multi = _metrics(single), _metrics(multi)
  assert [r["step"] for r in rows_multi] == list(range(1, STEPS + 1))
  for key in ("loss", "grad_norm", "temperature"):
    # Not bitwise: gloo sums a cross-process all-reduce in another order than XLA's
    # in-process all-reduce (the step-1 losses already differ in the last bit).
    np.testing.assert_allclose([r[key] for r in rows_multi], [r[key] for r in rows_single],
                               rtol=1e-5, err_msg=key)

  params_multi, params_single = _final_params(multi), _final_params(single)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params_multi)[0],
                          jax.tree.leaves(params_single)):
    # Measured differences are below 3e-7; a wrongly restored step or input position
    # moves parameters by about lr = 3e-3 per step.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))

  summary = json.loads((multi / "summary.json").read_text())
  assert summary["steps"] == STEPS
  # The digest of parameters spread over both processes is that of their full values.
  assert summary["params_digest"] == checkpoint.params_digest(params_multi)
  # Every process evaluated its own gathered copy of the parameters; process 0 wrote it.
  results = [json.loads((d / "results.json").read_text())["results"]["vna"]
             for d in (multi, single)]
  for task in ("decoding", "encoding"):
    assert results[0][task]["10"]["top1"] == pytest.approx(results[1][task]["10"]["top1"],
                                                           abs=0.02)


def test_multihost_settings_come_from_flags_or_environment():
  env = {"JAXVNA_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAXVNA_NUM_PROCESSES": "4",
         "JAXVNA_PROCESS_ID": "3"}
  settings = distributed.resolve(environ=env)
  assert (settings.coordinator_address, settings.num_processes, settings.process_id) == (
      "10.0.0.1:1234", 4, 3)
  assert settings.multi_process
  # A flag wins over the environment.
  assert distributed.resolve(process_id=1, environ=env).process_id == 1
  assert not distributed.resolve(environ={}).multi_process
  assert not distributed.resolve(num_processes=1, process_id=0, environ={}).multi_process
  # On a cluster JAX detects, nothing else is needed.
  assert distributed.resolve(environ={"JAXVNA_DISTRIBUTED": "1"}).multi_process


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"process_id=2 is outside"),
    (dict(num_processes=2, process_id=0), r"needs coordinator_address"),
    (dict(coordinator_address="h:1", num_processes=2), r"needs process_id"),
    (dict(process_id=1), r"needs coordinator_address, num_processes"),
    (dict(num_processes=0), r"num_processes must be >= 1"),
    (dict(environ={"JAXVNA_NUM_PROCESSES": "two"}), r"JAXVNA_NUM_PROCESSES='two' is not"),
])
def test_multihost_inconsistent_settings_are_clear_errors(kwargs, message):
  kwargs.setdefault("environ", {})
  with pytest.raises(ValueError, match=message):
    distributed.resolve(**kwargs)


def test_multihost_cli_reports_inconsistent_settings(tmp_path):
  out = subprocess.run([sys.executable, "-m", "jaxvna.cli", "train", f"--workdir={tmp_path}",
                        "--num_processes=2", "--process_id=0"], capture_output=True,
                       text=True, timeout=120, env=_env())
  assert out.returncode != 0
  assert "jaxvna train: a multi-process run needs coordinator_address" in out.stderr
