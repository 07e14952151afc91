"""The pip-installable package (issue 14): package data, console scripts, a run from another folder.

The slow test builds the package into a fresh venv with no network: `pip install --no-deps
--no-build-isolation` from a copy of this checkout, the dependencies coming from the interpreter
running the tests (a .pth file adds its site-packages).
"""

from __future__ import annotations

import filecmp
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ('dreamerv2-train', 'dreamerv2-evaluate', 'dreamerv2-export', 'dreamerv2-parity',
           'dreamerv2-serve', 'dreamerv2-import-authors')


def test_package_configs_is_the_top_level_file():
  """dreamerv2_tf/configs.yaml (package data) is the checkout's configs.yaml: a symlink to it
  (copied into the wheel), so the two cannot drift apart."""
  package_copy = REPO / 'dreamerv2_tf' / 'configs.yaml'
  assert package_copy.is_symlink() and os.readlink(package_copy) == '../configs.yaml'
  assert filecmp.cmp(package_copy, REPO / 'configs.yaml', shallow=False)
  from dreamerv2_tf import config
  assert config.CONFIGS_PATH.resolve() == (REPO / 'configs.yaml').resolve()


def test_pyproject_scripts_and_pins_match_requirements():
  import tomllib
  project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
  assert sorted(project['scripts']) == sorted(SCRIPTS)
  pins = {}
  for line in (REPO / 'requirements.txt').read_text().splitlines():
    line = line.split('#')[0].strip()
    if '==' in line:
      name, version = line.split('==')
      pins[name.strip().lower()] = version.strip()
  declared = list(project['dependencies'])
  for extra in project['optional-dependencies'].values():
    declared += extra
  for requirement in declared:
    if '==' in requirement:
      name, version = requirement.split('==')
      assert pins.get(name.lower()) == version, f'{requirement} differs from requirements.txt'


def _copy_checkout(dest: pathlib.Path) -> pathlib.Path:
  ignore = shutil.ignore_patterns('.venv', '.git', 'logdir', 'build', '*.egg-info', '__pycache__',
                                  '.pytest_cache')
  shutil.copytree(REPO, dest, symlinks=True, ignore=ignore)
  return dest


def _fresh_venv(path: pathlib.Path) -> pathlib.Path:
  subprocess.run([sys.executable, '-m', 'venv', str(path)], check=True, timeout=300)
  site = subprocess.run(
      [str(path / 'bin' / 'python'), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
      check=True, capture_output=True, text=True).stdout.strip()
  # The dependencies of this interpreter (no network needed), after the venv's own packages.
  pathlib.Path(site, 'dreamerv2_deps.pth').write_text(sysconfig.get_path('purelib') + '\n')
  return path / 'bin'


@pytest.mark.slow
def test_pip_install_gives_working_commands_from_any_folder(tmp_path):
  source = _copy_checkout(tmp_path / 'src')
  bin_dir = _fresh_venv(tmp_path / 'venv')
  subprocess.run([str(bin_dir / 'pip'), 'install', '-q', '--no-deps', '--no-build-isolation',
                  str(source)], check=True, timeout=600, capture_output=True)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH='')
  for script in SCRIPTS:
    out = subprocess.run([str(bin_dir / script), '--help'], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (script, out.stderr[-2000:])
    assert 'usage' in (out.stdout + out.stderr).lower(), script
  installed = subprocess.run(
      [str(bin_dir / 'python'), '-c', 'import dreamerv2_tf, dreamerv2_tf.config as c, '
       'dreamerv2_tf.parity.scores as s; print(dreamerv2_tf.__file__); print(c.CONFIGS_PATH); '
       'print(sorted(p.name for p in s.PACKAGE_DIR.iterdir()))'],
      cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
  assert str(tmp_path / 'venv') in installed[0]
  assert filecmp.cmp(installed[1], REPO / 'configs.yaml', shallow=False)
  assert 'atari-dreamerv2.json.gz' in installed[2]
  run = subprocess.run(
      [str(bin_dir / 'dreamerv2-train'), '--configs', 'atari', 'debug', '--steps=400',
       '--prefill=100', '--eval_every=400', '--log_every=50'],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1200)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  logdir = elsewhere / 'logdir' / 'atari_pong'
  assert (logdir / 'config.yaml').is_file()
  assert list((logdir / 'checkpoints').glob('*.index'))
  lines = [json.loads(line) for line in (logdir / 'metrics.jsonl').read_text().splitlines()]
  assert any('model_loss' in line for line in lines)
