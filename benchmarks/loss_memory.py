"""Per-device compile-time memory of value_and_grad(clip_loss): gathered vs ring negatives.

Compiles (never runs) the gradient of `jaxvna.losses.clip_loss` over a mesh of fake CPU
devices for each global batch size and implementation, and prints XLA's memory analysis of
the per-device program as JSON lines, then a table.

    python benchmarks/loss_memory.py
    python benchmarks/loss_memory.py --devices 8 --batch_sizes 8192,32768 --dim 256
"""

import argparse
import json
import os
import sys


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8, help="number of fake CPU devices")
  parser.add_argument("--batch_sizes", default="8192,32768", help="comma-separated global batches")
  parser.add_argument("--dim", type=int, default=256, help="embedding dimension D")
  parser.add_argument("--impls", default="gather,ring", help="comma-separated clip_loss impls")
  return parser.parse_args(argv)


def measure(batch_size: int, dim: int, impl: str, mesh) -> dict:
  """Compiles value_and_grad of clip_loss for (batch_size, dim) inputs; returns its sizes."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from jaxvna import losses

  batch = NamedSharding(mesh, P("data"))
  emb = jax.ShapeDtypeStruct((batch_size, dim), jnp.float32, sharding=batch)
  temperature = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  step = jax.jit(jax.value_and_grad(
      lambda x, y, t: losses.clip_loss(x, y, t, mesh=mesh, impl=impl), argnums=(0, 1, 2)))
  with jax.set_mesh(mesh):
    compiled = step.lower(emb, emb, temperature).compile()
  stats = compiled.memory_analysis()
  return {
      "batch_size": batch_size, "dim": dim, "impl": impl, "devices": mesh.size,
      "temp_bytes": stats.temp_size_in_bytes,
      "argument_bytes": stats.argument_size_in_bytes,
      "output_bytes": stats.output_size_in_bytes,
      "alias_bytes": stats.alias_size_in_bytes,
  }


def main(argv=None):
  args = parse_args(argv)
  # Fake devices must be requested before JAX initialises its backends.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax

  mesh = jax.make_mesh((args.devices,), ("data",))
  rows = []
  for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
    for impl in args.impls.split(","):
      row = measure(batch_size, args.dim, impl, mesh)
      print(json.dumps(row), flush=True)
      rows.append(row)

  mib = 2.0 ** 20
  print(f"\nper-device compile-time memory, value_and_grad(clip_loss), D={args.dim}, "
        f"{args.devices} devices (MiB)")
  print(f"{'batch':>8} {'impl':>7} {'temp':>10} {'args':>8} {'output':>8}")
  for r in rows:
    print(f"{r['batch_size']:>8} {r['impl']:>7} {r['temp_bytes'] / mib:>10.1f} "
          f"{r['argument_bytes'] / mib:>8.1f} {r['output_bytes'] / mib:>8.1f}")


if __name__ == "__main__":
  main()
