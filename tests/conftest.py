"""Test setup: 8 fake CPU devices for the sharding tests, set before JAX initialises."""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The Keras parity tests need Keras on its JAX backend; set it before any test imports TensorFlow
# (which can import Keras with its default TensorFlow backend).
os.environ.setdefault('KERAS_BACKEND', 'jax')
