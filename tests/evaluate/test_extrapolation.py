"""Perplexity vs length: the two protocols, loss by position, the report, a position table."""

from __future__ import annotations

import pathlib

import jax
import matplotlib.image
import numpy as np
import pytest

from posjax.configs import load_config
from posjax.evaluate import extrapolation as ex

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(**overrides):
  return load_config(f"{ROOT}/configs/lm.py:tiny", **overrides)


def fresh_run(workdir, **overrides) -> ex.RunModel:
  """A tiny decoder with fresh parameters (no training), as a run to evaluate.

  The parameters are built eagerly and replicated over the mesh (quicker than compiling the
  sharded initializer of `Trainable.create`).
  """
  from flax import nnx
  from posjax import models
  from posjax.run import sharding
  from posjax.run.experiment import Run
  run = Run(tiny_config(**overrides), str(workdir))
  _, params, rest = nnx.split(models.build("decoder", run.cfg, seed=0), nnx.Param, ...)
  replicated = sharding.replicated(run.mesh)
  params, rest = jax.device_put((nnx.to_pure_dict(params), nnx.to_pure_dict(rest)), replicated)
  return ex.RunModel(run, params, rest, 0)


def save_checkpoint(run: ex.RunModel, workdir, step: int) -> None:
  """`run`'s parameters as the checkpoint of `step` in `workdir` (a zero optimizer state)."""
  from posjax.run import checkpointing
  state = run.run.trainable.abstract_state
  saved = state.replace(step=np.int32(step), params=run.params, rest=run.rest,
                        opt_state=jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                               state.opt_state))
  with checkpointing.Checkpointer(str(workdir)) as checkpointer:
    checkpointer.save(step, saved)


@pytest.fixture(scope="module")
def rope_run(tmp_path_factory):
  return fresh_run(tmp_path_factory.mktemp("rope"))


# ------------------------------------------------------------------- windows, no model


@pytest.mark.parametrize("num, window, stride", [
    (64, 16, 16), (64, 16, 8), (64, 16, 5), (50, 16, 16), (50, 16, 7), (16, 16, 1), (10, 16, 4)])
def test_sliding_scores_every_target_exactly_once(num, window, stride):
  spans = ex.window_spans(num, window, stride)
  weights = ex.sliding_weights(spans, window)
  counts = np.zeros(num)
  for (start, score_from, end), w in zip(spans, weights):
    assert end - start == min(window, num) and 0 <= start <= score_from < end <= num
    counts[start:start + window] += w[:min(window, num)]
    # Every target after the first window has at least window - stride tokens of context.
    if score_from > 0:
      assert score_from - start >= window - stride
  np.testing.assert_array_equal(counts, np.ones(num))
  assert weights.sum() == num


def test_stride_equal_to_window_gives_the_non_overlapping_windows():
  assert ex.window_spans(64, 16, 16) == [(i, i, i + 16) for i in range(0, 64, 16)]


def test_bad_stride_is_an_error():
  with pytest.raises(ValueError, match="stride must be in"):
    ex.window_spans(64, 16, 17)


def test_text_length_is_a_multiple_of_every_window():
  assert ex.text_length([32, 64, 128], 1000) == 896
  assert ex.text_length([32, 48], 10) == 96  # at least one lcm
  assert ex.stride_for(64, None, 0.5) == 32 and ex.stride_for(64, 100, 0.5) == 64


def position_logits(vocab=7):
  """A fake model whose loss depends on the position in the window and on the token."""
  def logits_fn(inputs_BW):
    b, w = inputs_BW.shape
    logits = np.zeros((b, w, vocab))
    logits[..., 0] = np.arange(w) / w * 4.0
    logits += np.eye(vocab)[inputs_BW] * 2.0
    return logits
  return logits_fn


def reference_xent(stream, window, logits_fn):
  inputs, targets = stream[:-1].reshape(-1, window), stream[1:].reshape(-1, window)
  logits = logits_fn(inputs)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]


