"""Sentence pairs for next-sentence prediction (Devlin et al. 2019): the pair builder, its
adjacent / random ratio, segment ids and token types, truncation, and the masked batches."""

from __future__ import annotations

import numpy as np
import pytest

from posjax.data import sentence_pairs as sp
from posjax.data.tokenizers import ByteTokenizer

from data_testing import data_config

TOK = sp.PairTokenizer(ByteTokenizer())


def _documents(num_docs: int = 6, sentences: int = 30) -> list[str]:
  """Documents whose sentences name their document and index, e.g. "D3 S12 x x x."."""
  rng = np.random.default_rng(0)
  return [" ".join(f"D{d} S{i}" + " x" * int(rng.integers(1, 8)) + "."
                   for i in range(sentences)) for d in range(num_docs)]


def _origin(text: str) -> list[tuple[int, int]]:
  """(document, sentence) of every whole "Dd Si" label in `text`."""
  out = []
  for word, nxt in zip(text.split()[:-1], text.split()[1:]):
    if word.startswith("D") and word[1:].isdigit() and nxt.startswith("S") and nxt[1:].isdigit():
      out.append((int(word[1:]), int(nxt[1:])))
  return out


def _segments(row: dict) -> tuple[str, str]:
  ids, types, segs = row["inputs"], row["token_types"], row["segment_ids"]
  real = segs > 0
  return TOK.decode(ids[real & (types == 0)]), TOK.decode(ids[real & (types == 1)])


def test_cls_and_sep_come_after_the_byte_vocabulary():
  base = ByteTokenizer()
  assert (TOK.cls_id, TOK.sep_id, TOK.vocab_size) == (259, 260, 261)
  assert (TOK.pad_id, TOK.eos_id, TOK.mask_id) == (base.pad_id, base.eos_id, base.mask_id)
  np.testing.assert_array_equal(TOK.encode("Hi."), base.encode("Hi."))  # no id moved
  assert set(TOK.special_ids) == {0, 1, 2, 259, 260}
  assert TOK.decode([259, *base.encode("a b"), 260]) == "a b"


def test_a_tokenizer_with_its_own_cls_and_sep_keeps_them():
  class WithSpecials(ByteTokenizer):
    cls_id, sep_id = 5, 6
  tok = sp.PairTokenizer(WithSpecials())
  assert (tok.cls_id, tok.sep_id, tok.vocab_size) == (5, 6, 259)


def test_split_sentences():
  text = "ROMEO.\nWhat, ho!  Apothecary!\n\nWho calls? So loud. e.g.x stays"
  assert sp.split_sentences(text) == ["What, ho!", "Apothecary!", "Who calls?",
                                      "So loud. e.g.x stays"]  # lower case: no new sentence
  # Macbeth I.7: headings and stage directions go; "!" before a lower-case word does not end
  # the sentence; a closing quote stays with its sentence.
  text = ("[Enter Lady Macbeth.]\nHow now! what news?\n\nLADY MACBETH.\nHe has almost "
          "supp'd.\nACT II. SCENE 1.\nLetting \"I dare not.\" Wait upon it.")
  assert sp.split_sentences(text) == ["How now! what news?", "He has almost supp'd.",
                                      "Letting \"I dare not.\"", "Wait upon it."]


def _one_at_a_time(len_a, len_b, budget):
  """BERT's `truncate_seq_pair`: drop a token from the longer until the pair fits."""
  while len_a + len_b > budget:
    if len_a > len_b:
      len_a -= 1
    else:
      len_b -= 1
  return len_a, len_b


def test_truncate_pair_is_bert_rule():
  for len_a in range(0, 25):
    for len_b in range(0, 25):
      for budget in range(1, 30):
        assert sp.truncate_pair(len_a, len_b, budget) == _one_at_a_time(len_a, len_b, budget)


def _maker(seq_len=64, num_docs=6, sentences=30):
  return sp.PairMaker(sp.tokenize_sentences(_documents(num_docs, sentences), TOK),
                      seq_len=seq_len, cls_id=TOK.cls_id, sep_id=TOK.sep_id, pad_id=TOK.pad_id)


def test_half_adjacent_half_random_from_other_documents():
  maker = _maker()
  rng = np.random.default_rng(1)
  n, adjacent = 2000, 0
  for i in range(n):
    row = maker(i % len(maker), rng)
    a, b = (_origin(text) for text in _segments(row))
    label = int(row["nsp_labels"])
    assert b, "B starts with a whole sentence"
    if label == sp.IS_NEXT:
      adjacent += 1
      # B's first sentence is the one right after A's last, in the same document.
      assert b[0] == (a[-1][0], a[-1][1] + 1) if a else True
    else:
      assert label == sp.NOT_NEXT
      assert not a or b[0][0] != a[-1][0], "a random B comes from another document"
  # Binomial(2000, 1/2): 5 standard deviations is ±112.
  assert abs(adjacent - n / 2) < 112


def test_one_document_draws_random_b_away_from_a():
  maker = _maker(num_docs=1, sentences=60)
  rng = np.random.default_rng(2)
  for i in range(300):
    row = maker(i % len(maker), rng)
    a, b = (_origin(text) for text in _segments(row))
    if int(row["nsp_labels"]) == sp.NOT_NEXT and a:
      assert abs(b[0][1] - (a[-1][1] + 1)) >= 2


