"""End-to-end training throughput against the step alone, per input placement.

For each throughput config (bench_dina_mlp, bench_cnn) and each input set-up (the host
pipeline, with its threads, with 2 grain worker processes, or reading a prepared TFDS
copy made here in a temporary folder; the split resident on the devices; resident with 8
steps per call; with --fake_devices=8, also split by rows over the devices: "sharded"),
runs
`jaxvna.commands.bench.run`, whose JSON holds, measured in alternating rounds in one
process: the step alone on synthetic inputs (samples_per_s), the configured input alone
(input_samples_per_s), the trainer's own loop `train.run_calls` (train_samples_per_s) and
the step alone on one real batch (real_step_samples_per_s), with
train_vs_step = train / real step.

  python benchmarks/training_throughput.py --out benchmarks/results/training_throughput.json
  python benchmarks/training_throughput.py --fake_devices=8 --configs=bench_dina_mlp,bench_cnn \
      --setups=device,sharded --out benchmarks/results/placement_8_devices.json
  python benchmarks/training_throughput.py --setups=host,device,device_k8 --batch_size=4096 \
      --dtypes=float32,bfloat16 --out benchmarks/results/training_throughput_h200.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETUPS = {"host": {"data.placement": "host", "train.steps_per_call": 1},
          "host_2_workers": {"data.placement": "host", "data.worker_processes": 2,
                             "train.steps_per_call": 1},
          # The host pipeline reading a prepared TFDS copy's ArrayRecord records.
          "host_prepared": {"data.placement": "host", "data.source": "prepared",
                            "train.steps_per_call": 1},
          "device": {"data.placement": "device", "train.steps_per_call": 1},
          "sharded": {"data.placement": "sharded", "train.steps_per_call": 1},
          "device_k8": {"data.placement": "device", "train.steps_per_call": 8}}


SETUP_NAMES = {"host": "host pipeline (2 threads)",
               "host_2_workers": "host pipeline, 2 worker processes",
               "host_prepared": "host pipeline, from a prepared TFDS copy",
               "device": "device-resident (the default)",
               "sharded": "device-resident, sharded (1 device)",
               "device_k8": "device-resident, 8 steps per call"}


def summary_table(result: dict) -> str:
  """The README's table of a result file: samples/s of the input alone, the trainer's loop
  and the step alone on real data, per config, set-up (and dtype, when more than one)."""
  dtypes = {run.get("dtype", "float32") for run in result["runs"]}
  head = "| config | input |" + (" dtype |" if len(dtypes) > 1 else "")
  rows = [head + " input alone | trainer's loop | step alone | loop / step |",
          "|---" * (head.count("|") + 3) + "|"]
  for run in result["runs"]:
    r = run["result"]
    rows.append(f"| {run['config']} | {SETUP_NAMES[run['setup']]} |"
                + (f" {run['dtype']} |" if len(dtypes) > 1 else "")
                + "".join(f" {_significant(r[k])} |" for k in
                          ("input_samples_per_s", "train_samples_per_s",
                           "real_step_samples_per_s"))
                + f" {r['train_vs_step']:.2f} |")
  return "\n".join(rows)


def _significant(x: float) -> str:
  """Three significant figures, with thousands separators: 57,300; 1,140; 913."""
  return f"{float(f'{x:.3g}'):,.0f}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default="bench_dina_mlp,bench_cnn")
  parser.add_argument("--setups", default=",".join(SETUPS))
  parser.add_argument("--batch_size", type=int, default=0,
                      help="global batch size of every run (0: each config's own)")
  parser.add_argument("--dtypes", default="float32",
                      help="compute dtypes to run each setup in (model.dtype), e.g. "
                           "float32,bfloat16")
  parser.add_argument("--out", default=None, help="write the JSON result here")
  parser.add_argument("--fake_devices", type=int, default=0,
                      help="split the CPU into this many XLA devices (0: one device)")
  args = parser.parse_args(argv)
  if args.fake_devices:  # before jax is imported
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform"
                               f"_device_count={args.fake_devices}")

  import importlib

  import jax
  from jaxvna.commands import bench

  runs = []
  copies = tempfile.TemporaryDirectory(prefix="jaxvna-throughput-")
  for name in args.configs.split(","):
    module = importlib.import_module(f"jaxvna.configs.{name}")
    for setup, dtype in itertools.product(args.setups.split(","), args.dtypes.split(",")):
      config = module.get_config()
      for key, value in SETUPS[setup].items():
        section, field = key.split(".")
        config[section][field] = value
      config.model.dtype = dtype
      if args.batch_size:
        config.train.batch_size = args.batch_size
      if config.data.source == "prepared":
        from jaxvna.data import tfds_builders
        config.data.prepared_dir = str(tfds_builders.prepare(
            config.data.kind, copies.name, reader_kwargs=dict(config.data.kwargs)))
      start = time.perf_counter()
      out = bench.run(config)
      runs.append({"config": name, "setup": setup, "dtype": dtype,
                   "batch_size": config.train.batch_size, **SETUPS[setup],
                   "wall_s": time.perf_counter() - start, "result": out})
  copies.cleanup()
  import flax
  import optax
  result = {
      "benchmark": "training_throughput",
      "command": "python benchmarks/training_throughput.py " + " ".join(argv or sys.argv[1:]),
      "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
      "platform": platform.platform(), "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(), "host_cpus": os.cpu_count(),
      "load_average_1min": os.getloadavg()[0], "runs": runs,
  }
  if args.out:
    from jaxvna import files
    files.write_json(pathlib.Path(args.out), result, indent=2)
  print(summary_table(result))
  print(json.dumps({f"{r['config']}:{r['setup']}:{r['dtype']}": {
      k: round(r["result"][k], 2) for k in ("samples_per_s", "input_samples_per_s",
                                            "train_samples_per_s", "real_step_samples_per_s",
                                            "train_vs_step")} for r in runs}, indent=1))


if __name__ == "__main__":
  main()
