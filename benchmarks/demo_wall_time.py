"""Where the wall time of `jaxvna demo` goes: the demo (`jaxvna.commands.demo.run`, config
vna_sim.py) run in this process, its wall time split into shares by wrapping the functions
that do each part.

  git worktree add ../demo_before <commit>   # the code measured as "before"
  PYTHONPATH=../demo_before python benchmarks/demo_wall_time.py --label before
  python benchmarks/demo_wall_time.py --label after --results results/demo.json \
      --plot docs/demo.png
  (this checkout; --results and --plot keep the demo's results.json and demo.png; --warm:
  a cached run)

Phases (each one's time excludes the phases nested in it and the compiles that ran in it):
  data         train.load_dataset (the simulator)
  compile      XLA backend compiles ('/jax/core/compile/backend_compile_duration'), wherever
  steps        train.run_calls (the training loop), less its checkpoint saves
  checkpoint   checkpoint.Checkpointer.save and .close (the waits for saves in flight)
  evaluation   train.evaluate (every method's held-out evaluation)
  gabor_ridge  discriminative.evaluate_gabor_ridge (the reference)
  other        the rest: model set-up, tracing, the table and the plot, ...
non_step_share = 1 - steps / total. The compilation cache is off (a cold run) unless
--compilation_cache DIR is given; --warm runs the demo twice on a fresh cache folder (with
JAX's in-memory caches cleared between) and reports the second run. The runs merge into
the --out JSON under runs[--label], so that e.g. "before" and "after" sit side by side
(the code measured is the `jaxvna` that Python imports: its checkout's commit is recorded).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
PATCHES = [  # (phase, module, the attribute that the demo's code looks up at call time)
    ("data", "jaxvna.training.train", "load_dataset"),
    ("steps", "jaxvna.training.train", "run_calls"),
    ("checkpoint", "jaxvna.training.checkpoint", "Checkpointer.save"),
    ("checkpoint", "jaxvna.training.checkpoint", "Checkpointer.close"),
    ("evaluation", "jaxvna.training.train", "evaluate"),
    ("gabor_ridge", "jaxvna.evaluation.discriminative", "evaluate_gabor_ridge"),
]


class PhaseTimer:
  """Exclusive seconds per phase: a phase's wall time less that of the phases and the
  backend compiles nested in it (compiles count once, under "compile")."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.events = collections.defaultdict(float)  # every /jax/core/compile/* total
    self._stack = []  # [phase, seconds of it spent nested elsewhere]

  def on_event(self, event, duration, **_):
    if event.startswith("/jax/core/compile/") or event.startswith("/jax/compilation_cache/"):
      self.events[event] += duration
    if event == BACKEND_COMPILE:
      self.seconds["compile"] += duration
      if self._stack:
        self._stack[-1][1] += duration

  def wrap(self, phase, fn):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
      frame = [phase, 0.0]
      self._stack.append(frame)
      start = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        elapsed = time.perf_counter() - start
        self._stack.pop()
        self.seconds[phase] += elapsed - frame[1]
        if self._stack:
          self._stack[-1][1] += elapsed
    return timed


@contextlib.contextmanager
def timed_phases(timer: PhaseTimer):
  """Wraps every PATCHES function and listens to JAX's compile events; restores after."""
  import jax
  saved = []
  for phase, module_name, path in PATCHES:
    owner = importlib.import_module(module_name)
    *outer, name = path.split(".")
    for part in outer:
      owner = getattr(owner, part)
    saved.append((owner, name, getattr(owner, name)))
    setattr(owner, name, timer.wrap(phase, getattr(owner, name)))
  jax.monitoring.register_event_duration_secs_listener(timer.on_event)
  try:
    yield
  finally:
    jax.monitoring.unregister_event_duration_listener(timer.on_event)
    for owner, name, original in reversed(saved):
      setattr(owner, name, original)


