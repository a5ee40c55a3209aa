"""Fine-tuning a masked-LM encoder for sequence classification (default: the genre of a passage).

  python -m posjax.main --config=configs/mlm.py:alibi --workdir=runs/mlm_alibi       # pretrain
  python -m posjax.main --config=configs/finetune_cls.py:alibi,lora --workdir=runs/genre \
      --config.train.init_from=runs/mlm_alibi
  python -m posjax.main --config=configs/finetune_cls.py:tiny --workdir=/tmp/c   # seconds; tests

The argument is a comma-separated list: a positional scheme name, a fine-tuning method
(`posjax.nn.peft.METHODS`) and/or `tiny`. The model fields come from configs/mlm.py with the same
argument, so a checkpoint of that pretraining run fits (`train.init_from`; the classification head
starts fresh). Or `train.init_from_hf=DIR` fine-tunes a Hugging Face BERT (its config, weights
and WordPiece vocabulary). Without either, the encoder starts from random weights.

Data (`posjax.data.labelled`): `shakespeare_genre` (embedded, offline: passages of at most
`data.seq_len` bytes → comedy, history, tragedy or poem, whole works held out) or a TFDS catalog
set with the network, e.g. `--config.data.name=glue/sst2 --config.data.text_key=sentence` or
`--config.data.name=imdb_reviews --config.data.validation_split=test --config.data.test_split=`.
After training, the best checkpoint (by validation macro-F1) is scored on the validation split and
on test passages up to `eval.length_multipliers` × seq_len (longer than any seen in training):
`finetune_report.md` and `finetune_results.json` in the workdir.
"""

import os

from posjax.configs import load_config
from posjax.nn.peft import METHODS

_MLM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlm.py")

# Peak learning rates: full fine-tuning moves every weight, so it takes a smaller step than the
# methods that train a few new parameters (LoRA, adapters, BitFit) or only a soft prompt.
LEARNING_RATES = {"full": 3e-4, "freeze_embeddings": 3e-4, "freeze_bottom": 3e-4, "lora": 1e-3,
                  "adapters": 1e-3, "bitfit": 3e-3, "prompt": 1e-2}


def get_config(arg=None):
  words = [w for w in (arg or "").split(",") if w]
  methods = [w for w in words if w in METHODS]
  config = load_config(f"{_MLM}:{','.join(w for w in words if w not in METHODS)}")
  config.task = "classify"            # classify (one label a passage) or tag (one per token)
  config.model.family = "classifier"  # classifier (for classify) or tagger (for tag)
  config.model.dropout = 0.1
  config.data.update(
      name="shakespeare_genre",       # shakespeare_genre, or a TFDS catalog name (network)
      seq_len=128,                    # longest training passage in tokens (longer: truncated)
      global_batch_size=32,
      max_per_work=64,                # embedded sets: passages per training work, taken evenly
      eval_max_per_work=0,            # ... per validation/test work (0: all)
      label_key="label",              # TFDS: the class feature (sequence classification)
      tokens_key="tokens",            # TFDS: the words (token classification)
      tags_key="tags",                # TFDS: their BIO tags
      validation_split="validation",  # the split names to use for validation and test
      test_split="test",              # ("" for none)
  )
  config.head = dict(
      pooling="mean",                 # mean over the passage's tokens, or cls (the first token)
      representation_layer=False,     # an extra dense + tanh layer between encoder and head
  )
  config.peft.method = methods[-1] if methods else "full"  # the rest: configs/lm.py
  config.train.update(
      steps=300, warmup_steps=30,
      learning_rate=LEARNING_RATES[config.peft.method],
      weight_decay=0.01,
      eval_every=50, checkpoint_every=50, log_every=25,
      keep_checkpoints=1,
      best_metric="eval/macro_f1",    # the best checkpoint by this is kept and reported
      best_mode="max",
      early_stopping_patience=3,
      init_from="",                   # the MLM pretraining run (workdir or checkpoint), or
                                      # set init_from_hf (configs/lm.py)
  )
  config.eval.update(length_multipliers=(1, 2, 4), batch_size=32, num_batches=0)
  if "tiny" in words:
    config.data.update(seq_len=32, global_batch_size=8, max_per_work=4, eval_max_per_work=4)
    config.train.update(steps=6, warmup_steps=2, eval_every=3, checkpoint_every=3, log_every=2)
    config.eval.update(length_multipliers=(1, 2), batch_size=8)
  return config
