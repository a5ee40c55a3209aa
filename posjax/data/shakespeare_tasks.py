"""Labelled sets built from the embedded Shakespeare texts: genre of a passage, character names.

**Genre** (`genre_passages`): a passage of consecutive whole lines (at most `max_chars`
characters, line breaks included) of one work's body (the text after the title, the list of
persons and anything before the first ACT), labelled with its work's First Folio genre: comedy,
history, tragedy or poem. Plays are split by work as for language modelling
(`shakespeare.splits()`); the poems, all training text for the LM, are split here too so that
every class is evaluated: `lovers_complaint` is validation, `passionate_pilgrim` test, the other
three poems train. (The MLM pretraining saw the two held-out poems as unlabelled text; their
labels are never trained on.)

**Character names** (`character_passages`): BIO tags (`O`, `B-PER`, `I-PER`) on every character of
passages of spoken lines (speech headings such as `IAGO.`, stage directions in `[...]` and
ACT/SCENE headings removed). The gazetteer of a play is read off its list of persons: the head of
each entry (the text before its first comma, " - " or final period, up to its first lower-case
word) gives its capitalized words that are not titles, roles or function words (`_NOT_NAMES`) and
do not follow "of": `SIR TOBY BELCH, Uncle of Olivia.` gives TOBY and BELCH, `DUKE OF VENICE.`
nothing. A word of the dialogue is a name when it is in its play's gazetteer
and written Title-case or in capitals (`Iago`, `IAGO`; not `iago`); a run of name words joined by
single spaces is one entity (`Toby Belch`). It is a heuristic: a name that is also a common word
(`Court`, `Green`) is tagged at the start of a sentence too. Only the 37 plays (they all have a
list of persons) take part, split by work as for language modelling.

Passages are taken evenly across each work (`max_per_work` of them at most, deterministically), so
a long work does not dominate; sizes are in `describe()` and in `experiments/finetune/RESULTS.md`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Optional

import numpy as np

from posjax.data import shakespeare

GENRE_VALIDATION_POEMS = ("lovers_complaint",)
GENRE_TEST_POEMS = ("passionate_pilgrim",)
TAG_NAMES = ("O", "B-PER", "I-PER")
O, B, I = 0, 1, 2

_PERSONS_HEADER = re.compile(r"^\s*(persons represented|dramatis personae)\b", re.I)
_ACT_OR_SCENE = re.compile(r"^\s*(act|scene)\b", re.I)
_SETTING = re.compile(r"^\s*scene\s*[:.]", re.I)    # "SCENE: Venice." (not "SCENE I. ...")
WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")
_NOT_NAMES = frozenset("""
    A ABBOT AN AND ARCHBISHOP ATTENDANT ATTENDANTS BISHOP BOY BROTHER CAPTAIN CARDINAL CHORUS
    CITIZEN CITIZENS CLOWN CLOWNS CONSTABLE COUNT COUNTESS DAME DAUGHTER DOCTOR DON DUCHESS DUKE
    EARL EMPEROR EMPRESS FATHER FIRST FRIAR GAOLER GENERAL GENTLEMAN GENTLEMEN GENTLEWOMAN GHOST
    GOVERNOR GROOM HERALD HERALDS HIS HER KEEPER KING LADIES LADY LIEUTENANT LORD LORDS MAID MARQUIS
    MARSHAL MASTER MAYOR MESSENGER MESSENGERS MISTRESS MOTHER MUSICIAN MUSICIANS NURSE OF OFFICER
    OFFICERS OLD OTHER OTHERS PAGE PLAYER PLAYERS PORTER PRIEST PRIESTS PRINCE PRINCESS QUEEN SAILOR
    SAILORS SECOND SENATOR SENATORS SERVANT SERVANTS SEVERAL SEXTON SHEPHERD SIR SOLDIER SOLDIERS
    SON SURNAMED THE THIRD THREE TO TRIBUNE TRIBUNES TWO WATCH WIFE YOUNG AFTERWARDS HOSTESS
    AMBASSADOR AMBASSADORS APPARITIONS SPIRITS WITCHES ENGLISH FRENCH SCOTCH MAN WOMAN SEA
    """.split())
_ROMAN = re.compile(r"^[IVXL]+$")


@dataclasses.dataclass(frozen=True)
class Passages:
  """Texts with a class each (`labels: int [n]`) or a tag per character (`labels[i]: int8 [len]`)."""
  texts: list[str]
  labels: list
  label_names: tuple[str, ...]
  kind: str                      # "sequence" or "token"
  works: list[str]               # the work each passage comes from

  def __len__(self) -> int:
    return len(self.texts)


def describe(passages: Passages) -> str:
  """One line: the number of passages, works and labels (classes or entities)."""
  if passages.kind == "sequence":
    counts = np.bincount(np.asarray(passages.labels, np.int64), minlength=len(passages.label_names))
    per_label = ", ".join(f"{n} {c}" for n, c in zip(passages.label_names, counts))
  else:
    entities = sum(int(np.sum(np.asarray(t) == B)) for t in passages.labels)
    per_label = f"{entities} names"
  chars = sum(len(t) for t in passages.texts)
  return (f"{len(passages)} passages from {len(set(passages.works))} works, {chars} characters "
          f"({per_label})")


# ------------------------------------------------------------------------------------ splitting

def genre_split_works(split: str) -> tuple[str, ...]:
  """The works of the genre task's `split` (plays as for LM; poems as in the module docstring)."""
  poems = {w for w, g in shakespeare.genres().items() if g == "poem"}
  held = {"validation": GENRE_VALIDATION_POEMS, "test": GENRE_TEST_POEMS}
  plays = [w for w in shakespeare.split_works(split) if w not in poems]
  if split == "train":
    chosen = [w for w in poems if w not in GENRE_VALIDATION_POEMS + GENRE_TEST_POEMS]
  else:
    chosen = list(held[split])
  return tuple(sorted(plays + chosen))


