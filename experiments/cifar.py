"""Train and evaluate a CNN on CIFAR: the only place that reads flags.

  python experiments/cifar.py --workdir=/tmp/run \
    --config=experiments/configs/default.py --config.num_epochs=2

Rerunning the same command resumes from the workdir's latest checkpoint.

Exit codes:
  0    training finished (or had finished before)
  1    any other error (Python traceback)
  2    invalid flags or config: an unknown config field, model or data source, or a data path
       that does not exist (checked before anything is written to the workdir)
  3    the workdir holds checkpoints of another config (the message lists the differences)
  4    --checkpoint does not exist or holds no complete checkpoint
  5    writing to the workdir failed (permission, disk full); the last good checkpoint is kept
  6    the loss became NaN or infinite (the message names the step and the last good checkpoint)
  7    the latest checkpoint cannot be read although its config matches (damaged or incomplete;
       the message names the folder to move away)
  130  stopped by SIGINT after saving a checkpoint (143 for SIGTERM): rerun to resume
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

# Make `cnn_jax` importable when the script runs from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnn_jax import checkpoints, data, models, train  # noqa: E402

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')

EXIT_INVALID_CONFIG = 2


def exit_for_unknown_config_field(error: Exception) -> None:
  """Exit with one line for a --config.<field>=... override of a field the config lacks."""
  # ml_collections raises an AttributeError wrapping a KeyError whose message is the field name,
  # then a newline and a "Did you mean" hint when one is close.
  detail = error
  while isinstance(detail, Exception) and detail.args:
    detail = detail.args[0]
  field, _, hint = str(detail).partition('\n')
  overrides = [arg.split('=')[0] for arg in sys.argv[1:] if arg.startswith('--config.')]
  sentences = [f'Error: unknown config field {field} in {", ".join(overrides)}.', hint,
               f'The fields and their defaults are in the --config file (default: {_CONFIG_DIR}/default.py).']
  print(' '.join(sentence for sentence in sentences if sentence), file=sys.stderr)
  sys.exit(EXIT_INVALID_CONFIG)


_WORKDIR = flags.DEFINE_string('workdir', './workdir', 'Folder for checkpoints and TensorBoard events.')
try:  # Defining the flag already applies the overrides on the command line to the default config.
  _CONFIG = config_flags.DEFINE_config_file(
      'config', os.path.join(_CONFIG_DIR, 'default.py'), 'Training configuration file.', lock_config=True
  )
except (AttributeError, KeyError) as _error:
  exit_for_unknown_config_field(_error)
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None,
    'Start from this checkpoint: a step folder (RUN/checkpoints/<step>, RUN/best/<step>) or a folder '
    'of steps (RUN/checkpoints, latest step). Used only while --workdir has no checkpoint of its own, '
    'so rerunning the same command resumes from the workdir.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False,
    'Delete the checkpoints, best/, config.json and dataset.json already in --workdir and start from step 0.')
_TPU = flags.DEFINE_bool('tpu', False, 'Require a TPU backend; exit with an error when there is none.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Run as one process of a multi-host job: call jax.distributed.initialize(). On Cloud TPU '
    'pod slices and SLURM clusters the coordinator is found automatically; elsewhere set '
    '--coordinator_address, --num_processes and --process_id.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for --distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes, for --distributed.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index, for --distributed.')


def check_tpu_backend() -> None:
  """Exit with one line when --tpu is set and JAX found no TPU."""
  import jax

  try:
    backend = jax.default_backend()
  except RuntimeError as error:
    backend = f'none ({error})'
  if backend != 'tpu':
    sys.exit(
        f'--tpu was set but the JAX backend is {backend}. Install JAX for TPU '
        '(pip install -U "jax[tpu]") on a TPU machine, or drop --tpu.'
    )


EXIT_CONFIG_MISMATCH = 3
EXIT_CHECKPOINT_NOT_FOUND = 4
EXIT_WRITE_FAILED = 5
EXIT_NONFINITE_LOSS = 6
EXIT_CHECKPOINT_DAMAGED = 7
_EXIT_CODES = (  # Checked in order: the first matching class wins.
    (data.DataSourceError, EXIT_INVALID_CONFIG),
    (models.UnknownModelError, EXIT_INVALID_CONFIG),
    (checkpoints.ConfigMismatchError, EXIT_CONFIG_MISMATCH),
    (checkpoints.CheckpointNotFoundError, EXIT_CHECKPOINT_NOT_FOUND),
    (checkpoints.CheckpointWriteError, EXIT_WRITE_FAILED),
    (FloatingPointError, EXIT_NONFINITE_LOSS),
    (checkpoints.CheckpointReadError, EXIT_CHECKPOINT_DAMAGED),
)


def run(config, workdir: str, checkpoint: str | None = None, overwrite: bool = False) -> int:
  """Train, and turn the expected ways a run ends into a message and an exit code."""
  try:
    train.train_and_evaluate(config, workdir, checkpoint=checkpoint, overwrite=overwrite)
  except checkpoints.TrainingInterrupted as stopped:
    logging.info('%s', stopped)
    return 128 + stopped.signum
  except tuple(error_class for error_class, _ in _EXIT_CODES) as error:
    print(f'Error: {error}', file=sys.stderr, flush=True)
    return next(code for error_class, code in _EXIT_CODES if isinstance(error, error_class))
  return 0


def parse_flags(argv: list[str]) -> list[str]:
  """Parse the flags; an override of a config field that does not exist exits with one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    exit_for_unknown_config_field(error)
  except flags.Error as error:  # An invalid flag value, as absl's own parser reports it.
    print(f'Error: {error}. Pass --helpfull to see every flag.', file=sys.stderr)
    sys.exit(EXIT_INVALID_CONFIG)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stdout, force=True)
  # Orbax logs every save step at INFO through absl; keep its warnings only.
  logging.getLogger('absl').setLevel(logging.WARNING)
  # JAX logs each platform it could not load (no libtpu on a CPU machine) at INFO.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  if _DISTRIBUTED.value:
    import jax

    # Must run before anything else touches the devices.
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR_ADDRESS.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    if jax.process_index() != 0:
      # Only process 0 logs; the others still report warnings and errors.
      logging.getLogger().setLevel(logging.WARNING)
  if _TPU.value:
    check_tpu_backend()
  code = run(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value, _OVERWRITE.value)
  if code == EXIT_WRITE_FAILED:
    # Orbax's background save threads wait minutes on a failed write before they give up. The
    # message is out and the last good checkpoint is complete, so exit without joining them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  return code


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
