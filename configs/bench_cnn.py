"""The small-CNN workload as a throughput benchmark (synthetic inputs).

  jaxvna bench --config=configs/bench_cnn.py
  jaxvna bench --config=configs/bench_cnn.py:tiny   (batch 32 of 16x16 images, a few steps)

Image tower: 3 stride-2 3x3 convs 32/64/128 (GELU) on 64x64x1, mean pool, linear 128;
neural tower 1000 -> 512 -> 512 -> 128; CLIP loss; batch 256: the workload of the PyTorch
peer torch_cnn_clip.py of the shared benchmarks folder.
"""

import ml_collections

from jaxvna.configs import common, only_tiny, vna_sim


def get_config(arg=None):
  tiny = only_tiny(arg, "bench_cnn")
  c = vna_sim.get_config("vna")
  c.model.embed_dim = 128
  c.model.image_tower = common.image_tower("cnn")
  c.model.neural_tower = common.neural_tower(readin_dim=512, hidden=(512,), neuron_dropout=0.0,
                                             activation="gelu")
  c.train.batch_size = 256
  c.bench = ml_collections.ConfigDict(dict(
      name="bench_cnn", image_shape=(64, 64, 1), num_neurons=1000, steps=5,
      warmup_steps=3, rounds=4))
  if tiny:
    c.train.batch_size = 32
    c.data.kwargs = vna_sim.get_config("tiny").data.kwargs  # the loop's real data
    c.bench.update(dict(image_shape=(16, 16, 1), num_neurons=100, steps=3, warmup_steps=1,
                        rounds=2))
  return c
