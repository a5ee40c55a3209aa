"""Report writing shared by the studies: rows as CSV and Markdown, line plots and heatmaps (PNG).

A row is a flat dict; every study writes its rows with `write_csv` and `write_markdown`, and its
figures with `line_plot` and `heatmap`. Figures are drawn on a `matplotlib.figure.Figure` with
the Agg canvas directly, so nothing here touches pyplot's global backend or needs a display.

  write_csv("runs/x/results.csv", rows)
  write_markdown("runs/x/results.md", rows, title="Perplexity by length", notes=["..."])
  line_plot("runs/x/ppl.png", [Series("rope", [128, 256], [5.1, 7.3])], xlabel="length",
            ylabel="perplexity", log2_x=True, log_y=True)
  heatmap("runs/x/passkey.png", values_RC, rows=[0.0, 0.5], columns=[128, 256])
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _columns(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]]) -> list[str]:
  if columns is not None:
    return list(columns)
  seen: dict[str, None] = {}
  for row in rows:
    for key in row:
      seen.setdefault(key, None)
  return list(seen)


def _is_missing(value) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: Any) -> str:
  """A cell as text: floats with 4 significant decimals, None/NaN as empty, the rest by str."""
  if _is_missing(value):
    return ""
  if isinstance(value, (float, np.floating)):
    value = float(value)
    if math.isinf(value):
      return "inf" if value > 0 else "-inf"
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
  return str(value)


def _ensure_parent(path: str) -> None:
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)


def write_csv(path: str, rows: Sequence[Mapping[str, Any]],
              columns: Optional[Sequence[str]] = None) -> str:
  """Rows as CSV with a header (columns: given, else every key in first-seen order)."""
  _ensure_parent(path)
  names = _columns(rows, columns)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(names)
    for row in rows:
      writer.writerow(["" if _is_missing(row.get(k)) else row.get(k) for k in names])
  return path


def read_csv(path: str) -> list[dict[str, str]]:
  """The rows of a CSV written by `write_csv`, values as strings."""
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Optional[Sequence[str]] = None) -> str:
  """A Markdown table; numeric columns are right-aligned."""
  names = _columns(rows, columns)
  numeric = [bool(rows) and all(isinstance(r.get(k), (int, float, np.number))
                                or _is_missing(r.get(k)) for r in rows) for k in names]
  lines = ["| " + " | ".join(names) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
  for row in rows:
    cells = [format_value(row.get(k)).replace("|", "\\|") for k in names]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_markdown(path: str, rows: Sequence[Mapping[str, Any]], *, title: str = "",
                   columns: Optional[Sequence[str]] = None, notes: Iterable[str] = (),
                   intro: str = "") -> str:
  """A Markdown file: optional `# title`, intro paragraph, the table, then notes as bullets."""
  _ensure_parent(path)
  parts = []
  if title:
    parts.append(f"# {title}\n")
  if intro:
    parts.append(intro.strip() + "\n")
  parts.append(markdown_table(rows, columns) + "\n")
  notes = [n for n in notes if n]
  if notes:
    parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path


@dataclasses.dataclass
class Series:
  """One line of a `line_plot`; `style` goes to `Axes.plot` (linestyle, marker, color, ...);
  `low` and `high`, when given, shade a band around it (e.g. the spread over seeds)."""
  label: str
  x: Sequence[float]
  y: Sequence[float]
  style: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  low: Optional[Sequence[float]] = None
  high: Optional[Sequence[float]] = None


def over_seeds(rows: Sequence[Mapping[str, Any]], by: Sequence[str],
               values: Sequence[str]) -> list[dict]:
  """One row per distinct value of the `by` columns (in first-seen order), holding each of
  `values` as its mean over the rows of that group (one a seed), `<value>_std` (the sample
  standard deviation, ddof=1; 0 for one row) and `seeds` (how many rows). Missing or NaN values
  are left out of a group's statistics."""
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in by), []).append(r)
  out = []
  for key, members in groups.items():
    row = dict(zip(by, key))
    for v in values:
      xs = np.asarray([float(m[v]) for m in members if not _is_missing(m.get(v))], np.float64)
      xs = xs[np.isfinite(xs)]
      row[v] = float(xs.mean()) if len(xs) else float("nan")
      row[f"{v}_std"] = float(xs.std(ddof=1)) if len(xs) > 1 else 0.0 if len(xs) else float("nan")
    row["seeds"] = len(members)
    out.append(row)
  return out


def mean_std(row: Mapping[str, Any], value: str, digits: int = 3) -> str:
  """`"0.512 ± 0.030"` from an `over_seeds` row (just the mean for a single seed)."""
  mean, std = row[value], row.get(f"{value}_std", 0.0)
  if _is_missing(mean):
    return "n/a"
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if row.get("seeds", 1) > 1 else "")


def _save(fig: Figure, path: str) -> str:
  _ensure_parent(path)
  FigureCanvasAgg(fig)
  fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
  return path


def line_plot(path: str, series: Sequence[Series], *, xlabel: str, ylabel: str, title: str = "",
              log2_x: bool = False, log_y: bool = False,
              vlines: Sequence[tuple[float, str]] = (), size=(6.4, 4.4)) -> str:
  """Lines (missing or non-finite points are left out) as a PNG; `vlines` are (x, label) marks."""
  fig = Figure(figsize=size)
  ax = fig.add_subplot()
  for s in series:
    x = np.asarray(s.x, np.float64)
    y = np.asarray([np.nan if _is_missing(v) else v for v in s.y], np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
    if keep.any():
      line, = ax.plot(x[keep], y[keep], label=s.label, **{"marker": "o", **dict(s.style)})
      if s.low is not None and s.high is not None:
        low, high = (np.asarray(b, np.float64)[keep] for b in (s.low, s.high))
        ax.fill_between(x[keep], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
  for x, label in vlines:
    ax.axvline(x, color="gray", linestyle=":", linewidth=1, label=label or None)
  if log2_x:
    ax.set_xscale("log", base=2)
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(True, which="major", alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small")
  return _save(fig, path)


def heatmap(path: str, values_RC, *, rows: Sequence[Any], columns: Sequence[Any],
            xlabel: str = "", ylabel: str = "", title: str = "", vmin: float = 0.0,
            vmax: float = 1.0, annotate: bool = True, cmap: str = "RdYlGn") -> str:
  """A `[len(rows), len(columns)]` grid as a colored PNG, each cell labeled with its value."""
  values = np.asarray(values_RC, np.float64)
  if values.shape != (len(rows), len(columns)):
    raise ValueError(f"heatmap values have shape {values.shape}, expected "
                     f"({len(rows)}, {len(columns)}) for the row and column labels")
  fig = Figure(figsize=(max(4.0, 0.8 * len(columns) + 2), max(3.0, 0.5 * len(rows) + 1.5)))
  ax = fig.add_subplot()
  image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
  ax.set_xticks(range(len(columns)), [str(c) for c in columns])
  ax.set_yticks(range(len(rows)), [str(r) for r in rows])
  if annotate:
    for r in range(values.shape[0]):
      for c in range(values.shape[1]):
        if np.isfinite(values[r, c]):
          ax.text(c, r, f"{values[r, c]:.2f}", ha="center", va="center", fontsize="small")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  fig.colorbar(image, ax=ax)
  return _save(fig, path)
