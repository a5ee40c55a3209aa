"""Fine-tuning end to end on tiny configs: pretrained weights in, frozen weights still, reports."""

import json
import pathlib

import jax
import numpy as np
import pytest

from posjax.configs import load_config
from posjax.evaluate import run_report
from posjax.run.experiment import Run
from posjax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]


def config(name, arg="tiny", **overrides):
  return load_config(f"{ROOT}/configs/{name}.py:{arg}", **overrides)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
  """A tiny MLM pretraining run (ALiBi) to fine-tune from."""
  workdir = tmp_path_factory.mktemp("mlm")
  experiment = Run(config("mlm", "tiny,alibi"), str(workdir))
  return workdir, jax.device_get(loop.train(experiment).params)


def flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("name, method", [("finetune_cls", "full"), ("finetune_ner", "lora")])
def test_mlm_checkpoint_loads_into_the_fine_tuning_model(tmp_path, mlm_run, name, method):
  workdir, mlm_params = mlm_run
  experiment = Run(config(name, f"tiny,alibi,{method}",
                                      **{"train.init_from": str(workdir)}), str(tmp_path))
  params = flat(jax.device_get(experiment.init_state().params))
  pretrained = flat(mlm_params)
  encoder = [k for k in params if k.startswith("encoder/")]
  assert encoder
  for key in encoder:
    source = key.replace("/base/", "/")
    if source in pretrained:
      np.testing.assert_array_equal(params[key], pretrained[source])
    else:
      assert key.endswith(("lora_a", "lora_b")), key
  assert any(k.startswith("head/") for k in params)


def test_a_checkpoint_of_another_width_is_a_clear_error(tmp_path, mlm_run):
  workdir, _ = mlm_run
  experiment = Run(config("finetune_cls", "tiny,alibi",
                                      **{"train.init_from": str(workdir), "model.dim": 48}),
                               str(tmp_path))
  with pytest.raises(ValueError, match="shapes differ"):
    experiment.init_state()


@pytest.mark.parametrize("method", ["bitfit", "adapters"])
def test_frozen_parameters_do_not_move(tmp_path, method):
  experiment = Run(config("finetune_cls", f"tiny,rope,{method}"), str(tmp_path))
  before = flat(jax.device_get(experiment.init_state().params))
  after = flat(jax.device_get(loop.train(experiment).params))
  trainable = flat(experiment.trainable.trainable)
  assert 0 < sum(bool(v) for v in trainable.values()) < len(trainable)
  for key, is_trained in trainable.items():
    if is_trained:
      continue
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  assert any(not np.array_equal(after[k], before[k]) for k, t in trainable.items() if t)


def test_early_stopping_counts_evaluations_without_improvement():
  stopper = loop.EarlyStopping(2, "eval/f1", "max")
  assert [stopper.update({"eval/f1": v}) for v in (0.5, 0.6, 0.6, 0.55)] == [
      False, False, False, True]
  assert stopper.best == 0.6
  assert not loop.EarlyStopping(0, "eval/f1", "max").update({"eval/f1": 0.1})


def test_report_scores_validation_and_longer_test_passages(tmp_path):
  experiment = Run(config("finetune_ner"), str(tmp_path))
  text = run_report.report(experiment, loop.train(experiment))
  summary = json.loads((tmp_path / "finetune_results.json").read_text())
  assert [(r["split"], r["seq_len"]) for r in summary["results"]] == [
      ("validation", 32), ("test", 32), ("test", 64)]
  assert summary["labels"] == ["O", "B-PER", "I-PER"]
  assert summary["trainable_params"] == summary["total_params"]
  assert "entity F1" in text and "B-PER" in text


