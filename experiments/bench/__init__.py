"""Speed benchmarks: attention alone per positional scheme and backend, and end to end.

Imports only jax, flax, optax and posjax's model code (no ml_collections, grain or tfds), so it
runs on a bare GPU machine. See RESULTS.md for the commands and the measured tables.
"""
