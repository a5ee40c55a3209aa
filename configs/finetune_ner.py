"""Fine-tuning a masked-LM encoder for token classification (default: character names, BIO tags).

  python -m posjax.main --config=configs/mlm.py:rope --workdir=runs/mlm_rope          # pretrain
  python -m posjax.main --config=configs/finetune_ner.py:rope,adapters --workdir=runs/ner \
      --config.train.init_from=runs/mlm_rope
  python -m posjax.main --config=configs/finetune_ner.py:tiny --workdir=/tmp/n   # seconds; tests

Everything as in configs/finetune_cls.py (same arguments, fields and reports), except: the task
tags every token, the default data is `shakespeare_characters` (names of the characters in the
dialogue, each play's list of persons as the gazetteer, whole plays held out; byte tokenizer), and
the best checkpoint is chosen by the entity-level F1. With the network:
`--config.data.name=conll2003 --config.data.tags_key=ner` or `--config.data.name=wikiann/en`.
"""

import os

from posjax.configs import load_config

_CLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_cls.py")


def get_config(arg=None):
  config = load_config(f"{_CLS}:{arg or ''}")
  config.task = "tag"
  config.model.family = "tagger"
  config.data.name = "shakespeare_characters"   # or conll2003, wikiann/en (network)
  config.train.best_metric = "eval/entity_f1"
  if "tiny" not in (arg or "").split(","):
    config.data.update(max_per_work=200, eval_max_per_work=300)
  return config