@pytest.fixture
def bert_dir(tmp_path):
  """The tiny random BERT fixture plus a 64-token WordPiece vocabulary (its vocab_size)."""
  import shutil
  import string
  path = tmp_path / "bert"
  shutil.copytree(ROOT / "tests" / "fixtures" / "hf" / "bert", path)
  letters = list(string.ascii_lowercase)
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + ["##" + c for c in letters]
  vocab += list(".,;:!?'")
  assert len(vocab) == 64
  (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  return path


@pytest.mark.parametrize("name", ["finetune_cls", "finetune_ner"])
def test_fine_tunes_a_hugging_face_bert(tmp_path, bert_dir, name):
  from posjax.interop import loader
  experiment = Run(config(name, "tiny,lora", **{"train.init_from_hf": str(bert_dir),
                                                         "data.seq_len": 16}),  # its table: 32
                               str(tmp_path / "run"))
  assert experiment.cfg.pe == "learned" and experiment.tokenizer.vocab_size == 64
  params = flat(jax.device_get(experiment.init_state().params))
  family = "classifier" if name == "finetune_cls" else "tagger"
  _, _, _, expected = loader.convert_checkpoint(str(bert_dir), family)
  for key, value in expected.items():
    path = "/".join(map(str, key))
    path = path if path in params else path.replace("/query/", "/query/base/").replace(
        "/value/", "/value/base/")
    np.testing.assert_array_equal(params[path], value, err_msg=path)
  text = run_report.report(experiment, loop.train(experiment))
  assert "learned, peft lora" in text


def test_sweep_pretrains_fine_tunes_and_tabulates(tmp_path):
  from experiments.finetune import __main__ as experiment  # defines no flags on import
  path = experiment.sweep(str(tmp_path), ["alibi"], ["bitfit"], ["cls", "ner"], tiny=True,
                          seeds=[0, 1], finetune_overrides={"train.steps": 3},
                          task_overrides={"ner": {"train.steps": 4}})
  text = open(path).read()
  assert "## cls: macro-F1" in text and "## ner: entity F1" in text
  assert "Seeds 0, 1: mean ± sample std over seeds." in text
  assert "| alibi | bitfit |" in text and " ± " in text
  for name in ("cls_scores.png", "ner_by_length.png", "results.csv", "baselines.csv"):
    assert (tmp_path / name).exists()
  # The baselines are scored on the fine-tunes' own evaluations: validation and test at 1x, 2x.
  assert "| naive_bayes | " in text and "| gazetteer | " in text
  baseline_header = next(line for line in text.splitlines() if line.startswith("| baseline |"))
  assert "val macro_f1" in baseline_header and "test 2x macro_f1" in baseline_header
  runs = {}
  for seed in (0, 1):
    run = tmp_path / "ner_alibi_bitfit" / f"seed_{seed}"
    summary = json.loads((run / "finetune_results.json").read_text())
    assert summary["steps_run"] == 4 and 0 < summary["trainable_params"] < summary["total_params"]
    cls = json.loads((tmp_path / "cls_alibi_bitfit" / f"seed_{seed}" / "finetune_results.json")
                     .read_text())
    assert cls["steps_run"] == 3  # --finetune applies to both tasks, --finetune_ner to ner only
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == config["data"]["seed"] == seed
    assert config["train"]["init_from"].endswith(f"mlm_alibi/seed_{seed}")
    runs[seed] = summary["results"][0]["loss"]
  assert runs[0] != runs[1]  # two seeds, two different runs
  # A run recorded before the learning-rate sweep existed is tabulated at its own rate.
  summary_path = tmp_path / "ner_alibi_bitfit" / "seed_0" / "finetune_results.json"
  summary = json.loads(summary_path.read_text())
  del summary["learning_rate"], summary["lr_scale"]
  summary_path.write_text(json.dumps(summary))
  experiment.sweep(str(tmp_path), ["alibi"], ["bitfit"], ["ner"], tiny=True, seeds=[0],
                   finetune_overrides={"train.steps": 3})
  assert "| alibi | bitfit | " in open(path).read().split("## ner")[1]
  assert "| 1 | 0.003 |" in open(path).read().split("## ner")[1]


def test_sweep_chooses_each_methods_learning_rate_on_the_sweep_seeds_validation(tmp_path):
  from experiments.finetune import __main__ as experiment
  path = experiment.sweep(str(tmp_path), ["alibi"], ["bitfit"], ["cls"], tiny=True,
                          seeds=[0, 1], lr_scales=[0.1, 10.0], lr_sweep_seeds=[0],
                          pretrain_seed=0, finetune_overrides={"train.steps": 3})
  assert not (tmp_path / "mlm_alibi" / "seed_1").exists()  # both seeds fine-tune seed 0's encoder
  base = json.loads((tmp_path / "cls_alibi_bitfit_lrscale0.1" / "seed_0" / "config.json")
                    .read_text())["train"]["learning_rate"]
  assert base == pytest.approx(0.1 * 3e-3)  # configs/finetune_cls.py LEARNING_RATES["bitfit"]
  val = {}
  for scale in (0.1, 10):
    run = tmp_path / f"cls_alibi_bitfit_lrscale{scale:g}"
    summary = json.loads((run / "seed_0" / "finetune_results.json").read_text())
    assert summary["learning_rate"] == pytest.approx(scale * 3e-3)
    assert json.loads((run / "seed_0" / "config.json").read_text())[
        "train"]["init_from"].endswith("mlm_alibi/seed_0")
    val[scale] = summary["results"][0]["macro_f1"]
  best = max((0.1, 10), key=lambda x: val[x])  # the first on a tie, as best_lr_scale
  seed_1 = [x for x in (0.1, 10) if (tmp_path / f"cls_alibi_bitfit_lrscale{x:g}" / "seed_1").exists()]
  assert seed_1 == [best]
  text = open(path).read()
  assert "### cls: validation macro-F1 at each learning rate" in text
  table = text.split("### cls")[0]
  assert table.count("| alibi | bitfit |") == 1 and f"| {best:g} |" in table


def test_learning_rate_ties_go_to_the_lower_validation_loss():
  from experiments.finetune import __main__ as experiment
  def row(scale, seed, f1, loss):
    return {"task": "ner", "scheme": "rope", "method": "bitfit", "seed": seed, "lr scale": scale,
            "val entity_f1": f1, "val loss": loss}
  rows = [row(0.3, 0, 0.0, 0.05), row(1, 0, 0.0, 0.03), row(3, 0, 0.0, 0.04),
          row(3, 1, 0.0, 0.01)]  # seed 1 ran only at 3: not in the comparison
  assert experiment.best_lr_scale(rows, "ner", "rope", "bitfit") == 1
  rows[0] = row(0.3, 0, 0.01, 0.09)  # any score beats any loss
  assert experiment.best_lr_scale(rows, "ner", "rope", "bitfit") == 0.3


def test_the_by_length_plot_draws_every_method_and_the_baselines():
  from experiments.finetune import __main__ as experiment
  def row(scheme, method, f1):
    return {"scheme": scheme, "method": method, "test 1x macro_f1": f1, "test 1x macro_f1_std": 0.1,
            "test 2x macro_f1": f1 / 2, "test 2x macro_f1_std": 0.0, "test 1x acc": 0.9}
  summary = [row("rope", "full", 0.6), row("rope", "prompt", 0.4), row("alibi", "bitfit", 0.3)]
  baselines = [{"baseline": name, "split": split, "multiplier": m, "macro_f1": f1}
               for name, f1 in (("majority", 0.1), ("naive_bayes", 0.5))
               for split in ("validation", "test") for m in ((1.0,) if split == "validation"
                                                             else (2.0, 1.0))]
  series = {s.label: s for s in experiment.by_length_series(summary, baselines, "macro_f1")}
  assert list(series) == ["rope full", "rope prompt", "alibi bitfit", "majority", "naive_bayes"]
  full = series["rope full"]
  assert list(full.x) == [1.0, 2.0] and list(full.y) == [0.6, 0.3]
  np.testing.assert_allclose(full.low, [0.5, 0.3])
  np.testing.assert_allclose(full.high, [0.7, 0.3])
  styles = [series[k].style for k in ("rope full", "rope prompt", "alibi bitfit")]
  assert len({s["color"] for s in styles}) == 3  # a color per method
  assert styles[0]["linestyle"] == styles[1]["linestyle"] != styles[2]["linestyle"]
  nb = series["naive_bayes"]  # test rows only, in length order
  assert list(nb.x) == [1.0, 2.0] and list(nb.y) == [0.5, 0.5] and nb.low is None


def test_sweep_refuses_bad_learning_rate_scales_before_training(tmp_path):
  from experiments.finetune import __main__ as experiment
  for kwargs in ({"lr_scales": [1.0, 1.0]}, {"lr_scales": [0.0]},
                 {"lr_scales": [1.0], "seeds": [0], "lr_sweep_seeds": [3]}):
    with pytest.raises(ValueError, match="lr_"):
      experiment.sweep(str(tmp_path), ["alibi"], ["bitfit"], ["cls"], tiny=True, **kwargs)
  with pytest.raises(ValueError, match="pos"):
    experiment.sweep(str(tmp_path), ["alibi"], ["bitfit"], ["cls"], tiny=True,
                     task_overrides={"pos": {"train.steps": 3}})
  assert not any(tmp_path.iterdir())
