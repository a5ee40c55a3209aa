"""Test set-up: JAX on the CPU with 8 simulated devices, so sharding runs everywhere."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import posjax  # noqa: E402,F401  (turns off XLA:CPU's YNN fusion before JAX starts)
import jax  # noqa: E402  (must come after the environment is set)

jax.config.update("jax_default_matmul_precision", "highest")