def run_demo(config_arg: str | None, keep: dict | None = None) -> dict:
  """One `jaxvna demo` in a temporary workdir: {total_s, phases, compile_events, results};
  the workdir's files named in `keep` ({name: destination}) copied out."""
  from jaxvna.commands import demo
  from jaxvna.configs import vna_sim
  config = vna_sim.get_config() if config_arg is None else vna_sim.get_config(config_arg)
  config.lock()  # as the CLI's config flag
  timer = PhaseTimer()
  with tempfile.TemporaryDirectory() as workdir, timed_phases(timer):
    start = time.perf_counter()
    out = demo.run(config, workdir)
    total = time.perf_counter() - start
    for name, destination in (keep or {}).items():
      shutil.copyfile(pathlib.Path(workdir) / name, destination)
  phases = {p: timer.seconds[p] for p in ["data", "compile", *(p for p, *_ in PATCHES)]}
  phases["other"] = total - sum(phases.values())
  return {"total_s": total,
          "phases": {k: {"s": round(v, 2), "share": round(v / total, 4)}
                     for k, v in phases.items()},
          "non_step_share": round(1 - phases.get("steps", 0.0) / total, 4),
          "compile_events_s": {k: round(v, 2) for k, v in timer.events.items()},
          "results": top1_table(out["results"])}


def top1_table(results: dict) -> dict:
  """{method: {task: {N: [top1, ci_low, ci_high]}}} of the demo's results."""
  return {method: {task: {n: [round(r["top1"], 4), *(round(c, 4) for c in r["top1_ci95"])]
                          for n, r in res[task].items()}
                   for task in ("decoding", "encoding")}
          for method, res in results.items()}


def set_compilation_cache(folder: str) -> None:
  """As `jaxvna` (cli._main) does; '' leaves the persistent cache off."""
  import jax
  os.environ["JAXVNA_COMPILATION_CACHE"] = folder
  if folder:
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def git_state(folder: pathlib.Path) -> dict:
  git = lambda *a: subprocess.run(["git", "-C", str(folder), *a], capture_output=True,
                                  text=True).stdout.strip()
  return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--label", default="run", help="the run's key in the JSON's runs")
  parser.add_argument("--out", default=str(REPO / "benchmarks/results/demo_wall_time.json"))
  parser.add_argument("--config_arg", default=None, help="vna_sim.get_config's argument")
  parser.add_argument("--compilation_cache", default="", help="cache folder ('' : none)")
  parser.add_argument("--results", default=None,
                      help="copy the demo's results.json here (e.g. results/demo.json)")
  parser.add_argument("--plot", default=None,
                      help="copy the demo's demo.png here (e.g. docs/demo.png)")
  parser.add_argument("--warm", action="store_true",
                      help="run twice on a fresh cache folder; report the second run")
  args = parser.parse_args(argv)
  load_start = os.getloadavg()[0]

  from absl import logging
  logging.set_verbosity(logging.WARNING)  # as the CLI: orbax and grain log every step
  import flax
  import jax
  import jaxvna
  import optax
  print(f"jaxvna: {jaxvna.__file__}", flush=True)  # the code under test

  with tempfile.TemporaryDirectory() as cache:
    set_compilation_cache(cache if args.warm else args.compilation_cache)
    keep = {name: path for name, path in (("results.json", args.results),
                                           ("demo.png", args.plot)) if path}
    run = run_demo(args.config_arg, None if args.warm else keep)
    if args.warm:
      jax.clear_caches()  # a new process would start with none
      run = dict(run_demo(args.config_arg, keep), cold_run_total_s=run["total_s"])

  python_path = ([f"PYTHONPATH={os.environ['PYTHONPATH']}"] if "PYTHONPATH" in os.environ
                 else [])
  record = {
      "command": " ".join(python_path + ["python", "benchmarks/demo_wall_time.py",
                                         *(argv or sys.argv[1:])]),
      "git": git_state(pathlib.Path(jaxvna.__file__).resolve().parents[1]),
      "config": "vna_sim.py" + (f":{args.config_arg}" if args.config_arg else ""),
      "compilation_cache": "warm (second run)" if args.warm else (args.compilation_cache or
                                                                   "off"),
      "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
      "platform": platform.platform(), "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(), "host_cpus": os.cpu_count(),
      "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]}, **run}
  out = pathlib.Path(args.out)
  merged = json.loads(out.read_text()) if out.exists() else {"benchmark": "demo_wall_time"}
  merged.setdefault("runs", {})[args.label] = record
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(merged, indent=2) + "\n")
  print(json.dumps({"total_s": round(run["total_s"], 1), "non_step_share": run["non_step_share"],
                    **{k: v["share"] for k, v in run["phases"].items()}}, indent=1))


if __name__ == "__main__":
  main()
