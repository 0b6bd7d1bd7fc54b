"""Report a recipe's training compute: FLOPs per example, total FLOPs, achieved FLOP/s.

  python scripts/compute_report.py --config=experiments/configs/airbench94.py
  python scripts/compute_report.py --config=experiments/configs/airbench94.py \
    --workdir=/tmp/runs/airbench94_seed0
  python scripts/compute_report.py --config=experiments/configs/resnet18.py --time_steps=3

FLOPs come from XLA's cost analysis of the compiled train step (and eval step)
at the config's batch size, so they count what the compiled program does
(a multiply-add is 2 FLOPs), for the backend it runs on. Totals assume the
config's data set size (--num_train, --num_test; CIFAR's by default) and
include the per-epoch evaluations and the final test-time-augmented one.
Achieved FLOP/s is the total over the run's measured time: the sum of
`epoch_seconds` in the workdir's TensorBoard events (train and eval time,
without compilation), or, with --time_steps, the train step timed here.
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

# Make `cnn_jax` importable when the script runs from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments', 'configs',
                           'default.py'), 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', '', 'A finished run of this config: its epoch_seconds give FLOP/s.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 50_000, 'Training examples per epoch.')
_NUM_TEST = flags.DEFINE_integer('num_test', 10_000, 'Test examples per evaluation.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 10, 'Number of classes.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Image height and width.')
_TIME_STEPS = flags.DEFINE_integer('time_steps', 0, 'Time this many train steps here (after one warm-up step).')
_OUTPUT = flags.DEFINE_string('output', '', 'Also write the report as JSON to this file.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from cnn_jax import compute

  report = compute.compute_report(_CONFIG.value, _NUM_TRAIN.value, _NUM_TEST.value, _NUM_CLASSES.value,
                                  _IMAGE_SIZE.value, _WORKDIR.value, _TIME_STEPS.value)
  print(compute.format_report(report))
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  app.run(main)
