"""`task=mlm+nsp` (Devlin et al. 2019): the NSP head, the summed loss and its metrics, exact
gradient accumulation, the config checks, and a run that learns a next-sentence task."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from posjax import models
from posjax.configs import load_config
from posjax.nn.heads import NextSentenceHead
from posjax.run import sharding
from posjax.run.objectives import next_sentence
from posjax.run.trainable import make_trainable

CFG = models.TransformerConfig(vocab_size=48, dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                               pe="learned", pe_options={"max_len": 32}, num_token_types=2,
                               norm_position="post", attention_backend="xla", use_bias=False)
BATCH, LENGTH = 8, 16


def _xent(logits, labels):
  """Cross-entropy of each row (numpy, float64)."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def test_nsp_head_is_pooler_then_two_way_linear():
  """tanh(h_[CLS] W_p + b_p) W_c + b_c, in numpy from the head's own parameters."""
  with nnx.use_eager_sharding(False):  # as models.build: no mesh here
    head = NextSentenceHead(8, rngs=nnx.Rngs(0))
  for linear in (head.pooler, head.classifier):  # nonzero biases, so they are checked too
    linear.bias[...] = jax.random.normal(jax.random.key(1), linear.bias.shape)
  x = np.asarray(jax.random.normal(jax.random.key(2), (3, 5, 8)))
  p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(head, nnx.Param)))
  pooled = np.tanh(x[:, 0] @ p["pooler"]["kernel"] + p["pooler"]["bias"])
  want = pooled @ p["classifier"]["kernel"] + p["classifier"]["bias"]
  got = head(jnp.asarray(x))
  assert got.shape == (3, 2) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # Only the first token counts.
  x2 = x.copy()
  x2[:, 1:] += 3.0
  np.testing.assert_allclose(np.asarray(head(jnp.asarray(x2))), want, rtol=1e-5, atol=1e-5)


