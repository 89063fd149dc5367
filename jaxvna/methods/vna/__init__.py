"""VNA: a dual encoder (image tower, per-subject neural tower) trained with a contrastive
loss (CLIP's symmetric InfoNCE, or SigLIP's sigmoid loss) with negatives gathered across
devices, evaluated by discriminative decoding and encoding of held-out images."""

from __future__ import annotations

from jaxvna import losses, registry
from jaxvna.errors import ConfigError
from jaxvna.evaluation import discriminative
from jaxvna.models import inputs, towers


def build_model(config, dataset, aux=None):
  del aux
  return towers.dual_encoder(config.model, dataset.neuron_counts, dataset.image_shape)


def init_args(config, dataset, aux=None) -> tuple:
  del aux
  return inputs.example_inputs(config, dataset)


def objective(config, model, mesh, aux=None):
  """config.loss.type "clip" or "sigmoid" on the L2-normalised embeddings of a batch."""
  del aux
  loss_cfg = config.loss
  if loss_cfg.type not in ("clip", "sigmoid"):
    raise ConfigError(f"config.loss.type: unknown {loss_cfg.type!r}; expected clip|sigmoid")

  def vna(params, batch, rng, step=None):
    img_emb, neu_emb, temperature, bias = model.apply(
        {"params": params}, inputs.image_input(config, batch), batch["response"],
        batch["subject"], train=True, rngs={"dropout": rng})
    if loss_cfg.type == "clip":
      loss = losses.clip_loss(img_emb, neu_emb, temperature, mesh=mesh, impl=loss_cfg.impl)
    else:
      loss = losses.sigmoid_loss(img_emb, neu_emb, temperature, bias, mesh=mesh,
                                 impl=loss_cfg.impl)
    return loss, {"loss": loss, "temperature": temperature}
  return vna


METHODS = {"vna": registry.Method(
    name="vna", build_model=build_model, init_args=init_args, objective=objective,
    represent=discriminative.embedding_represent, in_demo=True, title="VNA",
    example_config="configs/vna_sim.py")}
