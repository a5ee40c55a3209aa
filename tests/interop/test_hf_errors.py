"""What goes wrong loading a checkpoint is a ValueError that says what; tolerated variants load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import nnx

from hf_testing import expected, fixture_dir, parts, run, write_checkpoint
from posjax import interop, models


def test_not_a_directory(tmp_path):
  with pytest.raises(ValueError, match="not a directory"):
    interop.load_pretrained(str(tmp_path / "nowhere"))


def test_missing_config(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    interop.load_pretrained(str(tmp_path))


def test_bad_config_json(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    interop.load_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
  with pytest.raises(ValueError, match="no 'model_type'"):
    interop.load_pretrained(str(tmp_path))


def test_unknown_model_type(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
  with pytest.raises(ValueError, match=r"unsupported model_type 'gpt_neox'.*'bert'"):
    interop.load_pretrained(str(tmp_path))


def test_missing_weights(tmp_path):
  config, _ = parts("gpt2")
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="has no weights: expected one of"):
    interop.load_pretrained(str(tmp_path))


def test_wrong_family():
  with pytest.raises(ValueError, match=r"loads as one of the families \('decoder',\)"):
    interop.load_pretrained(fixture_dir("gpt2"), family="mlm")


def test_shape_mismatch_names_the_tensor(tmp_path):
  config, state = parts("gpt2")
  config["n_embd"] = 48
  path = write_checkpoint(str(tmp_path / "ckpt"), config, state)
  with pytest.raises(ValueError, match=r"'transformer\.wte\.weight' has shape \(64, 32\), but "
                                       r"config\.json implies \(64, 48\)"):
    interop.load_pretrained(path)


def test_missing_tensor(tmp_path):
  config, state = parts("llama")
  del state["model.layers.1.mlp.up_proj.weight"]
  path = write_checkpoint(str(tmp_path / "ckpt"), config, state)
  with pytest.raises(ValueError, match=r"no tensor 'layers\.1\.mlp\.up_proj\.weight'"):
    interop.load_pretrained(path)


def test_leftover_tensors_are_an_error(tmp_path):
  config, state = parts("bloom")
  state["transformer.h.0.self_attention.extra.weight"] = np.zeros((2, 2), np.float32)
  path = write_checkpoint(str(tmp_path / "ckpt"), config, state)
  with pytest.raises(ValueError, match=r"1 tensor\(s\) have no place.*self_attention\.extra"):
    interop.load_pretrained(path)


def test_tied_copy_must_equal(tmp_path):
  config, state = parts("gpt2")
  state["lm_head.weight"] = state["transformer.wte.weight"] + 1.0
  path = write_checkpoint(str(tmp_path / "ckpt"), config, state)
  with pytest.raises(ValueError, match="'lm_head.weight' should be tied"):
    interop.load_pretrained(path)


@pytest.mark.parametrize("key, value, match", [
    ("add_cross_attention", True, "add_cross_attention"),
    ("activation_function", "quick_gelu", "activation 'quick_gelu'"),
])
def test_unsupported_gpt2_settings(tmp_path, key, value, match):
  config, state = parts("gpt2")
  config[key] = value
  with pytest.raises(ValueError, match=match):
    interop.load_pretrained(write_checkpoint(str(tmp_path / "ckpt"), config, state))


def test_unsupported_rope_type():
  config, _ = parts("llama")
  config["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0}
  with pytest.raises(ValueError, match="RoPE type 'longrope' is not supported"):
    interop.config_from_hf(config)


def test_invalid_rope_scaling_is_caught_by_the_config():
  config, _ = parts("llama")
  config["rope_parameters"] = {"rope_type": "linear", "factor": 0.5, "rope_theta": 10000.0}
  with pytest.raises(ValueError, match="'factor' must be >= 1.0"):
    interop.config_from_hf(config)


def test_variants_that_load(tmp_path):
  """Base-model key names (no "transformer."), old buffers, a tied copy, TF-era LayerNorm names."""
  config, state = parts("gpt2")
  state = {k.removeprefix("transformer."): v for k, v in state.items()}
  state["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
  state["h.0.attn.masked_bias"] = np.asarray(-1e4, np.float32)
  state["lm_head.weight"] = state["wte.weight"]
  model = interop.load_pretrained(write_checkpoint(str(tmp_path / "gpt2"), config, state))
  data = expected("gpt2")
  np.testing.assert_allclose(run(model, data), data["logits"], atol=1e-4)

  config, state = parts("bert")
  renamed = {}
  for name, value in state.items():
    if "LayerNorm." in name:
      name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
    renamed[name] = value
  renamed["bert.embeddings.position_ids"] = np.arange(32)[None]
  bert = interop.load_pretrained(write_checkpoint(str(tmp_path / "bert"), config, renamed))
  reference = interop.load_pretrained(fixture_dir("bert"))
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(bert, nnx.Param)),
                               nnx.to_flat_state(nnx.state(reference, nnx.Param))):
    np.testing.assert_array_equal(a[...], b[...], err_msg=str(path))


def test_sharded_checkpoint(tmp_path):
  config, state = parts("gpt2")
  path = write_checkpoint(str(tmp_path / "ckpt"), config, {})
  os.remove(os.path.join(path, "model.safetensors"))
  names = sorted(state)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  for shard, keys in shards.items():
    save_file({k: state[k] for k in keys}, os.path.join(path, shard))
  weight_map = {k: shard for shard, keys in shards.items() for k in keys}
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  loaded = interop.read_weights(path)
  assert sorted(loaded) == names
  weight_map["transformer.extra"] = "model-00003-of-00002.safetensors"
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": weight_map}, f)
  with pytest.raises(ValueError, match="lists shard model-00003"):
    interop.read_weights(path)


def _tiny_encoder_decoder():
  cfg = models.TransformerConfig(vocab_size=10, dim=8, num_layers=1, num_heads=2, mlp_dim=16,
                                 pe="t5", pe_shared=True, attention_backend="xla")
  return cfg, nnx.eval_shape(lambda: models.build("encoder_decoder", cfg))


def test_set_params_catches_double_writes_and_gaps():
  cfg, model = _tiny_encoder_decoder()
  table = np.zeros((cfg.vocab_size, cfg.dim), np.float32)
  twice = {("encoder_embedding", "tokens", "embedding"): table,
           ("decoder_embedding", "tokens", "embedding"): table}
  with pytest.raises(ValueError, match="written twice"):
    interop.set_params(model, twice)
  _, model = _tiny_encoder_decoder()
  with pytest.raises(ValueError, match=r"left \d+ posjax parameter\(s\) unset"):
    interop.set_params(model, {("encoder_embedding", "tokens", "embedding"): table})
  _, model = _tiny_encoder_decoder()
  with pytest.raises(ValueError, match="has shape"):
    interop.set_params(model, {("encoder_embedding", "tokens", "embedding"): table[:5]})
  with pytest.raises(ValueError, match="has no encoder/nothing"):
    interop.set_params(model, {("encoder", "nothing", "kernel"): table})
