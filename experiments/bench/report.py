"""CSV and Markdown output, rewritten after every row so a run cut short keeps what it measured."""

from __future__ import annotations

import csv
import os
from typing import Optional, Sequence


def _fmt(value) -> str:
  if value is None:
    return "—"
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
  return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def with_attention_ratios(rows: Sequence[dict]) -> list[dict]:
  """Adds `x_cudnn_causal`: time over plain cuDNN causal at the same (L, D, mode)."""
  baseline = {(r["seq_len"], r["head_dim"], r["mode"]): r["ms"] for r in rows
              if r["backend"] == "cudnn" and r["ms"]}
  out = []
  for row in rows:
    base = baseline.get((row["seq_len"], row["head_dim"], row["mode"]))
    ratio = row["ms"] / base if (row.get("ms") and base) else None
    out.append(dict(row, x_cudnn_causal=ratio))
  return out


def with_train_ratios(rows: Sequence[dict], reference: str = "rope") -> list[dict]:
  """Adds `vs_rope`: tokens/s over the best tokens/s of the `reference` scheme."""
  best = max((r["tokens_per_s"] for r in rows
              if r["scheme"] == reference and r.get("tokens_per_s")), default=None)
  return [dict(r, vs_rope=(r["tokens_per_s"] / best if best and r.get("tokens_per_s") else None))
          for r in rows]


class Report:
  """Rows per table, written to `<out>/<table>.csv` and all tables to `<out>/tables.md`."""

  COLUMNS = {
      "attention": ("scheme", "backend", "seq_len", "head_dim", "batch", "heads", "mode", "ms",
                    "tflops", "memory_mib", "x_cudnn_causal", "status"),
      "train": ("scheme", "backend", "batch", "seq_len", "step_ms", "tokens_per_s", "mfu",
                "vs_rope", "status"),
      "decode": ("scheme", "backend", "batch", "prompt_len", "new_tokens", "decode_ms",
                 "tokens_per_s", "status"),
  }

  def __init__(self, out_dir: str, device: str, header: Optional[str] = None):
    self.out_dir, self.device, self.header = out_dir, device, header
    self.rows = {name: [] for name in self.COLUMNS}
    os.makedirs(out_dir, exist_ok=True)

  def add(self, table: str, row: dict) -> None:
    self.rows[table].append(row)
    print(table, {k: _fmt(v) for k, v in row.items()}, flush=True)
    self._write()

  def _decorated(self, table: str) -> list[dict]:
    rows = self.rows[table]
    if table == "attention":
      return with_attention_ratios(rows)
    if table == "train":
      return with_train_ratios(rows)
    return list(rows)

  def _write(self) -> None:
    parts = [f"Device: {self.device}", ""]
    if self.header:
      parts += [self.header, ""]
    for table, columns in self.COLUMNS.items():
      rows = self._decorated(table)
      if not rows:
        continue
      with open(os.path.join(self.out_dir, f"{table}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
      parts += [f"## {table}", "", markdown_table(rows, columns), ""]
    with open(os.path.join(self.out_dir, "tables.md"), "w") as f:
      f.write("\n".join(parts))
