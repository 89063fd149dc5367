"""jaxvna vs the PyTorch peer workloads on this CPU, alternating A B A B.

Workloads (batch 256, CLIP loss with learnable temperature, Adam 1e-3, f32):
  cnn:  ConvTower (3 stride-2 3x3 convs 32/64/128, GELU, mean pool, linear 128) on
        64x64x1 + NeuralTower 1000 -> 512 -> 512 -> 128 (GELU); peer torch_cnn_clip.py.
  dina: MLPTower 4096 -> 512 -> 256 -> 128 + NeuralTower 1000 -> 512 -> 256 -> 128 (ReLU);
        peer torch_dina_clip.py.
The JAX step is one jit of value_and_grad + optax.adam, state donated, built from
`jaxvna.models.towers.dual_encoder` exactly as the trainer does (neuron dropout off, as in
the peer). Each round times the JAX step in this process, then runs the peer script in a
subprocess; the machine is shared and noisy, so the medians and their ratio are printed
as one JSON line (ratio > 1: jaxvna is faster).

Usage (from the repository root; torch is needed only here, not by jaxvna):
  python benchmarks/cnn_vs_torch.py --workload cnn --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEERS = {"cnn": "torch_cnn_clip.py", "dina": "torch_dina_clip.py"}
BATCH = 256


def model_config(workload: str):
  """The jaxvna model config equal to the peer's model."""
  from jaxvna.configs import common  # pylint: disable=g-import-not-at-top
  if workload == "cnn":
    return common.model(image_tower=common.image_tower("cnn"), neural_tower=common.neural_tower(
        readin_dim=512, hidden=(512,), neuron_dropout=0.0, activation="gelu"))
  return common.model(image_tower=common.image_tower("mlp"), neural_tower=common.neural_tower(
      readin_dim=512, hidden=(256,), neuron_dropout=0.0, activation="relu"))


def clip_loss(img, neu, temperature, mesh=None):
  """Symmetric InfoNCE; jaxvna.losses.clip_loss when available."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  try:
    from jaxvna import losses  # pylint: disable=g-import-not-at-top
    return losses.clip_loss(img, neu, temperature, mesh=mesh)
  except ImportError:
    if mesh is not None:
      raise
    logits = img @ neu.T / temperature
    labels = jnp.arange(img.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels
    return 0.5 * (ce(logits, labels).mean() + ce(logits.T, labels).mean())


def make_jax_runner(workload: str, devices: int = 1):
  """Returns run(steps) -> (samples/s, loss) of the compiled, warmed-up JAX step.

  devices > 1 splits the batch over that many CPU devices as the trainer does (an Auto
  "data" mesh, parameters replicated, jaxvna.losses.clip_loss with the mesh); the
  devices must have been requested with XLA_FLAGS before JAX started (see main).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from jaxvna.models import towers  # pylint: disable=g-import-not-at-top

  mesh = None
  if devices > 1:
    if jax.device_count() < devices:
      raise RuntimeError(f"{devices} devices requested, JAX sees {jax.device_count()}")
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:devices])

  model = towers.dual_encoder(model_config(workload), (1000,), (64, 64, 1))
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  images = jax.random.normal(k1, (BATCH, 64, 64, 1))
  responses = jax.random.normal(k2, (BATCH, 1000))
  subject = jax.numpy.zeros((BATCH,), jax.numpy.int32)
  params = model.init({"params": k3}, images, responses, subject, train=False)["params"]
  tx = optax.adam(1e-3)
  if mesh is not None:
    images, responses, subject = jax.device_put((images, responses, subject),
                                                NamedSharding(mesh, P("data")))
    params = jax.device_put(params, NamedSharding(mesh, P()))

  def loss_fn(p):
    img, neu, temperature, _ = model.apply({"params": p}, images, responses, subject,
                                           train=True)
    return clip_loss(img, neu, temperature, mesh)

  def step(p, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  state = [params, tx.init(params)]

  def run(steps: int, warmup: int = 5) -> tuple[float, float]:
    loss = None
    for i in range(warmup + steps):
      if i == warmup:
        start = time.perf_counter()
      if mesh is None:
        state[0], state[1], loss = step(state[0], state[1])
      else:
        with jax.set_mesh(mesh):
          state[0], state[1], loss = step(state[0], state[1])
      loss.block_until_ready()  # as the trainer does: one step in flight
    return steps * BATCH / (time.perf_counter() - start), float(loss)

  return run


def run_peer(script: pathlib.Path, steps: int) -> float:
  out = subprocess.run([sys.executable, str(script), str(steps)], check=True,
                       capture_output=True, text=True).stdout
  return float(json.loads(out.strip().splitlines()[-1])["samples_per_s"])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", choices=sorted(PEERS), default="cnn")
  parser.add_argument("--peer_script", default=None,
                      help="PyTorch peer script; default ../shared/benchmarks/<peer> "
                           "relative to the repository root")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per round (default 20 cnn, 50 dina)")
  parser.add_argument("--devices", type=int, default=1,
                      help="split the JAX batch over this many CPU devices, as the trainer "
                           "does on a multi-device mesh (default 1: one device)")
  args = parser.parse_args(argv)
  if args.devices > 1:  # before JAX initialises its backend
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  steps = args.steps or (20 if args.workload == "cnn" else 50)
  script = pathlib.Path(args.peer_script) if args.peer_script else (
      REPO.parent / "shared" / "benchmarks" / PEERS[args.workload])
  if not script.is_file():
    parser.error(f"--peer_script {script} does not exist")

  run_jax = make_jax_runner(args.workload, args.devices)
  jax_rates, peer_rates, loss = [], [], None
  for _ in range(args.rounds):
    rate, loss = run_jax(steps)
    jax_rates.append(rate)
    peer_rates.append(run_peer(script, steps))
  jax_median, peer_median = statistics.median(jax_rates), statistics.median(peer_rates)
  print(json.dumps({
      "workload": args.workload, "batch": BATCH, "jax_devices": args.devices, "steps_per_round": steps,
      "rounds": args.rounds, "jax_samples_per_s": round(jax_median, 1),
      "torch_samples_per_s": round(peer_median, 1),
      "ratio_jax_over_torch": round(jax_median / peer_median, 3),
      "jax_rounds": [round(r, 1) for r in jax_rates],
      "torch_rounds": [round(r, 1) for r in peer_rates], "jax_final_loss": loss}))


if __name__ == "__main__":
  main()
