"""Test set-up: JAX on the CPU with 8 simulated devices, so sharding runs everywhere."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import posjax  # noqa: E402,F401  (turns off XLA:CPU's YNN fusion before JAX starts)
import jax  # noqa: E402  (must come after the environment is set)

jax.config.update("jax_default_matmul_precision", "highest")


# Test tiers. `pytest` runs the fast tier; the slow tier (notebooks, end-to-end runs of posjax.main
# and the training loop, Pallas interpret-mode kernels, Triton compiles, tests over about 5 s on
# two cores) runs with `--all` (both tiers, as CI does), with `-m slow` (only it), or when a test
# file or node id is named on the command line. Tests are marked here, by file and by function
# name (so that moving a test between files keeps its tier), or with @pytest.mark.slow in place.

import fnmatch  # noqa: E402

import pytest  # noqa: E402

SLOW_FILES = ("test_notebooks.py", "test_bench*.py", "test_main.py")
SLOW_FUNCTIONS = (
    # Pallas interpret mode (the kernel's cross-lowering tests stay fast)
    "test_values_and_gradients_match_reference", "test_half_precision_forward_within_tolerance",
    "test_decoder_with_fused_backend_equals_xla", "test_memory_grows_linearly_with_length",
    "test_kv_cache_decoding_with_fused_backend_equals_xla",
    # end-to-end training runs (the loop, fine-tuning, experiments)
    "test_resumed_run_*", "test_early_stopping_survives_a_resume", "test_nan_loss_stops_*",
    "test_steps_run_again_after_a_crash_*", "test_init_from_loads_pretrained_parameters_only",
    "test_training_a_finished_run_again_is_a_no_op", "test_bfloat16_compute_with_float32_*",
    "test_tiny_run_trains_and_evaluates_by_length", "test_sigterm_saves_*",
    "test_fine_tunes_a_hugging_face_bert", "test_frozen_parameters_do_not_move",
    "test_mlm_checkpoint_loads_into_the_fine_tuning_model",
    "test_a_checkpoint_of_another_width_is_a_clear_error",
    "test_report_scores_validation_and_longer_test_passages", "test_sweep_*",
    "test_experiment_sweep_*", "test_main_generate_mode_*",
    "test_finetune_starts_from_the_base_parameters", "test_a_checkpoint_without_its_data_state_*",
    "test_resuming_with_other_training_fields_is_refused", "test_a_second_run_on_a_workdir_*",
    "test_metrics_are_on_disk_at_each_checkpoint", "test_a_diverged_state_is_never_saved",
    "test_progress_is_printed_outside_a_terminal", "test_resumed_algorithmic_run_*",
    "test_mlm_with_a_learned_table_skips_*",
    # over about 5 s each
    "test_readme_example_runs", "test_sharded_training_matches_one_device",
    "test_gradient_accumulation_equals_whole_batch", "test_rematerialization_changes_nothing_*",
    "test_block_variants_run_and_train", "test_classification_heads",
    "test_shaw_relative_values_match_the_paper",
)
# Kept fast: one interpret-mode kernel case.
FAST_IDS = ("test_values_and_gradients_match_reference[alibi-True]",)
# tests/models runs each scheme through every model; the fast tier keeps RoPE, the default
# (tests/encodings and tests/nn test every scheme on its own).
PER_SCHEME_FILES = ("test_models.py",)
FAST_SCHEMES = ("rope",)


def _is_slow(item) -> bool:
  if item.get_closest_marker("slow"):
    return True
  if item.name in FAST_IDS:
    return False
  if any(fnmatch.fnmatchcase(item.path.name, pattern) for pattern in SLOW_FILES):
    return True
  function = getattr(item, "originalname", item.name)
  if any(fnmatch.fnmatchcase(function, pattern) for pattern in SLOW_FUNCTIONS):
    return True
  if item.path.name in PER_SCHEME_FILES and hasattr(item, "callspec"):
    from posjax import encodings
    schemes = {v for v in item.callspec.params.values()
               if isinstance(v, str) and (v in encodings.names() or v.startswith("shaw"))}
    return bool(schemes) and not schemes & set(FAST_SCHEMES)
  return False


def pytest_addoption(parser):
  parser.addoption("--all", action="store_true", dest="all_tiers",
                   help="run the slow tier too (by default only tests not marked slow run)")


def _tier_filter_on(config) -> bool:
  """Only the fast tier runs unless --all or -m is given or tests are named by file or node id."""
  if config.getoption("all_tiers") or config.option.markexpr:
    return False
  here = config.invocation_params.dir
  return not any("::" in arg or os.path.isfile(os.path.join(here, arg)) for arg in config.args)


@pytest.hookimpl(tryfirst=True)  # before -m filters on the marks added here
def pytest_collection_modifyitems(config, items):
  for item in items:
    if _is_slow(item) and not item.get_closest_marker("slow"):
      item.add_marker(pytest.mark.slow)
  if _tier_filter_on(config):
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
      config.hook.pytest_deselected(items=slow)
      items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_terminal_summary(terminalreporter, config):
  if _tier_filter_on(config):
    terminalreporter.write_line("fast tier only: tests marked slow were deselected "
                                "(--all runs both tiers, -m slow the slow one)")
