"""The run record: which differences from a recorded run are refused, and old records."""

from __future__ import annotations

import json

import pytest

from posjax.configs import load_config
from posjax.run import record


def tiny(**overrides):
  return load_config("configs/lm.py:tiny", **overrides)


def test_differences_name_each_training_field_but_not_run_options():
  recorded, given = tiny(), tiny(**{"model.pe": "alibi", "eval.batch_size": 16, "mode": "eval"})
  assert record.differences(recorded, given) == ['model.pe: "rope" (run) → "alibi" (given)']
  same = tiny(**{"model.pe_options": '{ }'})
  assert record.differences(recorded, same) == []  # the same options, written differently


def test_a_record_from_before_a_field_was_added(tmp_path):
  """A record that lacks a field (it predates it) agrees with the field switched off, and not
  with the field switched on; the config rebuilt from it has the field, off."""
  old = tiny().to_dict()
  del old["data"]["passkey_fraction"]
  (tmp_path / record.CONFIG_FILE).write_text(json.dumps(old))
  assert record.check(tmp_path, tiny()) == []
  with pytest.raises(ValueError, match=r"data.passkey_fraction: \"<absent>\" \(run\) → 0.2"):
    record.check(tmp_path, tiny(**{"data.passkey_fraction": 0.2}))
  config = record.for_workdir(tmp_path, tiny(**{"mode": "eval"}))
  assert config.data.passkey_fraction == 0.0 and config.mode == "eval"
  assert record.added_since(old, tiny()) == ["data.passkey_fraction"]


def test_a_record_from_before_a_section_moved_to_the_base_config(tmp_path):
  """`peft` and `train.init_from_hf` moved from the fine-tuning configs into configs/lm.py: an LM
  record without them agrees with their base values (method=full), not with another method."""
  old = tiny().to_dict()
  del old["peft"], old["train"]["init_from_hf"]
  (tmp_path / record.CONFIG_FILE).write_text(json.dumps(old))
  assert record.check(tmp_path, tiny()) == []
  with pytest.raises(ValueError, match=r"peft.method: \"<absent>\" \(run\) → \"lora\""):
    record.check(tmp_path, tiny(**{"peft.method": "lora"}))
  config = record.for_workdir(tmp_path, tiny(**{"mode": "eval"}))
  assert config.peft.method == "full" and config.peft.lora_rank == 8
  assert config.train.init_from_hf == ""


def test_a_run_rebuilt_from_an_old_record_has_the_fields_added_since(tmp_path):
  """`Run.from_workdir` (resume, studies, generate) reads a record that predates fields as the
  run was: each such field at its base value, not missing."""
  old = tiny(**{"data.passkey_fraction": 0.2}).to_dict()
  del old["peft"], old["data"]["passkey_max_digits"]
  (tmp_path / record.CONFIG_FILE).write_text(json.dumps(old))
  config = record.read_run_config(tmp_path)
  assert config.data.passkey_max_digits == 5 and config.peft.method == "full"
  assert config.data.passkey_fraction == 0.2  # what the record holds is kept
  assert record.check(tmp_path, config) == []
  assert record.read_run_config(tmp_path / "elsewhere") is None
