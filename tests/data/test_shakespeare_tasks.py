"""The labelled sets built from the embedded corpus: hand-made cases and the real splits."""

import numpy as np
import pytest

from posjax.data import shakespeare, shakespeare_tasks as st


def tags_of(text, names):
  return "".join("OBI"[t] for t in st.tag_names(text, frozenset(names)))


def test_tag_names_hand_made():
  text = "Good Iago, tell Sir Toby Belch; IAGO and iago."
  #       0123456789...
  tags = tags_of(text, {"IAGO", "TOBY", "BELCH"})
  expected = ("OOOOO" + "BIII" + "OOOOOOOOOOO" + "BIIIIIIIII" + "OO" + "BIII" + "OOOOOOOOOO")
  assert tags == expected
  # "iago" in lower case is not a name; "Toby Belch" is one entity including the space
  assert tags[text.index("Toby"):text.index(";")] == "BIIIIIIIII"


def test_pack_lines_keeps_whole_lines():
  lines = ["aaaa", "bbb", "cc", "dddddddddd", "e"]
  assert st.pack_lines(lines, 8) == [["aaaa", "bbb"], ["cc"], ["e"]]  # 10 chars alone: dropped
  assert all(len("\n".join(g)) <= 8 for g in st.pack_lines(lines, 8))


def test_gazetteer_reads_the_list_of_persons():
  names = st.gazetteer("twelfth_night")
  assert {"VIOLA", "OLIVIA", "MALVOLIO", "TOBY", "BELCH", "ORSINO"} <= names
  assert not names & {"SIR", "DUKE", "CAPTAIN", "SEA", "CLOWN"}
  othello = st.gazetteer("othello")
  assert {"OTHELLO", "IAGO", "DESDEMONA", "CASSIO"} <= othello
  assert "VENICE" not in othello  # "DUKE OF VENICE": a place


def test_spoken_lines_drop_headings_and_directions():
  lines = st.spoken_lines("othello")
  assert lines[0].startswith("Tush, never tell me")
  assert not any(l.startswith("[") or l in ("IAGO.", "RODERIGO.") for l in lines)
  assert not any(l.upper().startswith(("ACT ", "SCENE ")) for l in lines)


def test_genre_splits_hold_out_whole_works_and_cover_every_genre():
  split_works = {s: set(st.genre_split_works(s)) for s in ("train", "validation", "test")}
  assert not split_works["train"] & split_works["validation"]
  assert not split_works["train"] & split_works["test"]
  assert not split_works["validation"] & split_works["test"]
  assert sum(map(len, split_works.values())) == 42
  genres = shakespeare.genres()
  for split in ("validation", "test"):
    assert sorted(genres[w] for w in split_works[split]) == sorted(shakespeare.GENRE_NAMES)


def test_genre_passages_are_labelled_by_their_work():
  passages = st.genre_passages("validation", max_chars=127, max_per_work=10)
  assert len(passages) == 40
  genres = shakespeare.genres()
  for text, label, work in zip(passages.texts, passages.labels, passages.works):
    assert 0 < len(text) <= 127
    assert passages.label_names[label] == genres[work]
    work_lines = {line.rstrip() for line in shakespeare.texts()[work].splitlines()}
    assert all(line in work_lines for line in text.split("\n"))  # whole lines (blank ones left out)


def test_character_passages_tag_the_gazetteer_names():
  passages = st.character_passages("test", max_chars=127, max_per_work=50)
  assert set(passages.works) <= set(shakespeare.TEST_WORKS)
  found = 0
  for text, tags, work in zip(passages.texts, passages.labels, passages.works):
    assert len(tags) == len(text)
    np.testing.assert_array_equal(tags, st.tag_names(text, st.gazetteer(work)))
    found += int(np.sum(tags == st.B))
  assert found > 0
  assert "names" in st.describe(passages)


def test_unknown_split_is_an_error():
  with pytest.raises(ValueError, match="unknown split"):
    st.genre_split_works("dev")