def test_protocols_and_buckets_with_a_fake_model():
  rng = np.random.default_rng(0)
  stream = rng.integers(0, 7, size=129).astype(np.int32)
  scorer = ex.Scorer.from_logits_fn(position_logits(), tokens_per_batch=64)
  windows = ex.evaluate_windows(scorer, stream, 32, num_buckets=4)
  xent = reference_xent(stream, 32, position_logits())
  np.testing.assert_allclose(windows.loss, xent.mean(), rtol=1e-6)
  np.testing.assert_allclose(windows.bucket_loss, xent.mean(0).reshape(4, 8).mean(1), rtol=1e-6)
  np.testing.assert_array_equal(windows.bucket_starts, [0, 8, 16, 24])
  assert windows.tokens == 128
  same = ex.evaluate_sliding(scorer, stream, 32, 32)
  assert same.loss == windows.loss and same.accuracy == windows.accuracy
  sliding = ex.evaluate_sliding(scorer, stream, 32, 8)
  assert sliding.tokens == 128 and sliding.loss != windows.loss
  # Target t is scored at position t in the first window, then at position 24 + (t - 32) % 8.
  t = np.arange(128)
  position = np.where(t < 32, t, 24 + (t - 32) % 8)
  logits = position_logits()(stream[None, :-1])[0]  # this fake ignores context...
  logits[:, 0] += (position - t / 4) / 32 * 4.0      # ...but not the position in the window
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -log_p[t, stream[1:]]
  np.testing.assert_allclose(sliding.loss, expected.mean(), rtol=1e-6)


# ------------------------------------------------------------------------ a real model


def test_both_protocols_on_a_tiny_model_and_the_report(tmp_path, rope_run):
  run = rope_run
  result = ex.evaluate_lengths(run, (1, 2, 4), num_tokens=256, num_buckets=8)
  assert [(r["length"], r["protocol"]) for r in result.rows] == [
      (32, "windows"), (32, "sliding"), (64, "windows"), (64, "sliding"), (128, "windows"),
      (128, "sliding")]
  for r in result.rows:
    assert np.isfinite(r["loss"]) and r["tokens"] == 256  # the same text at every length
    assert r["stride"] == (r["length"] if r["protocol"] == "windows" else r["length"] // 2)
  assert sorted(result.by_position) == [32, 64, 128]
  assert all(r.bucket_loss.shape == (8,) for r in result.by_position.values())
  paths = ex.write_report(result, str(tmp_path / "extrapolation"))
  for name in ("results.csv", "results.md", "ppl_vs_length.png", "loss_by_position.png"):
    assert (tmp_path / "extrapolation" / name).stat().st_size > 0
  for name in ("ppl_png", "position_png"):
    image = matplotlib.image.imread(paths[name])
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def test_scorer_matches_the_training_eval_step_and_sliding_at_full_stride(rope_run):
  run = rope_run
  stream = ex.validation_stream(run.config.data, run.tokenizer, 128)
  # Query blocks of 16 exercise the chunked backend on 64-token windows.
  scorer = ex.make_scorer(run, chunk_size=16)
  windows = ex.evaluate_windows(scorer, stream, 64)
  sliding = ex.evaluate_sliding(scorer, stream, 64, 64)
  assert sliding.loss == windows.loss and sliding.tokens == windows.tokens == 128
  batch = {"inputs": stream[:-1].reshape(2, 64), "targets": stream[1:].reshape(2, 64),
           "positions": np.tile(np.arange(64, dtype=np.int32), (2, 1)),
           "segment_ids": np.ones((2, 64), np.int32), "weights": np.ones((2, 64), np.float32)}
  batch = {k: np.concatenate([v, np.zeros((6, 64), v.dtype)]) for k, v in batch.items()}
  from posjax.run import sharding
  out = jax.device_get(run.run.trainable.eval_step(
      run.params, run.rest, sharding.global_batch(batch, run.run.mesh)))
  np.testing.assert_allclose(windows.loss, out["loss_sum"] / out["weight_sum"], rtol=1e-5)


def test_learned_table_skips_longer_lengths_with_a_note(tmp_path):
  run = fresh_run(tmp_path, **{"model.pe": "learned", "model.pe_options": '{"max_len": 64}'})
  result = ex.evaluate_lengths(run, (1, 2, 4), num_tokens=128, protocols=("windows",))
  assert [(r["length"], r["loss"] is None) for r in result.rows] == [
      (32, False), (64, False), (128, True)]
  assert "past max_len=64" in result.rows[-1]["note"]
  assert any("[128] skipped" in n and "max_len=64" in n for n in result.notes)
  paths = ex.write_report(result, str(tmp_path / "out"))
  assert "skipped" in open(paths["md"]).read()
  with pytest.raises(ValueError, match="no evaluation length fits"):
    ex.evaluate_lengths(run, (4,), num_tokens=128)


def test_a_run_from_its_checkpoint(tmp_path, rope_run):
  save_checkpoint(rope_run, tmp_path, 7)
  result, paths = ex.run_extrapolation(str(tmp_path), rope_run.config, multipliers=(1,),
                                       num_tokens=64, protocols=("windows",))
  assert np.isfinite(result.rows[0]["loss"]) and result.rows[0]["tokens"] == 64
  assert pathlib.Path(paths["csv"]).parent == tmp_path / "extrapolation"
  run = ex.load_run(str(tmp_path), rope_run.config)
  assert run.step == 7
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.params),
               jax.device_get(rope_run.params))


