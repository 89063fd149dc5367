"""Contrastive losses between image and neural embeddings, optionally sharded over a mesh.

Two objectives over a batch of B paired embeddings x_i (image) and y_i (neural):

* `clip_loss`: the symmetric InfoNCE of CLIP, with logits l_ij = x_i . y_j / temperature,
  ((1/B) sum_i [lse_j l_ij - l_ii] + (1/B) sum_j [lse_i l_ij - l_jj]) / 2.
* `sigmoid_loss`: the pairwise sigmoid loss of SigLIP,
  -(1/B) sum_i sum_j log sigmoid(z_ij (x_i . y_j / temperature + bias)), z_ij = +1 if i == j
  else -1.

Embeddings are used as given (no normalisation inside) and every computation is in float32,
whatever the input dtype. With `mesh=None` the loss is the plain single-device computation.
With a mesh, the (B, D) inputs are split over the mesh axis `axis_name` and processed inside
`jax.shard_map`, each device scoring its B/N local rows against every row of the other side:

* impl="gather": the neural rows are gathered from all devices (`lax.all_gather`, whose
  transpose `psum_scatter` sends each gradient back to the device that made the row) and
  scored in one (B/N, B) product; for the neural->image direction each device's partial
  column log-sum-exps are combined across devices (pmax + psum_scatter of (B,) vectors)
  instead of a second product against gathered images. Per device memory O(B/N * B).
* impl="ring": blocks travel around the ring with `lax.ppermute`, and log-sum-exps are
  accumulated online, so a device only ever holds its own block and one visiting block; the
  loop body is rematerialised in the backward pass so the (B/N, B/N) logits of earlier steps
  are not stored. Per device memory O((B/N)^2 + B * D) (the visiting blocks, B * D in all,
  are the only residuals of the backward pass).

Both give the global-batch loss, equal to the single-device computation up to float32
rounding, with gradients with respect to the embeddings, the temperature and the bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

IMPLS = ("gather", "ring")


# ---------------------------------------------------------------------------------------
# Input checks and sharding plumbing.


def _check_inputs(img_emb, neu_emb, mesh, impl, axis_name) -> None:
  if img_emb.ndim != 2 or neu_emb.ndim != 2 or img_emb.shape != neu_emb.shape:
    raise ValueError("img_emb and neu_emb must both be (B, D) with the same shape; got "
                     f"{img_emb.shape} and {neu_emb.shape}")
  if impl not in IMPLS:
    raise ValueError(f"impl: unknown {impl!r}; expected one of {IMPLS}")
  if mesh is None:
    return
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}")
  n_shards = mesh.shape[axis_name]
  if img_emb.shape[0] % n_shards:
    raise ValueError(f"batch size {img_emb.shape[0]} is not divisible by the {n_shards} "
                     f"devices of mesh axis {axis_name!r}")


def _scalar(value, name: str) -> jax.Array:
  value = jnp.asarray(value, jnp.float32)
  if value.size != 1:
    raise ValueError(f"{name} must be a scalar; got shape {value.shape}")
  return value.reshape(())


def _place(x: jax.Array, mesh, spec: P) -> jax.Array:
  """Reshards `x` to `spec` where the mesh's types demand it.

  On Explicit axes (the default of `jax.make_mesh`) shard_map requires inputs whose sharding
  already equals its in_specs; on Auto axes shard_map inserts the resharding itself and
  `jax.reshard` refuses Auto axis names.
  """
  explicit = jax.sharding.AxisType.Explicit
  if any(t == explicit for t in mesh.axis_types):
    return jax.reshard(x, NamedSharding(mesh, spec))
  return x


def _sharded(local_loss, mesh, axis_name: str, embeddings, scalars) -> jax.Array:
  """Runs local_loss(*embeddings, *scalars, axis_name) in shard_map; batch split on axis_name.

  Only `axis_name` is manual: other mesh axes (e.g. "model") stay under the compiler's control.
  """
  batch_spec = P(axis_name)
  in_specs = (batch_spec,) * len(embeddings) + (P(),) * len(scalars)
  args = ([_place(e, mesh, batch_spec) for e in embeddings]
          + [_place(s, mesh, P()) for s in scalars])
  fn = jax.shard_map(lambda *a: local_loss(*a, axis_name), mesh=mesh, in_specs=in_specs,
                     out_specs=P(), axis_names={axis_name})
  return fn(*args)


def _ring_shift(tree, axis_name: str):
  """Sends every device's `tree` to the next device on the ring of `axis_name`."""
  n = lax.axis_size(axis_name)
  return lax.ppermute(tree, axis_name, perm=[(i, (i + 1) % n) for i in range(n)])


