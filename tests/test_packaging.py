"""What a non-editable install (`pip install .`) carries: every module of posjax, and configs/."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build_lib(tmp_path_factory):
  """The tree `pip install .` would install, built by setup.py's build_py (no wheel, no deps)."""
  pytest.importorskip("setuptools")  # a Python 3.12 venv has none unless asked
  out = tmp_path_factory.mktemp("build") / "lib"
  subprocess.run([sys.executable, "setup.py", "-q", "build_py", f"--build-lib={out}"], cwd=ROOT,
                 check=True, capture_output=True)
  return out


def test_every_module_is_installed(build_lib):
  """Namespace packages included (posjax/nn has no __init__.py)."""
  sources = {p.relative_to(ROOT) for p in (ROOT / "posjax").rglob("*.py")
             if "__pycache__" not in p.parts}
  assert sources and all((build_lib / p).is_file() for p in sources), [
      str(p) for p in sources if not (build_lib / p).is_file()]


def test_configs_load_from_any_directory_once_installed(build_lib, tmp_path):
  assert ({p.name for p in (build_lib / "posjax" / "_configs").glob("*.py")}
          == {p.name for p in (ROOT / "configs").glob("*.py")})
  code = ("from posjax import configs; "
          "assert configs.__file__.startswith(%r), configs.__file__; "
          "print(configs.load_config('lm.py:tiny').model.pe, "
          "configs.load_config('mlm.py:tiny,alibi').model.pe)" % str(build_lib))
  env = {**os.environ, "PYTHONPATH": str(build_lib)}
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                       capture_output=True, text=True).stdout
  assert out.split() == ["rope", "alibi"]


def test_main_finds_the_shipped_config_from_any_directory(tmp_path):
  from posjax import configs
  argv = configs.with_config_found(["main", "--config=configs/lm.py:tiny,alibi", "--workdir=w"])
  path = argv[1][len("--config="):].split(":")[0]
  assert pathlib.Path(path).is_file() and argv[1].endswith("lm.py:tiny,alibi")
  assert configs.with_config_found([f"--config={tmp_path}/mine.py"]) == [
      f"--config={tmp_path}/mine.py"]  # not shipped: left for absl to report
