"""The methods, one package each, found by name through `jaxvna.registry`.

  vna      contrastive visual-neural alignment (dual encoder, CLIP/SigLIP loss)
  direct   the direct encoding and direct decoding baselines
  dina     alignment at intermediate feature maps; `jaxvna interpret`
  mivae    the multi-modal identifiable VAE across subjects, attribution
  migvis   group VAE, MI critic and diffusion stages; `jaxvna visualize`

Each package's `METHODS` maps the names it trains to their `registry.Method` records.
"""
