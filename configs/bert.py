"""BERT pretraining: masked LM + next-sentence prediction on sentence pairs (Devlin et al. 2019).

  python -m posjax.main --config=configs/bert.py --workdir=runs/bert
  python -m posjax.main --config=configs/bert.py:learned --workdir=runs/bert_learned  # BERT's own
  python -m posjax.main --config=configs/bert.py:tiny --workdir=/tmp/b     # seconds; the tests

The argument is configs/mlm.py's (a scheme name and/or `tiny`), and so are the fields; the
differences: task=mlm+nsp, model.family=pretraining (the masked-LM head and the next-sentence
head on the pooled [CLS]), model.num_token_types=2 (segment embeddings for A and B), and rows
that each hold one pair `[CLS] A [SEP] B [SEP]`, B following A in its work half of the time and
taken from another work of the same split otherwise (`posjax.data.sentence_pairs`). The loss is
the sum of the mean masked-LM and the mean next-sentence cross-entropies; metrics add
train/ and eval/ `mlm_loss`, `mlm_accuracy` / `accuracy`, `nsp_loss`, `nsp_accuracy`.
"""

import os

from posjax.configs import load_config

_MLM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlm.py")


def get_config(arg=None):
  config = load_config(f"{_MLM}:{arg or ''}")
  config.task = "mlm+nsp"
  config.model.family = "pretraining"
  config.model.num_token_types = 2  # token types (segments) 0 for [CLS] A [SEP], 1 for B [SEP]
  return config
