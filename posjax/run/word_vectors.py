"""Pretrained word vectors as a run's token embedding (`config.model.word_vectors`).

The run's tokenizer must have a word vocabulary (`data.tokenizer=word`): each vocabulary entry
takes the file's vector for it (`posjax.nn.word_vectors`: word2vec text or binary, GloVe text,
the OOV policy). Entries the file lacks (the specials among them) keep the random
initialisation of every other row, N(0, 0.02²); the loaded vectors are rescaled together to
`model.word_vectors_std` (default that same 0.02) so that both kinds of row, and the positional
terms added to them (`embed` schemes), meet at the scale a random embedding has. Positional
schemes are untouched: `embed` adds its table after the lookup, `rotate`, `bias` and `content`
act inside attention.

The vectors' dimension must equal `model.dim` (no projection is learned: a mismatch is an error
that says which width to use). `model.freeze_word_vectors` freezes the whole token table — the
rows from the file and the uncovered random ones alike (the "static" setting of Kim 2014,
"Convolutional Neural Networks for Sentence Classification") — through the same trainable mask
as the PEFT methods, so the frozen rows get no update and hold no optimizer state. With tied
embeddings (`model.tie_embeddings`), that freezes the output layer too; the log says so.

Checks run from `Run.__init__`, before anything is compiled; the file is read in full when the
parameters are initialised (`Run.init_state`), and not at all when a run resumes from its
checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
from absl import logging

from posjax.nn import word_vectors
from posjax.run import metrics

# The config.model fields read here (they are not TransformerConfig fields).
FIELDS = ("word_vectors", "word_vectors_format", "word_vectors_lowercase", "word_vectors_std",
          "freeze_word_vectors")
INIT_STD = 0.02  # posjax.nn.embedding.InputEmbedding's random rows


@dataclasses.dataclass(frozen=True)
class Options:
  path: str
  file_format: str = "auto"
  lowercase: bool = True
  std: float = INIT_STD        # 0: the file's own scale
  freeze: bool = False


def options(config) -> Optional[Options]:
  """The word-vector options of `config.model` (None without `model.word_vectors`); raises on
  an inconsistent config."""
  model = config.model
  path, freeze = model.word_vectors, bool(model.freeze_word_vectors)
  if not path:
    if freeze:
      raise ValueError("model.freeze_word_vectors=True needs model.word_vectors=PATH (to freeze "
                       "a random token embedding, use peft.method=freeze_embeddings)")
    return None
  problems = []
  train = config.train
  if train.init_from or train.init_from_hf:
    problems.append("model.word_vectors and train.init_from / init_from_hf both set the token "
                    "embedding: use one of them")
  file_format = model.word_vectors_format
  if file_format not in word_vectors.FORMATS:
    problems.append(f"model.word_vectors_format={file_format!r}: choose one of "
                    f"{word_vectors.FORMATS}")
  std = float(model.word_vectors_std)
  if std < 0:
    problems.append(f"model.word_vectors_std={std} must be positive (or 0: the file's scale)")
  if problems:
    raise ValueError("; ".join(problems))
  return Options(path, file_format, bool(model.word_vectors_lowercase), std, freeze)


def check(opts: Options, tokenizer, dim: int) -> None:
  """The errors a run would otherwise meet at initialisation: no word vocabulary, no file, an
  unreadable header, a dimension other than the model's."""
  if not hasattr(tokenizer, "tokens"):
    raise ValueError(f"model.word_vectors needs a word vocabulary to align the vectors to, not "
                     f"the {getattr(tokenizer, 'name', type(tokenizer).__name__)} tokenizer: set "
                     "data.tokenizer=word")
  try:
    detected, file_dim = word_vectors.detect_format(opts.path)
  except FileNotFoundError:
    raise ValueError(f"model.word_vectors={opts.path}: no such file") from None
  except ValueError as e:
    raise ValueError(f"model.word_vectors={opts.path}: {e}") from None
  if file_dim != dim:
    raise ValueError(f"model.word_vectors={opts.path} holds {file_dim}-dimensional vectors "
                     f"({detected}), but model.dim={dim}: set model.dim={file_dim} (the "
                     "vectors are not projected)")


def load(opts: Options, tokenizer) -> word_vectors.WordVectors:
  """The vectors of the tokenizer's vocabulary, rescaled as configured."""
  try:
    return word_vectors.load_word_vectors(
        opts.path, tokenizer.tokens, file_format=opts.file_format,
        lowercase_fallback=opts.lowercase, scale_to_std=opts.std or None)
  except ValueError as e:
    raise ValueError(f"model.word_vectors={opts.path}: {e}") from None


def is_token_embedding(names) -> bool:
  """Whether a parameter path (names) is a token embedding table (`.../tokens/embedding`)."""
  return len(names) >= 2 and tuple(names[-2:]) == ("tokens", "embedding")


def apply(params: Any, vectors: word_vectors.WordVectors) -> Any:
  """`params` (a pure dict) with the covered rows of every token embedding table replaced by the
  vectors, on the table's own sharding."""
  matrix, covered = jnp.asarray(vectors.matrix), jnp.asarray(vectors.covered)
  found = []

  def replace(path, x):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if not is_token_embedding(names):
      return x
    if x.shape[0] < matrix.shape[0] or x.shape[1] != matrix.shape[1]:
      raise ValueError(f"the token embedding {'/'.join(names)} has shape {x.shape}, the word "
                       f"vectors {matrix.shape}")
    found.append("/".join(names))
    # Rows past the tokenizer's vocabulary (model.vocab_size larger) stay random.
    rows = jnp.zeros(x.shape, x.dtype).at[:matrix.shape[0]].set(matrix.astype(x.dtype))
    mask = jnp.zeros(x.shape[0], bool).at[:covered.shape[0]].set(covered)
    return jax.jit(lambda t: jnp.where(mask[:, None], rows, t), out_shardings=x.sharding)(x)

  out = jax.tree_util.tree_map_with_path(replace, params)
  if not found:
    raise ValueError("the model has no token embedding table to load word vectors into")
  return out


def initialise(params: Any, opts: Options, tokenizer, *, tied: bool = False,
               log_path: Optional[str] = None) -> Any:
  """Load the vectors into `params` and report the coverage on the console, in absl's log and in
  `log_path` (the run's train.log) (the run's `init_state`); `tied`: the model's output layer is
  its token table."""
  vectors = load(opts, tokenizer)
  lines = [f"model.word_vectors={opts.path}: {vectors.summary()}; the other rows stay random; "
           f"{'frozen' if opts.freeze else 'fine-tuned'}"]
  if opts.freeze and tied:
    lines.append("warning: model.freeze_word_vectors with model.tie_embeddings: the output layer "
                 "is the frozen token table too")
  if vectors.num_covered == 0:
    lines.append(f"warning: model.word_vectors={opts.path} covers no vocabulary entry")
  if log_path and not os.path.isdir(os.path.dirname(log_path) or "."):
    log_path = None  # no run directory yet (a Run used from Python before training)
  for line in lines:
    logging.info("%s", line)
    metrics.log(line, log_path=log_path)
  return apply(params, vectors)
