"""VNA for a pod or a GPU cluster: global batch 32768, ring loss, bf16 compute.

  jaxvna dryrun --config=configs/vna_pod.py --devices=64        (compile only: memory, FLOPs)
  jaxvna train --config=configs/vna_pod.py --workdir=W          (one process per host)
  jaxvna train --config=configs/vna_pod.py:/path/to/recordings --workdir=W
  jaxvna train --config=configs/vna_pod.py:tiny --workdir=W     (or :/path/to/recordings,tiny)

Data. Without an argument: the embedded simulator at 100,000 images (3 subjects of
300/250/200 neurons, 64x64), 192,000 training examples (image, subject), so one batch
holds a sixth of an epoch; every host simulates it (time and memory: README, "The pod
config"). A stand-in to exercise the pod: with 2.4
subjects' responses per image, about a quarter of the examples of a batch share their
image with another example of it, a negative that the loss cannot tell apart; real data
at this batch size should have more images. With an argument: every `*.npz` file of that
folder is one recording of your own data (the `npz` format of
`jaxvna.data.readers.read_npz`; write it with `readers.write_npz`). Each process reads
the whole dataset into memory and uses only the rows of each batch that its devices hold.
With other data, set train.steps to the number of epochs you want times (training
examples / 32768).

Tiny (an argument that is or ends with "tiny"): the ring loss and bfloat16 compute of this
config on vna_sim.py's tiny run (its simulator unless a folder is given, its towers, batch
64, 60 steps), to try the pod set-up on a laptop.

Model. The towers of configs/vna_sim.py, computed in bfloat16 (model.dtype): parameters,
gradients and the AdamW state stay float32, the embeddings are cast to float32 before the
L2 normalisation, and the loss is computed in float32.

Loss. loss.impl="ring": negatives travel around the devices in blocks, so a device holds
(B/N)^2 logits instead of the (B/N) x B of the gathered loss.

Schedule. AdamW at peak 1e-3, vna_sim.py's rate at batch 256, not scaled up with the
batch (larger rates did worse at batch 2048: README, "The pod config"). 10% linear
warmup, then cosine decay to 1%, over 600 steps: as many updates as vna_sim.py, each of
128x the examples (about 100 epochs of the simulator's training examples). Not tuned at
32768 itself: the first point of a sweep.

Parameter sharding. None: the state is replicated, as in `jaxvna train`. It is small
against the step's temporaries (`jaxvna dryrun --config=configs/vna_pod.py --devices=64`;
the README's dry-run table), so sharding it (FSDP) would save little and add an
all-gather of the parameters to every step.
"""

import pathlib

import ml_collections

from jaxvna.configs import split_tiny, vna_sim


def get_config(arg: str | None = None):
  recordings, tiny = split_tiny(arg)
  c = vna_sim.get_config("vna,tiny" if tiny else "vna")
  if recordings:
    paths = tuple(sorted(str(p) for p in pathlib.Path(recordings).glob("*.npz")))
    if not paths:
      raise FileNotFoundError(f"{recordings}: no .npz recordings in this folder")
    c.data.kind = "npz"
    c.data.kwargs = ml_collections.ConfigDict(dict(
        paths=paths, split_fractions=(0.8, 0.1, 0.1), split_seed=0))
  elif not tiny:
    c.data.kwargs = ml_collections.ConfigDict(dict(
        seed=0, num_subjects=3, num_images=100_000, image_size=64,
        neurons_per_subject=(300, 250, 200), spatial_frequency_range=(3.0, 12.0),
        repeats=(1, 2, 4)))  # test repeats 4, not 10: 40% of the responses' memory
  c.model.dtype = "bfloat16"
  c.loss.impl = "ring"
  if tiny:
    return c  # vna_sim.py's tiny batch and schedule

  c.train.batch_size = 32768
  c.train.steps = 600
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 60
  c.eval.n_ways = (2, 10, 50, 100, 1000, "all")
  c.eval.gabor_ridge = False  # a CPU ridge fit on 80,000 images: run it separately
  return c
