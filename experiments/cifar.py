"""Train and evaluate a CNN on CIFAR: the only place that reads flags.

  python experiments/cifar.py --workdir=/tmp/run \
    --config=experiments/configs/default.py --config.num_epochs=2
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

# Make `cnn_jax` importable when the script runs from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnn_jax import train  # noqa: E402

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')

_WORKDIR = flags.DEFINE_string('workdir', './workdir', 'Folder for checkpoints and TensorBoard events.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_CONFIG_DIR, 'default.py'), 'Training configuration file.', lock_config=True
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stdout, force=True)
  # Orbax logs every save step at INFO through absl; keep its warnings only.
  logging.getLogger('absl').setLevel(logging.WARNING)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
