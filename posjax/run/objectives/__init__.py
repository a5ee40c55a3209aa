"""What a run trains for: its data, its model head and its validation.

An objective is chosen by `config.task` and is the only place that knows the task:
  - `LanguageModeling` (`lm`: next token; `mlm`: masked tokens) reads a text corpus in windows of
    `data.seq_len` tokens and validates by loss, perplexity and accuracy on the validation split;
  - `Labelled` (`classify`: one label a passage; `tag`: one BIO tag a token) reads labelled
    passages and validates by loss, accuracy and macro-F1 (and entity F1 for tags);
  - `MaskedLMAndNextSentence` (`mlm+nsp`) reads sentence pairs for BERT's two objectives and
    validates both heads;
  - `Algorithmic` (`algorithmic`) generates instances of a synthetic problem (`data.name`) at
    input lengths `data.min_train_length..max_train_length` and validates at those lengths by
    loss, token accuracy and sequence accuracy.
Each gives its tokenizer, its model head's options, its loss (None: the token-level
cross-entropy), its data (`dataset`), the checks of its config fields (`problems`), its training
length and its validation. The training loop, the final
report and the studies ask the objective, never the task name.
"""

from posjax.data import labelled as labelled_data
from posjax.run.objectives.algorithmic import Algorithmic
from posjax.run.objectives.labelled import Labelled, labelled_metrics
from posjax.run.objectives.next_sentence import MaskedLMAndNextSentence
from posjax.run.objectives.text import LanguageModeling, LengthResult, TextObjective

__all__ = ["Algorithmic", "Labelled", "LanguageModeling", "LengthResult",
           "MaskedLMAndNextSentence", "TextObjective", "for_config", "labelled_metrics"]


def for_config(config):
  """The objective of `config.task`."""
  if config.task == "mlm+nsp":
    return MaskedLMAndNextSentence(config)
  if config.task == "algorithmic":
    return Algorithmic(config)
  if config.task in labelled_data.KINDS:
    return Labelled(config)
  return LanguageModeling(config)
