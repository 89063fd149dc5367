"""Time of `Checkpointer.save` on fake CPU devices: the blocking part, and save + wait.

The state is a training state replicated over a mesh of `--devices` CPU devices: the
parameters of two MLP towers (4096->512->256->128 and 1000->512->256->128, about 2.9M
float32 values, `--scale` multiplies the widths' product roughly linearly) plus AdamW's two
moments and two int32 counters. Each round, every checkpointer under test first runs a
jitted update that donates the state (as the trainer does) and waits for it, then is
timed for

  blocking  the time until `save()` returns (what the training loop waits for);
  total     the time until `wait()` returns (the step is written and finalised).

To compare with another version of the checkpoint module (e.g. the previous commit's),
pass its source file with `--module`; both run in one process, their order alternating
from round to round, each in a directory of its own:

  git show HEAD:jaxvna/training/checkpoint.py > OLD.py
  python benchmarks/checkpoint_save.py --module OLD.py --baseline_label HEAD \
      --out benchmarks/results/checkpoint_save.json

The JSON result holds the configuration, the versions of jax/orbax, the device count,
every round's times, the medians and the ratios current/baseline (below 1: faster).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

TOWERS = ((4096, 512, 256, 128), (1000, 512, 256, 128))


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", type=int, default=8, help="fake CPU devices")
  parser.add_argument("--rounds", type=int, default=7, help="timed rounds per variant")
  parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
  parser.add_argument("--scale", type=float, default=1.0,
                      help="multiplies the towers' input widths (state size)")
  parser.add_argument("--module", default=None,
                      help="a checkpoint.py to compare with (imported from the file)")
  parser.add_argument("--baseline_label", default="baseline",
                      help="a name for --module in the results, e.g. the commit")
  parser.add_argument("--workdir", default=None,
                      help="folder for the checkpoints (default: a temporary one, removed)")
  parser.add_argument("--out", default=None, help="write the JSON result here")
  return parser.parse_args(argv)


def _load_module(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _make_state(jax, jnp, np, mesh, scale):
  """A replicated AdamW-like training state; returns (state, number of parameters)."""
  rng = np.random.default_rng(0)
  params = {}
  for t, widths in enumerate(TOWERS):
    widths = (max(1, int(widths[0] * scale)),) + widths[1:]
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
      params[f"tower{t}_dense{i}"] = {
          "kernel": (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32),
          "bias": np.zeros((fan_out,), np.float32)}
  n_params = sum(x.size for x in jax.tree.leaves(params))
  state = {"step": np.int32(0), "params": params,
           "opt_state": {"count": np.int32(0),
                         "mu": jax.tree.map(lambda x: np.full_like(x, 1e-3), params),
                         "nu": jax.tree.map(lambda x: np.full_like(x, 1e-6), params)}}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.device_put(state, replicated), n_params


def main(argv=None) -> dict:
  args = _parse(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", args.devices)  # Before the backend starts.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from jaxvna.training import checkpoint as current  # pylint: disable=g-import-not-at-top

  if len(jax.devices()) != args.devices:
    raise SystemExit(f"expected {args.devices} devices, JAX has {len(jax.devices())} "
                     "(was the backend started before the flag was set?)")
  mesh = jax.make_mesh((args.devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  variants = {"current": current}
  baseline = None
  if args.module:
    with open(args.module, "rb") as f:
      baseline = {"label": args.baseline_label, "file": os.path.basename(args.module),
                  "sha256": hashlib.sha256(f.read()).hexdigest()}
    variants[args.baseline_label] = _load_module(args.module, "checkpoint_baseline")

  def step_fn(state):  # Stands for a training step: new values, the old state donated.
    return jax.tree.map(lambda x: x * 1.0001 if jnp.issubdtype(x.dtype, jnp.floating)
                        else x + 1, state)
  update = jax.jit(step_fn, donate_argnums=0)

  load_start = os.getloadavg()[0]
  workdir = args.workdir or tempfile.mkdtemp(prefix="checkpoint_save_")
  states, checkpointers = {}, {}
  for name, module in variants.items():
    states[name], n_params = _make_state(jax, jnp, np, mesh, args.scale)
    checkpointers[name] = module.Checkpointer(os.path.join(workdir, name), max_to_keep=2)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(states["current"]))
  rounds = []
  try:
    for r in range(args.warmup + args.rounds):
      order = list(variants) if r % 2 == 0 else list(reversed(variants))
      for name in order:
        states[name] = update(states[name])
        jax.block_until_ready(states[name])  # Bound what is in flight (see the CPU hang).
        step = r + 1
        start = time.perf_counter()
        assert checkpointers[name].save(step, states[name], {"step": step})
        blocking = time.perf_counter() - start
        checkpointers[name].wait()
        total = time.perf_counter() - start
        if r >= args.warmup:
          rounds.append({"round": r - args.warmup, "variant": name,
                         "blocking_s": blocking, "total_s": total})
        print(f"round {r - args.warmup:3d} {name:>12}: blocking {blocking * 1e3:8.1f} ms, "
              f"save+wait {total * 1e3:8.1f} ms{' (warm-up)' if r < args.warmup else ''}",
              flush=True)
  finally:
    for ckpt in checkpointers.values():
      ckpt.close()
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)

  medians = {name: {key: statistics.median(x[key] for x in rounds if x["variant"] == name)
                    for key in ("blocking_s", "total_s")} for name in variants}
  result = {
      "benchmark": "Checkpointer.save of a replicated AdamW-like state",
      "config": {"devices": args.devices, "rounds": args.rounds, "warmup": args.warmup,
                 "scale": args.scale, "towers": TOWERS, "parameters": int(n_params),
                 "state_leaves": len(jax.tree.leaves(states["current"])),
                 "state_bytes": int(state_bytes), "max_to_keep": 2,
                 "async_save": True, "sharding": "replicated (PartitionSpec())"},
      "baseline": baseline,
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                   "orbax_checkpoint": ocp.__version__, "numpy": np.__version__},
      "platform": jax.devices()[0].platform, "device_count": len(jax.devices()),
      "host_cpus": os.cpu_count(),
      # The host may be shared: its load says how noisy the figures are.
      "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
      "rounds": rounds,
      "medians": medians,
  }
  if baseline is not None:
    base = medians[args.baseline_label]
    result["ratio_current_over_baseline"] = {
        key: medians["current"][key] / base[key] for key in ("blocking_s", "total_s")}
  for name, m in medians.items():
    print(f"median {name:>12}: blocking {m['blocking_s'] * 1e3:8.1f} ms, "
          f"save+wait {m['total_s'] * 1e3:8.1f} ms")
  if "ratio_current_over_baseline" in result:
    print("current / baseline:", {k: round(v, 3)
                                  for k, v in result["ratio_current_over_baseline"].items()})
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
      f.write("\n")
  return result


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
