"""Helpers shared by the Hugging Face interop tests: fixture paths and checkpoint editing."""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from posjax import interop

HF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "hf")


def fixture_dir(name: str) -> str:
  return os.path.join(HF, name)


def expected(name: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(HF, name, "expected.npz")) as data:
    return dict(data)


def write_checkpoint(path: str, config: dict, state: dict[str, np.ndarray]) -> str:
  """A checkpoint directory with `config` and `state` (as model.safetensors)."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
            os.path.join(path, "model.safetensors"))
  return path


def assemble(tmp_path, name: str, weights_from: str) -> str:
  """`name`'s config.json with `weights_from`'s weights (the RoPE-scaling fixtures share them)."""
  path = tmp_path / name
  path.mkdir()
  shutil.copy(os.path.join(HF, name, "config.json"), path / "config.json")
  shutil.copy(os.path.join(HF, weights_from, "model.safetensors"), path / "model.safetensors")
  return str(path)


def parts(name: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config dict, state dict) of a fixture, to edit into other checkpoints."""
  return interop.read_config(fixture_dir(name)), dict(interop.read_weights(fixture_dir(name)))


@nnx.jit
def _forward(model, ids, decoder_ids=None, segment_ids=None, token_types=None):
  if decoder_ids is not None:
    return model(ids, decoder_ids)
  if token_types is not None:
    return model(ids, segment_ids_BL=segment_ids, token_types_BL=token_types)
  if segment_ids is not None:  # a decoder with padding
    return model(ids, segment_ids_BL=segment_ids)
  return model(ids)


def run(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
  """The model on the fixture's inputs, HF's attention mask as posjax segment ids (jitted: one
  compilation is faster than running the tiny model op by op the first time)."""
  as_ids = lambda key: None if key not in inputs else jnp.asarray(inputs[key], jnp.int32)
  return np.asarray(_forward(model, as_ids("input_ids"), as_ids("decoder_input_ids"),
                             as_ids("attention_mask"), as_ids("token_type_ids")))
