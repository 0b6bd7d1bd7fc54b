"""experiments/cifar.py: bad flags and config values end in one line, exit code 2, and no workdir."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

CASES = [
    (['--config.batchsize=8'], "unknown config field 'batchsize' in --config.batchsize. "
                               'Did you mean "batch_size"'),
    (['--config.batch_size=eight'], 'flag --config.batch_size=eight: invalid literal for int()'),
    (['--config.model=resnet50'], "Unknown model 'resnet50'. Valid models: airbench, resnet18"),
    (['--config.data.source=imagefolder'], "Unknown data source 'imagefolder'. Valid: tfds"),
    (['--config.data.source=image_folder', '--config.data.data_dir=/nonexistent/cifar10-jpg'],
     "Image folder '/nonexistent/cifar10-jpg' does not exist."),
]


@pytest.mark.parametrize('arguments, message', CASES, ids=[' '.join(a) for a, _ in CASES])
def test_bad_input_exits_before_writing(tmp_path, arguments, message):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'experiments' / 'cifar.py'), f'--workdir={workdir}', *arguments],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
  )
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()