def test_a_workdir_without_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="no checkpoint to evaluate"):
    ex.load_run(str(tmp_path), tiny_config())


def test_another_text_is_named_and_reported_apart(tmp_path, rope_run):
  import ml_collections
  save_checkpoint(rope_run, tmp_path, 7)
  verse = tmp_path / "verse.txt"
  verse.write_text("Shall I compare thee to a summer's day?\n" * 200)
  other = ml_collections.ConfigDict(dict(rope_run.config.data.to_dict(), name="text",
                                         path=str(verse)))
  kwargs = dict(multipliers=(1,), num_tokens=64, protocols=("windows",))
  own, _ = ex.run_extrapolation(str(tmp_path), rope_run.config, **kwargs)
  result, paths = ex.run_extrapolation(str(tmp_path), rope_run.config, data_config=other,
                                       **kwargs)
  assert result.data == f"text:{verse}" and own.data == ""
  assert pathlib.Path(paths["md"]).parent.name.startswith("extrapolation_text_")
  assert (tmp_path / "extrapolation" / "results.md").exists()  # the run's own report stays
  text = open(paths["md"]).read()
  assert f"on text:{verse}" in text and "not the data the run was trained on" in text
  assert result.rows[0]["loss"] != own.rows[0]["loss"]


def test_comparison_over_seeds_is_mean_and_sample_std(tmp_path):
  def result(scheme, seed, ppls):
    rows = [{"scheme": scheme, "seed": seed, "train_len": 32, "multiplier": m, "length": 32 * m,
             "protocol": "windows", "stride": None, "loss": float(np.log(p)), "perplexity": p,
             "accuracy": 0.5, "tokens": 64, "note": ""} for m, p in zip((1, 2), ppls)]
    return ex.ExtrapolationResult(scheme, 32, rows, {}, [])
  results = [result("rope", 0, (4.0, 9.0)), result("rope", 1, (6.0, 13.0)),
             result("alibi", 0, (5.0, 5.5))]
  rows = {r["scheme"]: r for r in ex.comparison_rows(results)}
  assert rows["rope"]["seeds"] == 2 and rows["alibi"]["seeds"] == 1
  assert rows["rope"]["ppl@32"] == f"5.00 ± {np.std([4.0, 6.0], ddof=1):.2f}"
  assert rows["rope"]["ppl@64"] == "11.00 ± 2.83"
  assert rows["alibi"]["ppl@64"] == 5.5  # one seed: the value itself
  (rope_windows,) = [s for s in ex.protocol_series(results[0].rows + results[1].rows)]
  assert rope_windows.y == [5.0, 11.0]
  assert rope_windows.low == [4.0, 9.0] and rope_windows.high == [6.0, 13.0]
  paths = ex.write_comparison(results, str(tmp_path))
  assert "| rope | 2 | 32 | windows | 5.00 ± 1.41 | 11.00 ± 2.83 |" in open(paths["md"]).read()
  assert pathlib.Path(paths["png"]).stat().st_size > 0
