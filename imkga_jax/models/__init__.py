"""Flax modules of IMKGA-SM: the encoder blocks and the three-branch sequence model."""

from imkga_jax.models.imkga import IMKGA
from imkga_jax.models.imkga import ModelConfig
from imkga_jax.models.imkga import build_model

__all__ = ['IMKGA', 'ModelConfig', 'build_model']
