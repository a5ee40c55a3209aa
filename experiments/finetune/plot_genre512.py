"""Draws `genre512_cls_by_length.png`: the genre fine-tunes on 128- and 512-byte passages (this
directory's `lr_sweep_cls.csv` and `genre512_cls.csv`, at learning-rate scale 3; RoPE encoders
unless the label says ALiBi) by the length of the longest test passage in bytes, with naive Bayes
and the majority class on the same passages.

  python -m experiments.finetune.plot_genre512
"""

import csv
import os

import numpy as np

from experiments.finetune.__main__ import baseline_rows
from posjax.evaluate import report

HERE = os.path.dirname(os.path.abspath(__file__))
MULTIPLIERS = (1, 2, 4)


def fine_tunes(csv_name: str, label: str, seq_len: int, style: dict, *, method: str = "full",
               steps: str | None = None, scheme: str = "rope") -> report.Series:
  """The mean ± std over seeds of one scheme and method's test macro-F1 at each test length."""
  with open(os.path.join(HERE, csv_name)) as f:
    rows = [r for r in csv.DictReader(f) if (r["scheme"], r["method"]) == (scheme, method)
            and float(r["lr scale"]) == 3 and steps in (None, r["steps"])]
  columns = [f"test {m}x macro_f1" for m in MULTIPLIERS]
  stats, = report.over_seeds(rows, ("scheme", "method"), columns)
  mean = np.asarray([stats[c] for c in columns])
  std = np.asarray([stats[f"{c}_std"] for c in columns])
  return report.Series(f"{label} ({stats['seeds']} seeds)", [seq_len * m for m in MULTIPLIERS],
                       mean, style, low=mean - std, high=mean + std)


def baseline(name: str, seq_len: int, label: str, style: dict) -> report.Series:
  """A baseline's test macro-F1, scored afresh on the passages of `seq_len` bytes."""
  rows = [r for r in baseline_rows("cls", {"data.eval_max_per_work": 150, "data.seq_len": seq_len})
          if r["baseline"] == name and r["split"] == "test"]
  return report.Series(label, [seq_len * r["multiplier"] for r in rows],
                       [r["macro_f1"] for r in rows], style)


def main() -> None:
  series = [
      fine_tunes("lr_sweep_cls.csv", "full, 128 B passages, 100 steps", 128,
                 {"color": "C0", "marker": "o", "linestyle": "--"}),
      fine_tunes("lr_sweep_cls.csv", "prompt, 128 B passages, 100 steps", 128,
                 {"color": "C1", "marker": "o", "linestyle": "--"}, method="prompt"),
      fine_tunes("genre512_cls.csv", "full, 512 B passages, 100 steps", 512,
                 {"color": "C0", "marker": "s"}, steps="100"),
      fine_tunes("genre512_cls.csv", "prompt, 512 B passages, 100 steps", 512,
                 {"color": "C1", "marker": "s"}, method="prompt", steps="100"),
      fine_tunes("genre512_cls.csv", "full, 512 B passages, 300 steps", 512,
                 {"color": "C2", "marker": "^"}, steps="300"),
      fine_tunes("genre512_cls.csv", "ALiBi encoder: full, 512 B passages, 300 steps", 512,
                 {"color": "C3", "marker": "v", "linestyle": "-."}, steps="300", scheme="alibi"),
      baseline("naive_bayes", 128, "naive Bayes, 128 B passages",
               {"color": "0.55", "linestyle": ":", "marker": "x"}),
      baseline("naive_bayes", 512, "naive Bayes, 512 B passages",
               {"color": "k", "linestyle": ":", "marker": "x"}),
      baseline("majority", 128, "majority class", {"color": "0.75", "linestyle": "-."}),
  ]
  print(report.line_plot(
      os.path.join(HERE, "genre512_cls_by_length.png"), series,
      xlabel="longest test passage (bytes)", ylabel="test macro-F1 (genre)",
      title="Genre: passage length and fine-tuning steps (± std over seeds)", log2_x=True,
      size=(7.6, 4.8)))


if __name__ == "__main__":
  main()