def play_split_works(split: str) -> tuple[str, ...]:
  """The plays of `split` (the LM split without the poems)."""
  return tuple(w for w in shakespeare.split_works(split) if shakespeare.genres()[w] != "poem")


# ------------------------------------------------------------------------------ reading a play

def _persons_span(lines: list[str]) -> Optional[tuple[int, int]]:
  """`(first, end)` line indices of the list of persons (after its header), or None."""
  for i, line in enumerate(lines):
    if _PERSONS_HEADER.match(line):
      end = i + 1
      while end < len(lines) and not _ACT_OR_SCENE.match(lines[end]):
        end += 1
      return i + 1, end
  return None


def _body_start(lines: list[str]) -> int:
  """The first line of the work's text proper: the first ACT/SCENE line of a play, or the line
  after the "by William Shakespeare" byline of a poem."""
  span = _persons_span(lines)
  if span is not None:
    start = span[1]
    if start < len(lines) and _SETTING.match(lines[start]):
      while start < len(lines) and lines[start].strip():  # the setting's paragraph
        start += 1
    return start
  for i, line in enumerate(lines[:20]):
    if line.strip().lower().startswith("by william shakespeare"):
      return i + 1
  return 0


@functools.cache
def gazetteer(work: str) -> frozenset[str]:
  """The upper-cased names read off `work`'s list of persons (see the module docstring)."""
  lines = shakespeare.texts()[work].splitlines()
  span = _persons_span(lines)
  if span is None:
    raise ValueError(f"{work} has no list of persons to read names from")
  names = set()
  for line in lines[span[0]:span[1]]:
    head = re.split(r",| - ", line.strip(), maxsplit=1)[0].rstrip(".:")
    after_of = False
    for word in WORD.findall(head):
      upper = word.upper()
      if word[0].islower() and upper != "OF":
        break                                # a description starts: "Captain of a band ..."
      if (not after_of and len(word) >= 3 and upper not in _NOT_NAMES
          and not _ROMAN.match(upper)):
        names.add(upper)
      after_of = upper == "OF"                 # "DUKE OF VENICE": a place or a title
  return frozenset(names)


