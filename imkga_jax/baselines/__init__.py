"""Embedding baselines (TransE, DistMult, ComplEx, RotatE, TuckER) in the project's harness.

`train.train_and_evaluate(config, workdir)` trains the model named by `config.baseline.model` and ranks
with the shared filtered ranking of `imkga_jax.evaluate`; configs come from `configs/baselines.py`.
"""
from imkga_jax.baselines.models import MODELS
from imkga_jax.baselines.models import build_model

__all__ = ['MODELS', 'build_model']
