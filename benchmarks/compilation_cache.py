"""What the persistent compilation cache saves: `jaxvna train` of a config twice, each in a
new workdir, first with an empty cache folder, then with the one the first run filled.

  python benchmarks/compilation_cache.py --out benchmarks/results/compilation_cache.json

Each case's wall times (whole command, process start to exit) and the saving go to the
JSON; the two runs of a case must end with the same parameters (checked).
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

REPO = pathlib.Path(__file__).resolve().parents[1]
CASES = {
    "vna_sim:tiny (MLP towers, 60 steps)": ["--config=configs/vna_sim.py:tiny"],
    "vna_sim (CNN towers, 50 steps)": ["--config=configs/vna_sim.py",
                                       "--config.train.steps=50",
                                       "--config.eval.gabor_ridge=False"],
}


def _train(args, workdir, cache) -> float:
  env = dict(os.environ, JAXVNA_COMPILATION_CACHE=str(cache))
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "jaxvna.cli", "train", *args, f"--workdir={workdir}",
                  "--config.train.progress_bar=False"], cwd=REPO, env=env, check=True,
                 stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=None, help="write the JSON result here")
  args = parser.parse_args(argv)
  cases = []
  for name, flags in CASES.items():
    with tempfile.TemporaryDirectory() as tmp:
      tmp = pathlib.Path(tmp)
      cold = _train(flags, tmp / "cold", tmp / "cache")
      warm = _train(flags, tmp / "warm", tmp / "cache")
      digest = lambda d: json.loads((tmp / d / "summary.json").read_text())["params_digest"]
      assert digest("cold") == digest("warm")
      entries = len(list((tmp / "cache").iterdir()))
    cases.append({"case": name, "flags": flags, "cold_s": cold, "warm_s": warm,
                  "saved_s": cold - warm, "saved_fraction": (cold - warm) / cold,
                  "cache_entries": entries})
    print(json.dumps(cases[-1]))
  import jax
  result = {"benchmark": "compilation_cache",
            "command": "python benchmarks/compilation_cache.py " + " ".join(argv or sys.argv[1:]),
            "jax": jax.__version__, "platform": platform.platform(),
            "host_cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
            "cases": cases}
  if args.out:
    sys.path.insert(0, str(REPO))
    from jaxvna import files
    files.write_json(pathlib.Path(args.out), result, indent=2)


if __name__ == "__main__":
  main()
