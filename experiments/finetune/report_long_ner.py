"""Rebuilds the names table and `long_ner_by_length.png` from this directory's `long_ner.csv` (the
600-step names fine-tunes of the third and sixth studies, whose run folders are not kept) with
the launcher's own `write_reports`, the baselines scored afresh on the same passages; prints the
Markdown table.

  python -m experiments.finetune.report_long_ner
"""

import math
import os
import shutil
import tempfile

from experiments.finetune.__main__ import baseline_rows, write_reports
from posjax.evaluate import report

HERE = os.path.dirname(os.path.abspath(__file__))


def _value(text: str):
  """A CSV cell as `write_csv` wrote it back: int, float, NaN for an empty cell (the third
  study's rows have no "val loss"), else the text (task, scheme, method)."""
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return math.nan if text == "" else text


def main() -> None:
  rows = [{k: _value(v) for k, v in r.items()}
          for r in report.read_csv(os.path.join(HERE, "long_ner.csv"))]
  baselines = baseline_rows("ner", {"data.eval_max_per_work": 100})
  with tempfile.TemporaryDirectory() as workdir:
    with open(write_reports(rows, workdir, baselines)) as f:
      print(f.read())
    shutil.copy(os.path.join(workdir, "ner_by_length.png"),
                os.path.join(HERE, "long_ner_by_length.png"))


if __name__ == "__main__":
  main()
