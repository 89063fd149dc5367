"""MIG-Vis: a group-disentangled VAE of the responses whose latent groups are shown as
images, by editing held-out images with a diffusion model guided by a mutual-information
critic (`jaxvna visualize`, `visualize.visualize`). Three methods, trained in turn as
stages of one run: the group VAE, the critic and the diffusion model."""

from __future__ import annotations

import jax.numpy as jnp

from jaxvna import registry
from jaxvna.methods.migvis import diffusion, modules, visualize
from jaxvna.models import inputs


def _build_group_vae(config, dataset, aux=None):
  del aux
  return modules.build_group_vae(config, dataset.neuron_counts)


def _group_vae_init_args(config, dataset, aux=None) -> tuple:
  del aux
  _, responses, subject = inputs.example_inputs(config, dataset)
  return responses, subject


def _group_vae_objective(config, model, mesh=None, aux=None):
  del mesh, aux
  return modules.make_group_vae_objective(config, model)


def _build_critic(config, dataset, aux=None):
  del dataset, aux
  return modules.build_critic(config)


def _critic_init_args(config, dataset, aux=None) -> tuple:
  del aux
  images, _, _ = inputs.example_inputs(config, dataset)
  return images, jnp.zeros((1, sum(config.migvis.groups)), jnp.float32)


def _critic_objective(config, model, mesh, aux=None):
  del aux
  return modules.make_critic_objective(config, model, mesh)


def _build_unet(config, dataset, aux=None):
  del dataset, aux
  return diffusion.build_unet(config)


def _unet_init_args(config, dataset, aux=None) -> tuple:
  del aux
  images, _, _ = inputs.example_inputs(config, dataset)
  return diffusion.to_model_space(images), jnp.zeros((1,), jnp.int32)


def _unet_objective(config, model, mesh=None, aux=None):
  del mesh, aux
  return diffusion.make_objective(config, model)


_VISUALIZE = {"visualize": visualize.visualize}
METHODS = {
    "group_vae": registry.Method(
        name="group_vae", build_model=_build_group_vae, init_args=_group_vae_init_args,
        objective=_group_vae_objective, poisson_likelihood=lambda config: True,
        commands=_VISUALIZE, title="MIG-Vis", example_config="configs/migvis_sim.py"),
    "critic": registry.Method(
        name="critic", build_model=_build_critic, init_args=_critic_init_args,
        objective=_critic_objective, title="MIG-Vis critic"),
    "diffusion": registry.Method(
        name="diffusion", build_model=_build_unet, init_args=_unet_init_args,
        objective=_unet_objective, title="MIG-Vis diffusion"),
}