def _is_speech_heading(line: str) -> bool:
  text = line.strip()
  letters = [c for c in text if c.isalpha()]
  return (bool(letters) and text.endswith(".") and len(text) <= 40
          and all(c.isupper() for c in letters))


def spoken_lines(work: str) -> list[str]:
  """The dialogue of a play, line by line, without headings and stage directions."""
  lines = shakespeare.texts()[work].splitlines()
  out, in_direction = [], False
  for line in lines[_body_start(lines):]:
    text = line.strip()
    if in_direction or text.startswith("["):
      in_direction = "]" not in text
      continue
    if not text or _ACT_OR_SCENE.match(text) or _is_speech_heading(text):
      continue
    out.append(text)
  return out


def tag_names(text: str, names: frozenset[str]) -> np.ndarray:
  """`int8 [len(text)]` BIO tags of the names in `text` (Title-case or capitals only)."""
  tags = np.zeros(len(text), np.int8)
  previous_end = None
  for match in WORD.finditer(text):
    word = match.group()
    is_name = (word.upper() in names and word[0].isupper()
               and (word[1:].islower() or word.isupper() or "-" in word))
    if not is_name:
      previous_end = None
      continue
    start, end = match.span()
    if previous_end is not None and text[previous_end:start] == " ":
      tags[previous_end:end] = I           # continues the entity: the space and the word
    else:
      tags[start] = B
      tags[start + 1:end] = I
    previous_end = end
  return tags


# ------------------------------------------------------------------------------------ passages

def pack_lines(lines: list[str], max_chars: int) -> list[list[str]]:
  """Consecutive lines grouped into passages of at most `max_chars` characters (joined by
  newlines); a line longer than `max_chars` is dropped and ends the passage before it."""
  passages, current, size = [], [], 0
  for line in lines:
    if len(line) > max_chars:
      if current:
        passages.append(current)
      current, size = [], 0
      continue
    added = len(line) + (1 if current else 0)
    if current and size + added > max_chars:
      passages.append(current)
      current, size, added = [], 0, len(line)
    current.append(line)
    size += added
  if current:
    passages.append(current)
  return passages


def _evenly(items: list, limit: Optional[int]) -> list:
  if not limit or len(items) <= limit:
    return items
  return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def genre_passages(split: str, *, max_chars: int, max_per_work: Optional[int] = None) -> Passages:
  """Passages of every work of `split`, each labelled with its work's genre."""
  genres = shakespeare.genres()
  texts, labels, works = [], [], []
  for work in genre_split_works(split):
    lines = shakespeare.texts()[work].splitlines()
    body = [line.rstrip() for line in lines[_body_start(lines):]]
    groups = pack_lines([line for line in body if line.strip()], max_chars)
    for group in _evenly(groups, max_per_work):
      texts.append("\n".join(group))
      labels.append(shakespeare.GENRE_NAMES.index(genres[work]))
      works.append(work)
  return Passages(texts, labels, shakespeare.GENRE_NAMES, "sequence", works)


def character_passages(split: str, *, max_chars: int,
                       max_per_work: Optional[int] = None) -> Passages:
  """Passages of dialogue from every play of `split`, with BIO tags of the character names."""
  texts, labels, works = [], [], []
  for work in play_split_works(split):
    names = gazetteer(work)
    for group in _evenly(pack_lines(spoken_lines(work), max_chars), max_per_work):
      text = "\n".join(group)
      texts.append(text)
      labels.append(tag_names(text, names))
      works.append(work)
  return Passages(texts, labels, TAG_NAMES, "token", works)
