"""Optimiser building blocks: the per-modality gradient modulation (Eq. 26-28)."""

from imkga_jax.optim.modulation import ModalityModulationState
from imkga_jax.optim.modulation import PerIndex
from imkga_jax.optim.modulation import modality_modulation
from imkga_jax.optim.modulation import modulation_coefficients

__all__ = [
    'ModalityModulationState',
    'PerIndex',
    'modality_modulation',
    'modulation_coefficients',
]
