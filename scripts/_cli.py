"""Helpers shared by the command-line tools: model arguments and quiet logging."""

import argparse
import logging
import sys

# Exit codes: 0 all done, 1 some inputs failed (others succeeded), 2 nothing
# could run (bad arguments, no model).
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', help='Workdir of a training run (experiments/cifar.py --workdir).')
  parser.add_argument(
      '--checkpoint',
      help='A checkpoint step folder (WORKDIR/best/<step>) or a folder of steps '
      '(WORKDIR/checkpoints, latest step); its workdir is two levels up unless --workdir is given.',
  )
  parser.add_argument(
      '--latest', action='store_true',
      help='Use the latest checkpoint instead of the best one (ignored with --checkpoint).',
  )


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if not args.workdir and not args.checkpoint:
    parser.error('give --workdir or --checkpoint')


def setup_logging(verbose: bool = False) -> None:
  logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format='%(message)s',
                      stream=sys.stderr, force=True)
  # Orbax warns through absl about metadata that restoring does not need.
  logging.getLogger('absl').setLevel(logging.ERROR)


def load_model(args: argparse.Namespace):
  from cnn_jax import inference

  return inference.load_trained_model(
      args.workdir, args.checkpoint, 'latest' if args.latest else 'best')
