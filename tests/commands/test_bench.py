"""`jaxvna bench` measures the step and reports it against the matmul peak."""

import json

from jaxvna.configs import bench_dina_mlp
from jaxvna.commands import bench


def test_bench_reports_throughput_and_fraction_of_peak(capsys):
  out = bench.run(bench_dina_mlp.get_config("tiny"))
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == out
  assert out["samples_per_s"] > 0 and out["gflops"] > 0 and out["peak_gflops"] > 0
  assert 0 < out["fraction_of_peak"] < 2
  # The trainer's loop and its input on the config's real data (vna_sim's tiny simulator).
  assert out["placement"] == "DeviceInput" and out["steps_per_call"] == 1  # "auto": it fits
  assert out["input_samples_per_s"] > 0 and out["train_samples_per_s"] > 0
  assert out["real_step_samples_per_s"] > 0 and out["train_vs_step"] > 0
  # The whole step's FLOPs over all 8 devices, not one device's share: at least forward +
  # backward of both towers' matmuls (3x forward), at most that plus the replicated AdamW
  # update on every device (a few tens of FLOPs per parameter).
  b = 32
  weights = 256 * 512 + 512 * 256 + 256 * 128 + 100 * 512 + 512 * 256 + 256 * 128
  forward = 2 * b * weights
  assert 2.5 * forward < out["step_gflop"] * 1e9 < 3.5 * forward + 8 * 40 * weights
