"""Does XLA:CPU still stall when sharded training calls are queued without waiting?

Back-to-back sharded steps on CPU once stalled in all_gather until XLA aborted the process
("Termination timeout for 'all gather'"), so the trainer waits for the devices after every
call on CPU (`train.SYNC_EVERY_CALL_BACKENDS`). This runs `jaxvna train` of the tiny
simulator config on 8 fake CPU devices with that wait removed (the GPU/TPU loop: a wait
only at log and checkpoint steps, here only at the end of 400 steps), for each input
set-up, several times in fresh processes, and counts the runs that stalled or failed.

  python benchmarks/cpu_stall.py --out benchmarks/results/cpu_stall.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

SETUPS = {"host": {"data.placement": "host", "train.steps_per_call": 1},
          "device": {"data.placement": "device", "train.steps_per_call": 1},
          "device_k8": {"data.placement": "device", "train.steps_per_call": 8}}
STEPS = 400


def child(setup: str) -> None:
  """One run without per-call waits (in a process with 8 fake CPU devices)."""
  from jaxvna.configs import vna_sim
  from jaxvna.training import train
  train.SYNC_EVERY_CALL_BACKENDS = ()  # the GPU/TPU loop
  config = vna_sim.get_config("vna,tiny")
  config.train.steps = config.train.log_every = config.train.checkpoint_every = STEPS
  for key, value in SETUPS[setup].items():
    section, field = key.split(".")
    config[section][field] = value
  with tempfile.TemporaryDirectory() as workdir:
    train.train(config, workdir)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--trials", type=int, default=4)
  parser.add_argument("--timeout", type=float, default=300.0)
  parser.add_argument("--out", default=None, help="write the JSON result here")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(args.child)

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAXVNA_COMPILATION_CACHE="")
  runs = []
  for setup in SETUPS:
    for trial in range(args.trials):
      start = time.perf_counter()
      try:
        done = subprocess.run([sys.executable, __file__, "--child", setup], env=env,
                              capture_output=True, text=True, timeout=args.timeout)
        code, err = done.returncode, done.stderr
      except subprocess.TimeoutExpired as e:
        code, err = "timeout", (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else ""
      # XLA's abort names the collective on a line of its own, before the stack trace.
      reason = next((line.strip() for line in (err or "").splitlines()
                     if "Termination timeout" in line or "Check failed" in line), "")
      runs.append({"setup": setup, "trial": trial, "returncode": code,
                   "stalled": code != 0, "reason": reason[:300],
                   "wall_s": round(time.perf_counter() - start, 1)})
      print(json.dumps(runs[-1]), flush=True)
  summary = {setup: {"runs": sum(r["setup"] == setup for r in runs),
                     "stalled": sum(r["setup"] == setup and r["stalled"] for r in runs)}
             for setup in SETUPS}
  result = {"benchmark": "cpu_stall",
            "command": "python benchmarks/cpu_stall.py " + " ".join(argv or sys.argv[1:]),
            "devices": "8 fake CPU devices (--xla_force_host_platform_device_count=8)",
            "steps_per_run": STEPS, "platform": platform.platform(),
            "host_cpus": os.cpu_count(), "summary": summary, "runs": runs}
  print(json.dumps(summary))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  main()
