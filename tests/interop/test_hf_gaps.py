"""Checkpoints transformers accepts and posjax once refused (issue 15), against HF's logits.

Each loads at load time (a setting posjax cannot honour fails there, never at the first forward
pass) and matches the logits transformers computed (tests/fixtures/hf, made by
make_hf_fixtures.py): T5 with an odd number of relative buckets, Llama with attention biases but
no MLP biases, Qwen2 (biases on q, k, v only), GPT-2 with scale_attn_by_inverse_layer_idx, and
left-padded rows under both position conventions.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hf_testing import HF, expected, fixture_dir, parts, run, write_checkpoint
from posjax import interop
from posjax.encodings import t5 as t5_buckets
from test_hf_parity import TOL, check_logits


@pytest.mark.parametrize("name", [
    "t5_odd_buckets", "llama_attention_bias", "qwen2", "gpt2_inverse_layer_idx"])
def test_logits_match_hf(name):
  model = interop.load_pretrained(fixture_dir(name))
  check_logits(run(model, expected(name)), expected(name))


def test_odd_bucket_counts_match_hf_buckets():
  """posjax's bucket function against HF's `_relative_position_bucket` (stored), odd and even."""
  with np.load(os.path.join(HF, "t5_odd_buckets", "buckets.npz")) as data:
    tables = dict(data)
  relative = tables.pop("relative_position")
  assert len(tables) == 12
  for key, want in tables.items():
    direction, num_buckets, max_distance = key.split("_")
    got = t5_buckets.t5_relative_bucket(relative, bidirectional=direction == "bi",
                                        num_buckets=int(num_buckets),
                                        max_distance=int(max_distance))
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=key)
  # With 9 buckets the encoder uses 4 a direction, so its row 8 is never read.
  assert tables["bi_9_20"].max() == 7 and tables["causal_9_20"].max() == 8


def test_odd_buckets_on_the_chunked_backend():
  model = interop.load_pretrained(fixture_dir("t5_odd_buckets"), config_overrides={
      "attention_backend": "chunked", "chunk_size": 8})
  check_logits(run(model, expected("t5_odd_buckets")), expected("t5_odd_buckets"))


def test_odd_buckets_load_with_the_checkpoint_table():
  model = interop.load_pretrained(fixture_dir("t5_odd_buckets"))
  options = model.encoder.blocks[0].attention.positional.options
  assert options["num_buckets"] == 9 and options["bidirectional"]
  assert model.encoder.blocks[0].attention.positional.params["table"].shape == (9, 4)


def test_too_few_buckets_fail_at_load(tmp_path):
  """3 buckets leave the encoder 1 a direction: an error when the config is read."""
  config, state = parts("t5")
  config["relative_attention_num_buckets"] = 3
  with pytest.raises(ValueError, match="num_buckets=3 is too small"):
    interop.config_from_hf(config)
  with pytest.raises(ValueError, match="too small"):
    interop.load_pretrained(write_checkpoint(str(tmp_path / "ckpt"), config, state))


@pytest.mark.parametrize("name, qkv, out, mlp", [
    ("llama_attention_bias", True, True, False),
    ("qwen2", True, False, False),
])
def test_bias_placement(name, qkv, out, mlp):
  model = interop.load_pretrained(fixture_dir(name))
  cfg, block = model.config, model.decoder.blocks[0]
  assert (cfg.resolved_qkv_bias, cfg.resolved_out_bias, cfg.resolved_mlp_bias) == (qkv, out, mlp)
  attention = block.attention
  assert all((getattr(attention, p).bias is not None) == qkv for p in ("query", "key", "value"))
  assert (attention.out.bias is not None) == out
  assert all((getattr(block.mlp, p).bias is not None) == mlp for p in ("wg", "wi", "wo"))


def test_qwen2_sliding_window_fails_at_load():
  config, _ = parts("qwen2")
  config.update(use_sliding_window=True, sliding_window=4, max_window_layers=1,
                layer_types=["full_attention", "sliding_attention"])
  with pytest.raises(ValueError, match=r"sliding-window attention \(window 4 in layers \[1\]\)"):
    interop.config_from_hf(config)
  config.pop("layer_types")  # HF's default: sliding from layer max_window_layers on
  with pytest.raises(ValueError, match="layers \\[1\\]"):
    interop.config_from_hf(config)
  config["max_window_layers"] = 2  # no layer slides: HF attends fully everywhere
  assert interop.config_from_hf(config).resolved_qkv_bias


def test_inverse_layer_scale():
  model = interop.load_pretrained(fixture_dir("gpt2_inverse_layer_idx"))
  scales = [block.attention.scale for block in model.decoder.blocks]
  np.testing.assert_allclose(scales, [8**-0.5 / (i + 1) for i in range(3)])
  # The plain GPT-2 fixture keeps the default scale (None: 1/sqrt(head_dim) in attention).
  assert interop.load_pretrained(fixture_dir("gpt2")).decoder.blocks[1].attention.scale is None


@pytest.mark.parametrize("name, weights", [("bert_left_padding", "bert"),
                                           ("gpt2_left_padding", "gpt2")])
@pytest.mark.parametrize("positions, key", [("columns", "logits"),
                                            ("from_first_token", "logits_from_first_token")])
def test_left_padding_positions(name, weights, positions, key):
  """HF's default (column positions) is matched by positions="columns"; posjax's default
  (restart at the first real token) equals HF given position_ids that restart there."""
  data = expected(name)
  model = interop.load_pretrained(fixture_dir(weights), positions=positions)
  assert model.config.positions == positions
  real = data["attention_mask"].astype(bool)
  assert not real.all() and real[:, -1].all()  # padding on the left
  logits = run(model, data)
  np.testing.assert_allclose(logits[real], data[key][real], **TOL)
  other = data["logits_from_first_token" if key == "logits" else "logits"]
  assert np.abs(logits[real] - other[real]).max() > 1e-2  # the convention matters here


def test_default_is_from_first_token():
  assert interop.load_pretrained(fixture_dir("gpt2")).config.positions == "from_first_token"
  with pytest.raises(ValueError, match="positions='rows'"):
    interop.load_pretrained(fixture_dir("gpt2"), positions="rows")