# ---------------------------------------------------------------------------------------
# CLIP (symmetric InfoNCE).


def _clip_full(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
  logits = x @ y.T / t
  positives = jnp.diagonal(logits)
  row = jax.nn.logsumexp(logits, axis=1) - positives
  col = jax.nn.logsumexp(logits, axis=0) - positives
  return 0.5 * (row.mean() + col.mean())


def _clip_gather_local(x, y, t, axis_name):
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  n = x.shape[0]
  all_y = lax.all_gather(y, axis_name, tiled=True)
  logits = x @ all_y.T / t  # (n, B): local images against every neural row
  # The positive of local row i sits at global column i + axis_index * n: it is the local
  # pair's dot product, computed directly.
  positives = jnp.sum(x * y, axis=1) / t
  img_to_neu = jax.nn.logsumexp(logits, axis=1) - positives
  # Neural->image needs each column's log-sum-exp over all B images. Rather than a second
  # (n, B) product against gathered images, combine the columns' partial log-sum-exps over
  # the local images across devices; each device keeps the n columns of its own rows.
  partial = jax.nn.logsumexp(logits, axis=0)  # (B,)
  shift = lax.pmax(lax.stop_gradient(partial), axis_name)  # any shift is exact; no gradient
  col_sum = lax.psum_scatter(jnp.exp(partial - shift), axis_name, tiled=True)  # (n,)
  local_shift = lax.dynamic_slice_in_dim(shift, lax.axis_index(axis_name) * n, n)
  neu_to_img = jnp.log(col_sum) + local_shift - positives
  return lax.pmean(0.5 * (img_to_neu.mean() + neu_to_img.mean()), axis_name)


def _clip_ring_local(x, y, t, axis_name):
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  n_shards = lax.axis_size(axis_name)
  # Each step scores the local images against one visiting neural block. Row log-sum-exps
  # (images over all neural rows) stay here; column log-sum-exps (the visiting neural rows
  # over all images) travel with their block.
  diagonal = x @ y.T / t
  positives = jnp.diagonal(diagonal)
  row_lse = jax.nn.logsumexp(diagonal, axis=1)
  col_lse = jax.nn.logsumexp(diagonal, axis=0)

  @jax.checkpoint  # recompute each step's logits in the backward pass instead of storing them
  def step(carry, _):
    row_lse, visiting, visiting_col_lse = carry
    visiting, visiting_col_lse = _ring_shift((visiting, visiting_col_lse), axis_name)
    logits = x @ visiting.T / t
    row_lse = jnp.logaddexp(row_lse, jax.nn.logsumexp(logits, axis=1))
    visiting_col_lse = jnp.logaddexp(visiting_col_lse, jax.nn.logsumexp(logits, axis=0))
    return (row_lse, visiting, visiting_col_lse), None

  (row_lse, _, col_lse), _ = lax.scan(step, (row_lse, y, col_lse), None,
                                      length=n_shards - 1)
  # col_lse now belongs to the previous device's neural rows, one hop short of home. Only
  # its sum over all devices enters the global mean, so it need not be sent back.
  loss = 0.5 * ((row_lse - positives).mean() + col_lse.mean() - positives.mean())
  return lax.pmean(loss, axis_name)


def clip_loss(img_emb: jax.Array, neu_emb: jax.Array, temperature, *, mesh=None,
              impl: str = "gather", axis_name: str = "data") -> jax.Array:
  """Symmetric InfoNCE (CLIP) loss, mean over the global batch.

  Args:
    img_emb: (B, D) image embeddings, any float dtype; used as given (not normalised).
    neu_emb: (B, D) neural embeddings, paired row by row with `img_emb`.
    temperature: scalar (shape () or size 1); logits are img_emb @ neu_emb.T / temperature.
      Differentiable, so it can be learned.
    mesh: None for the plain single-device computation, or a `jax.sharding.Mesh` whose axis
      `axis_name` splits the batch (B must be divisible by its size). Works eagerly and inside
      a jitted function under `jax.set_mesh(mesh)`, for Explicit and Auto axis types.
    impl: "gather" (all-gather the other side) or "ring" (ppermute blocks around the ring,
      memory O((B/N)^2) per device instead of O(B^2/N)). Ignored when mesh is None.
    axis_name: the mesh axis that holds the batch; other mesh axes are left alone.

  Returns:
    The float32 scalar loss (mean of the image->neural and neural->image cross-entropies).
  """
  _check_inputs(img_emb, neu_emb, mesh, impl, axis_name)
  temperature = _scalar(temperature, "temperature")
  if mesh is None:
    return _clip_full(img_emb.astype(jnp.float32), neu_emb.astype(jnp.float32), temperature)
  local = _clip_gather_local if impl == "gather" else _clip_ring_local
  return _sharded(local, mesh, axis_name, (img_emb, neu_emb), (temperature,))


# ---------------------------------------------------------------------------------------
# SigLIP (pairwise sigmoid).


def _sigmoid_terms(logits: jax.Array, positive: jax.Array) -> jax.Array:
  """Summed -log sigmoid(z * logits), z = +1 where `positive` else -1."""
  return -jnp.sum(jax.nn.log_sigmoid(jnp.where(positive, logits, -logits)))


def _sigmoid_full(x, y, t, b):
  logits = x @ y.T / t + b
  return _sigmoid_terms(logits, jnp.eye(x.shape[0], dtype=bool)) / x.shape[0]


def _sigmoid_gather_local(x, y, t, b, axis_name):
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  n = x.shape[0]
  all_y = lax.all_gather(y, axis_name, tiled=True)
  logits = x @ all_y.T / t + b
  labels = jnp.arange(n) + lax.axis_index(axis_name) * n  # global column of each positive
  positive = labels[:, None] == jnp.arange(all_y.shape[0])[None, :]
  global_batch = all_y.shape[0]
  return lax.psum(_sigmoid_terms(logits, positive), axis_name) / global_batch


def _sigmoid_ring_local(x, y, t, b, axis_name):
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  n, n_shards = x.shape[0], lax.axis_size(axis_name)
  # The loss is a plain sum over pairs, so one direction suffices: positives all lie in
  # the local diagonal block, every visiting block is negatives only.
  total = _sigmoid_terms(x @ y.T / t + b, jnp.eye(n, dtype=bool))

  @jax.checkpoint
  def step(carry, _):
    total, visiting = carry
    visiting = _ring_shift(visiting, axis_name)
    total = total + _sigmoid_terms(x @ visiting.T / t + b, jnp.zeros((n, n), bool))
    return (total, visiting), None

  (total, _), _ = lax.scan(step, (total, y), None, length=n_shards - 1)
  return lax.psum(total, axis_name) / (n * n_shards)


def sigmoid_loss(img_emb: jax.Array, neu_emb: jax.Array, temperature, bias, *, mesh=None,
                 impl: str = "gather", axis_name: str = "data") -> jax.Array:
  """Pairwise sigmoid (SigLIP) loss over the global batch.

  -(1/B) sum_i sum_j log sigmoid(z_ij * (img_i . neu_j / temperature + bias)), with
  z_ij = +1 for the B matching pairs (i == j) and -1 for the B^2 - B others.

  Args:
    img_emb: (B, D) image embeddings, any float dtype; used as given (not normalised).
    neu_emb: (B, D) neural embeddings, paired row by row with `img_emb`.
    temperature: scalar divisor of the dot products (differentiable).
    bias: scalar added to every logit (differentiable; SigLIP starts it at -10 so the many
      negatives do not dominate early training).
    mesh, impl, axis_name: as in `clip_loss`.

  Returns:
    The float32 scalar loss.
  """
  _check_inputs(img_emb, neu_emb, mesh, impl, axis_name)
  temperature = _scalar(temperature, "temperature")
  bias = _scalar(bias, "bias")
  if mesh is None:
    return _sigmoid_full(img_emb.astype(jnp.float32), neu_emb.astype(jnp.float32),
                         temperature, bias)
  local = _sigmoid_gather_local if impl == "gather" else _sigmoid_ring_local
  return _sharded(local, mesh, axis_name, (img_emb, neu_emb), (temperature, bias))


# --- Per-neuron and per-image losses of the direct baselines and VAEs ---------------------


def poisson_nll(rates: jax.Array, counts: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over recorded neurons of the Poisson negative log-likelihood (no log y! term).

  rates, counts, mask: (B, K); entries where mask is False are ignored.
  """
  nll = rates - counts * jnp.log(rates + 1e-6)
  return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(mask.sum(), 1)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over entries where mask is True. All arrays (B, K)."""
  return jnp.sum(jnp.where(mask, (pred - target) ** 2, 0.0)) / jnp.maximum(mask.sum(), 1)


def negative_correlation(pred: jax.Array, target: jax.Array) -> jax.Array:
  """1 - mean row-wise Pearson correlation. pred, target: (B, P)."""
  p = pred - pred.mean(-1, keepdims=True)
  t = target - target.mean(-1, keepdims=True)
  r = (p * t).sum(-1) / jnp.sqrt((p * p).sum(-1) * (t * t).sum(-1) + 1e-8)
  return 1.0 - r.mean()
