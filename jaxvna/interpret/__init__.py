"""Interpretation: tracing latents back to pixels and neurons (`attribution`)."""