def test_row_layout_segment_ids_and_token_types():
  maker = _maker(seq_len=64)
  row = maker(3, np.random.default_rng(3))
  ids, types, segs = row["inputs"], row["token_types"], row["segment_ids"]
  n = int(segs.sum())
  assert ids[0] == TOK.cls_id and ids[n - 1] == TOK.sep_id
  first_sep = int(np.flatnonzero(ids == TOK.sep_id)[0])
  assert np.all(types[:first_sep + 1] == 0) and np.all(types[first_sep + 1:n] == 1)
  assert np.count_nonzero(ids[:n] == TOK.sep_id) == 2
  assert np.all(segs[:n] == 1) and np.all(segs[n:] == 0) and np.all(types[n:] == 0)
  assert np.all(ids[n:] == TOK.pad_id)
  np.testing.assert_array_equal(row["positions"][:n], np.arange(n))
  assert row["nsp_weights"] == 1.0


def test_truncation_keeps_the_junction():
  """Sentences far longer than the row: A loses its start, B its end, the row is full, and an
  IsNext pair still reads on across [SEP]."""
  docs = [" ".join(f"D{d}S{i}:" + "".join(chr(97 + (d + i + k) % 26) for k in range(100)) + "."
                   for i in range(10)) for d in range(3)]
  text_of = {(d, i): s + " " for d, doc in enumerate(docs)
             for i, s in enumerate(sp.split_sentences(doc))}
  maker = sp.PairMaker(sp.tokenize_sentences(docs, TOK), seq_len=48, cls_id=TOK.cls_id,
                       sep_id=TOK.sep_id, pad_id=TOK.pad_id)
  rng = np.random.default_rng(4)
  seen = 0
  for i in range(40):
    anchor = int(maker.anchors[i % len(maker)])
    a, b, label = maker.pair(anchor, rng)
    assert len(a) + len(b) == 45 and len(a) >= 22 and len(b) >= 22  # both long: cut to halves
    row = maker.row(a, b, label)
    assert int(row["segment_ids"].sum()) == 48
    doc, sentence = int(maker.sentences.doc[anchor]), anchor - int(
        np.flatnonzero(maker.sentences.doc == maker.sentences.doc[anchor])[0])
    if label == sp.IS_NEXT:
      seen += 1
      assert TOK.decode(a) == text_of[doc, sentence][-len(a):]  # the end of A's sentence
      assert TOK.decode(b) == text_of[doc, sentence + 1][:len(b)]  # the start of the next
  assert seen > 5


def test_empty_documents_do_not_count_as_others():
  """With one document holding every sentence, a random B comes from it (no endless search)."""
  sentences = sp.tokenize_sentences(["", _documents(1, 40)[0], "  "], TOK)
  maker = sp.PairMaker(sentences, seq_len=48, cls_id=TOK.cls_id, sep_id=TOK.sep_id,
                       pad_id=TOK.pad_id)
  rng = np.random.default_rng(5)
  labels = [int(maker(i, rng)["nsp_labels"]) for i in range(40)]
  assert sp.NOT_NEXT in labels


def test_short_rows_and_documents_are_errors():
  with pytest.raises(ValueError, match="seq_len >= 8"):
    _maker(seq_len=6)
  one_sentence_docs = sp.tokenize_sentences(["Alone.", "Also alone."], TOK)
  with pytest.raises(ValueError, match="no document has two sentences"):
    sp.PairMaker(one_sentence_docs, seq_len=32, cls_id=259, sep_id=260, pad_id=0)


def _dataset(**kwargs):
  options = dict(split="train", seq_len=48, batch_size=8, tokenizer=TOK, seed=0,
                 sentences=sp.tokenize_sentences(_documents(), TOK))
  options.update(kwargs)
  return sp.make_pair_dataset(data_config("bert.py", mlm_probability=0.3), **options)


def test_batches_are_masked_but_never_cls_sep_or_padding():
  batch = next(_dataset())
  assert batch["inputs"].shape == (8, 48) and batch["nsp_labels"].shape == (8,)
  targets, weights = batch["targets"], batch["weights"]
  special = np.isin(targets, (TOK.cls_id, TOK.sep_id)) | (batch["segment_ids"] == 0)
  assert weights.sum() > 0 and np.all(weights[special] == 0)
  np.testing.assert_array_equal(batch["inputs"][special], targets[special])
  assert np.all(batch["inputs"][:, 0] == TOK.cls_id)
  assert batch["inputs"].max() < TOK.vocab_size


def test_same_seed_same_batches_and_epochs_differ():
  first, again = _dataset(), _dataset()
  for _ in range(3):
    a, b = next(first), next(again)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # An epoch has one pair per anchor; the pair drawn from an anchor changes with the epoch.
  one = _dataset(shuffle=False, batch_size=1)
  n = len(sp.tokenize_sentences(_documents(), TOK).anchors())
  rows = [next(one) for _ in range(2 * n)]
  assert any(not np.array_equal(rows[i]["token_types"], rows[i + n]["token_types"])
             for i in range(n))


def test_evaluation_pads_the_last_batch_with_weightless_rows():
  sentences = sp.tokenize_sentences(_documents(num_docs=2, sentences=10), TOK)  # 18 anchors
  batches = list(_dataset(split="validation", sentences=sentences, shuffle=False, repeat=False,
                          drop_remainder=False))
  assert len(batches) == 3
  weights = np.concatenate([b["nsp_weights"] for b in batches])
  assert weights.sum() == 18 and np.all(weights[18:] == 0)
  assert np.all(batches[-1]["segment_ids"][2:] == 0)
