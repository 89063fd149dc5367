"""The DINA seed's dual-tower MLP sketch as a throughput benchmark (synthetic inputs).

  jaxvna bench --config=configs/bench_dina_mlp.py
  jaxvna bench --config=configs/bench_dina_mlp.py:tiny   (batch 32 of 16x16 images, a few steps)

Image tower 64x64 flattened -> 512 -> 256 -> 128, neural tower 1000 -> 512 -> 256 -> 128
(ReLU), CLIP loss with a learnable temperature, batch 256: the same workload as the
PyTorch peer benchmarks/torch_dina_clip.py of the shared benchmarks folder.
"""

import ml_collections

from jaxvna.configs import common, only_tiny, vna_sim


def get_config(arg=None):
  tiny = only_tiny(arg, "bench_dina_mlp")
  c = vna_sim.get_config("vna")
  c.model.embed_dim = 128
  c.model.image_tower = common.image_tower("mlp")
  c.model.neural_tower = common.neural_tower(readin_dim=512, hidden=(256,), neuron_dropout=0.0)
  c.train.batch_size = 256
  c.bench = ml_collections.ConfigDict(dict(
      name="bench_dina_mlp", image_shape=(64, 64, 1), num_neurons=1000, steps=20,
      warmup_steps=5, rounds=5))
  if tiny:
    c.train.batch_size = 32
    c.data.kwargs = vna_sim.get_config("tiny").data.kwargs  # the loop's real data
    c.bench.update(dict(image_shape=(16, 16, 1), num_neurons=100, steps=3, warmup_steps=1,
                        rounds=2))
  return c
