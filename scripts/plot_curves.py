"""Plot the training curves of a workdir as a PNG.

  python scripts/plot_curves.py --workdir=runs/simple_cnn

Reads the TensorBoard events in the workdir and draws train and test loss and
accuracy per epoch into WORKDIR/training_curves.png (or --output). Training
writes the same plot when it finishes; this redraws it at any time, also
during a run.
"""

import argparse
import os
import sys

# Make `cnn_jax` and `scripts` importable when the script runs from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import _cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='Workdir of a training run.')
  parser.add_argument('--output', help='PNG path (default WORKDIR/training_curves.png).')
  args = parser.parse_args(argv)

  from cnn_jax import report

  if not os.path.isdir(args.workdir):
    print(f'plot_curves.py: error: workdir {args.workdir!r} not found', file=sys.stderr)
    return _cli.EXIT_ERROR
  path = report.write_training_curves(args.workdir, args.output)
  if path is None:
    print(f'plot_curves.py: error: no epoch results in the TensorBoard events of {args.workdir!r}',
          file=sys.stderr)
    return _cli.EXIT_ERROR
  print(f'Training curves written to {path}')
  return _cli.EXIT_OK


if __name__ == '__main__':
  sys.exit(main())