def _batch(rng):
  tokens = rng.integers(3, 48, (BATCH, LENGTH)).astype(np.int32)
  token_types = np.zeros((BATCH, LENGTH), np.int32)
  token_types[:, LENGTH // 2:] = 1
  return {"inputs": tokens, "targets": rng.integers(3, 48, (BATCH, LENGTH)).astype(np.int32),
          "weights": (rng.random((BATCH, LENGTH)) < 0.2).astype(np.float32),
          "positions": np.tile(np.arange(LENGTH, dtype=np.int32), (BATCH, 1)),
          "segment_ids": np.ones((BATCH, LENGTH), np.int32), "token_types": token_types,
          "nsp_labels": rng.integers(0, 2, BATCH).astype(np.int32),
          "nsp_weights": np.r_[np.ones(BATCH - 2), np.zeros(2)].astype(np.float32)}


def test_loss_is_mean_mlm_plus_mean_nsp_and_metrics():
  """Against numpy: Σ w·xent / Σ w for the masked tokens plus the same for the pairs, and the
  accuracies; a weightless row (evaluation padding) counts for nothing."""
  rng = np.random.default_rng(0)
  batch = _batch(rng)
  mlm_logits = rng.normal(size=(BATCH, LENGTH, 48)).astype(np.float32)
  nsp_logits = rng.normal(size=(BATCH, 2)).astype(np.float32)
  loss = next_sentence.PretrainingLoss()
  sums = loss.sums((jnp.asarray(mlm_logits), jnp.asarray(nsp_logits)), batch)
  norm = loss.normalizers(batch)
  w, v = batch["weights"], batch["nsp_weights"]
  mlm = (_xent(mlm_logits, batch["targets"]) * w).sum() / w.sum()
  nsp = (_xent(nsp_logits, batch["nsp_labels"]) * v).sum() / v.sum()
  np.testing.assert_allclose(float(loss.value(sums, norm)), mlm + nsp, rtol=1e-5)
  metrics = {k: float(m) for k, m in loss.metrics(sums, norm).items()}
  np.testing.assert_allclose(metrics["train/mlm_loss"], mlm, rtol=1e-5)
  np.testing.assert_allclose(metrics["train/nsp_loss"], nsp, rtol=1e-5)
  right = (nsp_logits.argmax(-1) == batch["nsp_labels"]) * v
  assert metrics["train/nsp_accuracy"] == pytest.approx(right.sum() / v.sum())
  right = (mlm_logits.argmax(-1) == batch["targets"]) * w
  assert metrics["train/mlm_accuracy"] == pytest.approx(right.sum() / w.sum())


def _train_cfg(accum=1):
  return ml_collections.ConfigDict(dict(
      learning_rate=3e-3, steps=10, warmup_steps=2, schedule="cosine", end_lr_fraction=0.1,
      weight_decay=0.1, b1=0.9, b2=0.95, grad_clip_norm=1.0, grad_accum_steps=accum))


def _train(accum, steps=2):
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  trainable = make_trainable("pretraining", CFG, _train_cfg(accum), mesh, seed=0,
                             loss=next_sentence.PretrainingLoss())
  state, rng, history = trainable.create(), np.random.default_rng(1), []
  for _ in range(steps):
    state, metrics = trainable.train_step(state, sharding.global_batch(_batch(rng), mesh))
    history.append({k: float(v) for k, v in metrics.items()})
  return history, jax.device_get(state.params)


def test_gradient_accumulation_equals_whole_batch():
  """Each head is normalized by its total over the whole batch, so 4 micro-batches give the
  whole batch's loss and update."""
  whole, whole_params = _train(1)
  micro, micro_params = _train(4)
  for a, b in zip(whole, micro):
    for key in ("loss", "train/nsp_loss", "train/mlm_loss", "train/nsp_accuracy"):
      np.testing.assert_allclose(b[key], a[key], rtol=2e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               micro_params, whole_params)


def test_config_checks():
  config = load_config("configs/bert.py:tiny")
  assert (config.task, config.model.family, config.model.num_token_types) == (
      "mlm+nsp", "pretraining", 2)
  objective = next_sentence.MaskedLMAndNextSentence(config)
  cfg = CFG.replace(pe_options={"max_len": 64})  # the tiny config evaluates at 2 x 32
  assert objective.problems(cfg, 1) == []
  assert "num_token_types=2" in " ".join(objective.problems(cfg.replace(num_token_types=0), 1))
  config.data.seq_len = 6
  assert "seq_len >= 8" in " ".join(objective.problems(cfg, 1))
  assert objective.tokenizer().vocab_size == 261


def _write_corpus(folder):
  """A next-sentence task a tiny model can learn: each file writes words of its own two letters,
  so B follows A exactly when both use the same letters. 20 files: the last 2 (letters shared
  with training files) are the validation split."""
  rng = np.random.default_rng(0)
  folder.mkdir()
  for f in range(20):
    letters = "abcdefghij"[f % 10] + "klmnopqrst"[(f * 3) % 10]
    sentences = [" ".join("".join(rng.choice(list(letters), int(rng.integers(2, 5))))
                          for _ in range(int(rng.integers(2, 5)))).capitalize() + "."
                 for _ in range(150)]  # capitalised: a lower-case word continues a sentence
    (folder / f"doc{f:02d}.txt").write_text(" ".join(sentences) + "\n")


@pytest.mark.slow
def test_tiny_mlm_nsp_run_learns_next_sentences(tmp_path):
  """posjax.main trains configs/bert.py:tiny on a learnable task: NSP accuracy far above chance
  (1/2) in training and on held-out files, both heads' metrics logged and in the report."""
  from posjax.run.experiment import Run
  from posjax.train import loop
  from posjax.evaluate import run_report

  corpus, workdir = tmp_path / "corpus", str(tmp_path / "run")
  _write_corpus(corpus)
  config = load_config("configs/bert.py:tiny", **{
      "data.name": "text", "data.path": str(corpus), "data.seq_len": 32,
      "data.global_batch_size": 32, "train.steps": 300, "train.learning_rate": 3e-3,
      "train.warmup_steps": 20, "train.log_every": 50, "train.eval_every": 150,
      "train.checkpoint_every": 150, "eval.num_batches": 8, "eval.batch_size": 32})
  run = Run(config, workdir)
  state = loop.train(run)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train_acc = [r["train/nsp_accuracy"] for r in records if "train/nsp_accuracy" in r]
  evals = [r for r in records if "eval/nsp_accuracy" in r]
  assert len(train_acc) == 6 and len(evals) == 2
  assert all(k in evals[-1] for k in ("eval/loss", "eval/mlm_loss", "eval/nsp_loss",
                                      "eval/accuracy", "eval/perplexity"))
  assert np.mean(train_acc[-2:]) > 0.8, train_acc
  assert evals[-1]["eval/nsp_accuracy"] > 0.8, evals
  assert evals[-1]["eval/loss"] == pytest.approx(
      evals[-1]["eval/mlm_loss"] + evals[-1]["eval/nsp_loss"], rel=1e-5)
  text = run_report.report(run, state)
  assert "| 32 | 1 |" in text
