"""Generation with a KV cache: greedy equals the full forward pass for every scheme, sampling
filters, stop tokens, text, and `mode=generate` end to end."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from posjax import encodings, models
from posjax.configs import load_config
from posjax.data.tokenizers import ByteTokenizer
from posjax.evaluate import generate as gen
from posjax.evaluate import sampling
from posjax.run.experiment import Run
from posjax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12], [3, 4, 5]]  # different lengths: left padding
NEW = 8


def tiny_model(pe: str, vocab_size: int = 40, seed: int = 1):
  options = {"max_len": 64} if pe == "learned" else {}
  cfg = models.TransformerConfig(vocab_size=vocab_size, dim=32, num_layers=2, num_heads=4, pe=pe,
                                 pe_options=options, attention_backend="xla")
  return models.build("decoder", cfg, seed=seed)


def full_forward_logits(model, sequences):
  """Logits of one uncached forward pass over right-padded, unrelated sequences `[B, L, V]`."""
  width = max(len(s) for s in sequences)
  tokens = np.zeros((len(sequences), width), np.int32)
  segment_ids = np.zeros_like(tokens)
  for row, seq in enumerate(sequences):
    tokens[row, :len(seq)] = seq
    segment_ids[row, :len(seq)] = 1
  positions = np.tile(np.arange(width, dtype=np.int32), (len(sequences), 1))
  return np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions),
                          jnp.asarray(segment_ids)))


@pytest.mark.parametrize("pe", encodings.names())
def test_greedy_equals_argmax_of_full_forward_pass(pe):
  """Token t of each row is the argmax of the full model at the last position of
  prompt + tokens[:t]; one causal pass over prompt + all tokens gives every such prefix's logits,
  with no cache and no left padding."""
  model = tiny_model(pe)
  result = gen.generate(model, PROMPTS, max_new_tokens=NEW)
  assert result.tokens.shape == (3, NEW) and result.tokens.dtype == np.int32
  np.testing.assert_array_equal(result.lengths, [NEW] * 3)
  np.testing.assert_array_equal(result.prompt_lengths, [7, 1, 3])
  assert not result.stopped.any()
  logits = full_forward_logits(model, [p + list(t) for p, t in zip(PROMPTS, result.tokens)])
  for row, prompt in enumerate(PROMPTS):
    steps = logits[row, len(prompt) - 1:len(prompt) - 1 + NEW]
    np.testing.assert_array_equal(result.tokens[row], steps.argmax(-1), err_msg=f"row {row}")
    chosen = jax.nn.log_softmax(steps)[np.arange(NEW), result.tokens[row]]
    np.testing.assert_allclose(result.logprobs[row], chosen, atol=1e-4)
  assert model.decoder.blocks[0].attention.cache is None  # the caller's model is left alone


def test_learned_table_too_short_is_a_clear_error_before_running():
  model = tiny_model("learned")
  with pytest.raises(ValueError, match=r"60 tokens.*max_new_tokens=10.*max_len=64.*at most 4"):
    gen.generate(model, [[1] * 60, [2]], max_new_tokens=10)
  with pytest.raises(ValueError, match="outside the vocabulary of size 40"):
    gen.generate(model, [[1, 40]], max_new_tokens=2)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    gen.generate(model, [[1], []], max_new_tokens=2)
  with pytest.raises(ValueError, match="top_p"):
    gen.generate(model, [[1]], max_new_tokens=2, top_p=0.0)


# Sampling ----------------------------------------------------------------------------------------


def test_sample_next_top_k_1_and_tiny_temperature_are_greedy():
  logits_BV = jax.random.normal(jax.random.key(0), (16, 50)) * 3
  greedy = np.asarray(sampling.sample_next(logits_BV, jax.random.key(1), temperature=0.0))
  np.testing.assert_array_equal(greedy, np.argmax(logits_BV, -1))
  for seed in range(3):
    key = jax.random.key(seed)
    np.testing.assert_array_equal(sampling.sample_next(logits_BV, key, temperature=1.5, top_k=1),
                                  greedy)
    np.testing.assert_array_equal(sampling.sample_next(logits_BV, key, temperature=1e-6), greedy)


def test_sample_next_is_reproducible_per_seed_and_jittable():
  logits_BV = jnp.zeros((256, 10))
  draw = jax.jit(lambda key, t, p: sampling.sample_next(logits_BV, key, temperature=t, top_p=p))
  a = draw(jax.random.key(3), 1.0, 1.0)
  np.testing.assert_array_equal(a, draw(jax.random.key(3), 1.0, 1.0))
  assert (np.asarray(a) != np.asarray(draw(jax.random.key(4), 1.0, 1.0))).mean() > 0.5
  assert len(np.unique(a)) == 10
  np.testing.assert_array_equal(draw(jax.random.key(3), 0.0, 1.0), 0)  # traced temperature 0


@pytest.mark.parametrize("top_p, top_k, allowed", [
    (0.45, 0, {0}), (0.7, 0, {0, 1}), (0.75, 0, {0, 1}), (0.85, 0, {0, 1, 2}),
    (1.0, 0, {0, 1, 2, 3}), (1.0, 2, {0, 1}), (0.8, 3, {0, 1}), (0.9, 3, {0, 1, 2})])
def test_top_p_samples_only_the_nucleus(top_p, top_k, allowed):
  # probabilities 0.5, 0.3, 0.15, 0.05 (in a shuffled vocabulary order); every top_p sits well
  # away from a cumulative sum, so float rounding cannot move the cut
  probs = np.array([0.15, 0.5, 0.05, 0.3])
  rank_of = {1: 0, 3: 1, 0: 2, 2: 3}
  logits_BV = jnp.tile(jnp.log(jnp.asarray(probs))[None], (4000, 1))
  drawn = np.asarray(sampling.sample_next(logits_BV, jax.random.key(0), temperature=1.0,
                                     top_p=top_p, top_k=top_k))
  assert {rank_of[int(t)] for t in np.unique(drawn)} == allowed
  # within the nucleus, the renormalized probabilities
  kept = np.array([probs[t] if rank_of[t] in allowed else 0.0 for t in range(4)])
  np.testing.assert_allclose(np.bincount(drawn, minlength=4) / len(drawn), kept / kept.sum(),
                             atol=0.03)


def test_generate_top_k_1_and_cold_sampling_are_greedy_and_seeds_reproduce():
  model = tiny_model("rope")
  greedy = gen.generate(model, PROMPTS, max_new_tokens=NEW)
  top1 = gen.generate(model, PROMPTS, max_new_tokens=NEW, temperature=2.0, top_k=1, seed=5)
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)
  cold = gen.generate(model, PROMPTS, max_new_tokens=NEW, temperature=1e-6, seed=5)
  np.testing.assert_array_equal(cold.tokens, greedy.tokens)
  sample = lambda seed: gen.generate(model, PROMPTS, max_new_tokens=NEW, temperature=3.0,
                                     seed=seed).tokens
  np.testing.assert_array_equal(sample(0), sample(0))
  assert not np.array_equal(sample(0), sample(1))


# Stop tokens and text ----------------------------------------------------------------------------


def test_stop_token_ends_its_row_and_the_rest_is_padding():
  model = tiny_model("alibi")
  free = gen.generate(model, PROMPTS, max_new_tokens=NEW)
  stop = int(free.tokens[0, 2])  # row 0 emits this at step 2 (or earlier)
  first = {row: np.flatnonzero(free.tokens[row] == stop) for row in range(3)}
  result = gen.generate(model, PROMPTS, max_new_tokens=NEW, stop_tokens=[stop], pad_id=0)
  for row in range(3):
    if first[row].size:
      n = int(first[row][0]) + 1
      assert result.stopped[row] and result.lengths[row] == n
      np.testing.assert_array_equal(result.tokens[row, :n], free.tokens[row, :n])
      np.testing.assert_array_equal(result.tokens[row, n:], 0)
      np.testing.assert_array_equal(result.logprobs[row, n:], 0.0)
    else:
      assert not result.stopped[row] and result.lengths[row] == NEW
      np.testing.assert_array_equal(result.tokens[row], free.tokens[row])
  assert result.lengths[0] <= 3


def test_generate_text_decodes_continuations_and_drops_the_stop_character():
  tokenizer = ByteTokenizer()
  model = tiny_model("t5", vocab_size=tokenizer.vocab_size)
  prompts = ["To be, or", "Hi"]
  free = gen.generate(model, [tokenizer.encode(p) for p in prompts], max_new_tokens=NEW,
                      stop_tokens=[tokenizer.eos_id])
  texts = gen.generate_text(model, tokenizer, prompts, max_new_tokens=NEW)
  assert texts == [tokenizer.decode(r) for r in free.continuations()]
  # a character the rows emit becomes a stop: each text ends just before its first one
  ascii_ids = [t for t in free.tokens.reshape(-1) if 32 + 3 <= t < 127 + 3]
  assert ascii_ids, "the tiny model emitted no printable ASCII: change its seed"
  char = tokenizer.decode([ascii_ids[0]])
  stopped = gen.generate_text(model, tokenizer, prompts, max_new_tokens=NEW, stop=char)
  assert [text.split(char)[0] for text in texts] == stopped
  with pytest.raises(ValueError, match="list of strings"):
    gen.generate_text(model, tokenizer, "one string", max_new_tokens=2)


# From a trained run ------------------------------------------------------------------------------


def lm_config(arg: str):
  return load_config(f"{ROOT}/configs/lm.py:{arg}")


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "posjax.main", "--config=configs/lm.py:tiny",
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ))


def test_main_generate_mode_prints_continuations_of_a_trained_run(tmp_path):
  """Train a tiny run, then `python -m posjax.main --config.mode=generate` on its workdir."""
  config = lm_config("tiny")
  with pytest.raises(ValueError, match="needs a trained checkpoint"):
    gen.load_for_generation(str(tmp_path / "missing"), config)
  assert not (tmp_path / "missing").exists()
  loop.train(Run(config, str(tmp_path)))  # a tiny run: 6 steps
  result = run_main(f"--workdir={tmp_path}", "--config.mode=generate",
                    "--config.generate.prompt=ROMEO:|JULIET: O", "--config.generate.seed=3",
                    "--config.generate.max_new_tokens=12")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "=== generation 1/2 (rope, step 6) ===\nROMEO:" in out
  assert "=== generation 2/2 (rope, step 6) ===\nJULIET: O" in out
  assert out.split("JULIET: O", 1)[1].strip("\n")  # the byte model wrote something

  # the same run from Python: trained parameters, not fresh ones
  model = gen.load_for_generation(str(tmp_path), config)
  assert isinstance(model, models.DecoderLM)
  fresh = models.build("decoder", model.config, seed=config.seed)
  trained_leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  fresh_leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(fresh, nnx.Param)))
  assert len(trained_leaves) == len(fresh_leaves)
  assert any(not np.allclose(a, b) for a, b in zip(trained_leaves, fresh_leaves))


@pytest.mark.parametrize("field, value", [("top_p", 0.0), ("temperature", -1.0),
                                          ("max_new_tokens", 0), ("top_k", -1)])
def test_bad_generation_options_are_refused_before_loading_anything(tmp_path, field, value):
  config = load_config("configs/lm.py:tiny", **{"mode": "generate", f"generate.{field}": value})
  with pytest.raises(ValueError, match="config.generate needs"):
    gen.run_from_config(config, str(tmp_path / "no_run_here"))
  assert not (tmp_path / "no_run_here").exists()
