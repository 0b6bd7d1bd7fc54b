"""Orbax checkpoints that survive crashes: exact resume, the latest K, the best by a metric.

A workdir holds:

    config.json          the config of the run; a rerun with another config is refused
    dataset.json         class names and input shape (cnn_jax.inference)
    checkpoints/<step>/  the latest `keep` checkpoints (every N steps, at epoch ends, on SIGTERM/SIGINT)
    best/<step>/         the checkpoint with the best `best_metric`, and its metrics

Orbax writes each step under a temporary name (`<step>.orbax-checkpoint-tmp`) and renames it when
complete, so a folder left by a killed save is never taken for a checkpoint; such folders are removed
when a run starts. Arrays are saved with their global shapes, so a checkpoint written on one device
count restores on any other.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'
DATASET_FILE = 'dataset.json'  # Class names and input shape, written by cnn_jax.inference.
LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'
_TMP_MARKER = '.orbax-checkpoint-tmp'

# Config fields a resumed run may change: they decide how a run is logged, evaluated and saved, how
# long it runs (max_steps) or where its data is read from, not the path of the parameters. A name
# ending in '.' stands for a whole section. Fields that exist on one side only (the code gained or
# lost an option since the checkpoints were written) are logged, not refused.
RESUMABLE_CHANGES = frozenset({
    'wandb.',
    'max_steps',
    'log_every_steps',
    'cpu_fast_path',  # Same results to float32 rounding; only the speed differs.
    'eval_batch_size',
    'data.data_dir',
    'data.cache_dir',
    'data.download',
    'checkpoint.every_steps',
    'checkpoint.every_epoch',
    'checkpoint.keep',
    'checkpoint.async_save',
})


class CheckpointError(Exception):
  """A workdir or checkpoint that cannot be used or written; the message says why."""


class ConfigMismatchError(CheckpointError):
  """The workdir's checkpoints belong to another config."""


class CheckpointReadError(CheckpointError):
  """A checkpoint of the workdir's own config that cannot be read: damaged or incomplete."""


def error_summary(error: Exception, max_chars: int = 300) -> str:
  """Return `error`'s message on one line, cut to `max_chars` (TensorStore errors span pages)."""
  detail = ' '.join(str(error).split())
  return detail if len(detail) <= max_chars else detail[:max_chars] + ' ...'


def damaged_checkpoint_message(path: str, error: Exception) -> str:
  """Build the message for a checkpoint that fails to load although its config matches."""
  return (f'The checkpoint {path} could not be read ({type(error).__name__}: {error_summary(error)}). '
          'Its config matches, so the folder is damaged or incomplete (an interrupted copy, a disk '
          f'error, a folder that is not a checkpoint). Move or delete {path} to go on from the '
          'checkpoint before it, or start a new --workdir.')


class CheckpointNotFoundError(CheckpointError):
  """An explicit checkpoint path that does not exist or holds no complete checkpoint."""


class CheckpointWriteError(CheckpointError):
  """Writing to the workdir failed (permission denied, disk full, ...)."""


class TrainingInterrupted(Exception):
  """SIGTERM or SIGINT stopped training after a checkpoint of `step` was saved."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum = signum
    self.step = step
    super().__init__(
        f'Stopped by {signal.Signals(signum).name} at step {step}; the checkpoint is in '
        f'{os.path.join(directory, str(step))}. Rerun the same command to resume.'
    )


def _savable(state) -> dict[str, Any]:
  """Every array field of a train state (step, params, opt_state, batch_stats, ...).

  `apply_fn` and `tx` are not arrays; they are rebuilt from the config.
  """
  return {
      field.name: getattr(state, field.name)
      for field in dataclasses.fields(state)
      if field.metadata.get('pytree_node', True)
  }


@jax.jit
def _all_finite(tree) -> jax.Array:
  """True when no float in `tree` is NaN or infinite; one compilation, one result to fetch."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _step_dirs(directory: str) -> list[int]:
  """The complete checkpoint steps in `directory` (temporary folders have no integer name)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


ABSENT = '<absent>'


def config_differences(stored: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (stored value, current value)} for every field that differs; ABSENT where missing."""
  stored, current = _flatten(stored), _flatten(current)
  return {
      key: (stored.get(key, ABSENT), current.get(key, ABSENT))
      for key in sorted(stored.keys() | current.keys())
      if stored.get(key, ABSENT) != current.get(key, ABSENT)
  }


def _may_change_on_resume(field: str, old: Any, new: Any) -> bool:
  """Run settings may change; so may fields that a code update added or removed."""
  return ABSENT in (old, new) or field in RESUMABLE_CHANGES or any(
      name.endswith('.') and field.startswith(name) for name in RESUMABLE_CHANGES)


def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _write_json(path: str, value: dict) -> None:
  """Write `path` through a temporary file and a rename, so a crash leaves the old file or the new."""
  temporary = path + '.tmp'
  with open(temporary, 'w') as f:
    json.dump(value, f, indent=2)
    f.write('\n')
  os.replace(temporary, path)


def find_checkpoint(path: str) -> tuple[str, int]:
  """Return (folder of steps, step) for a step folder (RUN/checkpoints/140) or a folder of steps.

  A folder of steps gives its latest complete step. Raises CheckpointNotFoundError when `path` does
  not exist or holds no complete checkpoint.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise CheckpointNotFoundError(f'The checkpoint path {path} does not exist.')
  name = os.path.basename(path)
  if name.isdigit():
    directory, step = os.path.dirname(path), int(name)
  else:
    steps = _step_dirs(path)
    directory, step = path, (steps[-1] if steps else None)
  if step is None or step not in _step_dirs(directory):
    raise CheckpointNotFoundError(
        f'The checkpoint path {path} holds no complete checkpoint. Pass a step folder such as '
        f'WORKDIR/{LATEST_DIR}/<step>, or a folder of steps such as WORKDIR/{LATEST_DIR}.'
    )
  return directory, step


class Checkpointer:
  """The latest K checkpoints in WORKDIR/checkpoints and the best one in WORKDIR/best.

  Creating it checks the workdir before any training: its stored config must match `config` (up to
  RESUMABLE_CHANGES), an explicit `restore_from` must hold a checkpoint, and the workdir must be
  writable. `overwrite=True` first deletes the workdir's checkpoints, config and dataset.json. Use
  it as a context manager: leaving waits for asynchronous saves to finish.
  """

  def __init__(
      self,
      workdir: str,
      config: ml_collections.ConfigDict,
      *,
      restore_from: str | None = None,
      overwrite: bool = False,
  ):
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    self.directory = os.path.join(self.workdir, LATEST_DIR)
    self.best_directory = os.path.join(self.workdir, BEST_DIR)
    options = config.checkpoint
    if options.best_mode not in ('max', 'min'):
      raise ValueError(f'config.checkpoint.best_mode={options.best_mode!r}; use max or min.')
    self._metric, self._mode = options.best_metric, options.best_mode
    self._source = find_checkpoint(restore_from) if restore_from else None
    if overwrite:
      with self._write_errors('clear the workdir'):
        self._remove_previous_run()
    self._check_config(config)
    self._remove_incomplete_saves()

    with self._write_errors('open the checkpoint folders in'):
      self.latest_manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=options.keep, create=True, enable_async_checkpointing=options.async_save
          ),
      )
      # Synchronous, and written before the latest checkpoint of the same step: a crash between
      # the two then leaves a latest checkpoint whose evaluation is already offered to best/.
      self.best_manager = ocp.CheckpointManager(
          self.best_directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1,
              best_fn=lambda summary: summary[self._metric],
              best_mode=self._mode,
              create=True,
              enable_async_checkpointing=False,
          ),
      )
    best_step = self.best_manager.best_step()
    self._best_value = None if best_step is None else self.best_manager.metrics(best_step)[self._metric]
    self._closed = False

  @contextlib.contextmanager
  def _write_errors(self, what: str, step: int | None = None) -> Iterator[None]:
    """Turn any failure of Orbax or the file system into a CheckpointWriteError naming the path."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as error:  # Orbax re-raises background write errors as ValueError and others.
      target = self.workdir if step is None else os.path.join(self.directory, str(step))
      steps = _step_dirs(self.directory)
      kept = (
          f'The last complete checkpoint, {os.path.join(self.directory, str(steps[-1]))}, is intact.'
          if steps else 'No complete checkpoint was written before.'
      )
      raise CheckpointWriteError(f'Could not {what} {target}: {error}. {kept}') from error

  def _remove_previous_run(self) -> None:
    removed = []
    for name in (LATEST_DIR, BEST_DIR, CONFIG_FILE, DATASET_FILE):
      path = os.path.join(self.workdir, name)
      if self._source and Path(path) in (Path(self._source[0]), *Path(self._source[0]).parents):
        raise CheckpointError(
            f'The checkpoint to start from, {self._source[0]}, lies in {path}, which overwriting '
            'would delete. Copy it elsewhere first.'
        )
      if os.path.isdir(path):
        shutil.rmtree(path)
        removed.append(name + '/')
      elif os.path.exists(path):
        os.remove(path)
        removed.append(name)
    if removed:
      logger.info('Overwrite: removed %s from %s.', ', '.join(removed), self.workdir)

  def _check_config(self, config: ml_collections.ConfigDict) -> None:
    """Refuse a workdir whose checkpoints come from another config; store `config` beside them."""
    path = os.path.join(self.workdir, CONFIG_FILE)
    current = _config_json(config)
    has_checkpoints = bool(_step_dirs(self.directory) or _step_dirs(self.best_directory))
    fresh_start = 'Use a new --workdir, or pass --overwrite to delete its checkpoints and start fresh.'
    if has_checkpoints and not os.path.isfile(path):
      raise ConfigMismatchError(
          f'{self.workdir} holds checkpoints but no {CONFIG_FILE}, so their config is unknown. '
          + fresh_start
      )
    if has_checkpoints:
      with open(path) as f:
        differences = config_differences(json.load(f), current)
      refused = {k: v for k, v in differences.items() if not _may_change_on_resume(k, *v)}
      if refused:
        lines = ''.join(f'\n  {k}: {old!r} there, {new!r} now' for k, (old, new) in refused.items())
        raise ConfigMismatchError(
            f'{self.workdir} holds checkpoints of another config ({path}):{lines}\n'
            f'Rerun with the stored values to resume. {fresh_start}'
        )
      if differences:
        logger.info('Changed since the stored config: %s.', ', '.join(
            f'{k} {old!r} -> {new!r}' for k, (old, new) in differences.items()))
    if jax.process_index() == 0:
      with self._write_errors('write to the workdir'):
        os.makedirs(self.workdir, exist_ok=True)
        _write_json(path, current)

  def _remove_incomplete_saves(self) -> None:
    """Delete temporary folders of saves that never finished; Orbax ignores them anyway."""
    for directory in (self.directory, self.best_directory):
      if jax.process_index() != 0 or not os.path.isdir(directory):
        continue
      leftovers = sorted(name for name in os.listdir(directory) if _TMP_MARKER in name)
      for name in leftovers:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      if leftovers:
        logger.info('Removed incomplete checkpoint folders of an interrupted save in %s: %s.',
                    directory, ', '.join(leftovers))

  def latest_step(self) -> int | None:
    return self.latest_manager.latest_step()

  def best_metric(self) -> float | None:
    """The chosen metric of the best checkpoint so far, or None."""
    return self._best_value

  def restore(self, state, steps_per_epoch: int) -> tuple[Any, dict[str, float] | None]:
    """Return `state` restored from the latest checkpoint, and the train-metric sums of its epoch.

    The workdir's own latest checkpoint comes first, then `restore_from`; with neither, `state` is
    returned unchanged with None. Logs one line either way.
    """
    step = self.latest_manager.latest_step()
    if step is not None:
      manager, origin = self.latest_manager, ''
      if self._source:
        origin = f' (its own checkpoints come before --checkpoint {self._source[0]})'
    elif self._source:
      manager = ocp.CheckpointManager(
          self._source[0], options=ocp.CheckpointManagerOptions(read_only=True, create=False))
      step, origin = self._source[1], ' (given by --checkpoint)'
    else:
      logger.info('Fresh start: no checkpoint in %s.', self.directory)
      return state, None

    path = os.path.join(str(manager.directory), str(step))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(state))
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(target))
      custom = manager.metadata(step).custom_metadata or {}
    except Exception as error:  # Orbax and TensorStore raise ValueError, OSError and bare Exception.
      if self._source and manager is not self.latest_manager:
        # Another workdir's checkpoint: its config was not compared with this one.
        raise ConfigMismatchError(
            f'The checkpoint {path} does not fit the model and optimizer of this config: {error}'
        ) from error
      raise CheckpointReadError(damaged_checkpoint_message(path, error)) from error
    finally:
      if manager is not self.latest_manager:
        manager.close()
    epoch, batch = divmod(step, steps_per_epoch)
    logger.info('Resuming from %s%s: step %d, epoch %d, next batch %d of %d.',
                path, origin, step, epoch + 1, batch + 1, steps_per_epoch)
    return state.replace(**restored), custom.get('epoch_train_sums')

  def save(self, step: int, state, epoch_train_sums: dict[str, float] | None = None) -> None:
    """Save `state` as the latest checkpoint (asynchronously with `async_save`).

    `epoch_train_sums` are the train-metric sums of an unfinished epoch, so that a resumed run
    reports the same epoch means. A step that is already saved is skipped.
    """
    if step == self.latest_manager.latest_step():
      return
    if not _all_finite(_savable(state)):
      # A finite loss can still come with an update that overflowed; such a state is no checkpoint.
      raise FloatingPointError(
          f'The train state holds NaN or infinite values at step {step}; stopping. The last good '
          f'checkpoint (step {self.latest_manager.latest_step()}) is kept. Lower the learning rate.'
      )
    with self._write_errors('finish the checkpoint', self.latest_manager.latest_step()):
      self.latest_manager.wait_until_finished()
    with self._write_errors('write the checkpoint', step):
      self.latest_manager.save(
          step,
          args=ocp.args.StandardSave(_savable(state)),
          custom_metadata={'epoch_train_sums': epoch_train_sums},
          force=True,
      )

  def offer_best(self, step: int, state, summary: dict[str, float]) -> bool:
    """Save `state` to best/ when `summary[best_metric]` beats the best so far; True if it did."""
    if self._metric not in summary:
      raise ValueError(
          f'config.checkpoint.best_metric={self._metric!r} is not an epoch metric. '
          f'Valid: {", ".join(sorted(summary))}.'
      )
    value = summary[self._metric]
    if not math.isfinite(value):
      return False
    if self._best_value is not None and not (
        value > self._best_value if self._mode == 'max' else value < self._best_value):
      return False
    if step in self.best_manager.all_steps():  # Already saved (a resumed run re-evaluating a step).
      return False
    with self._write_errors('write the best checkpoint to', step):
      self.best_manager.save(step, args=ocp.args.StandardSave(_savable(state)), metrics=dict(summary))
    self._best_value = value
    return True

  def close(self) -> None:
    """Finish pending asynchronous saves and release the managers."""
    if self._closed:
      return
    self._closed = True
    with self._write_errors('finish the checkpoint', self.latest_manager.latest_step()):
      self.latest_manager.close()
    self.best_manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    if exc is None:
      self.close()
      return
    try:
      self.close()
    except CheckpointError as error:  # Do not hide the error that is already on its way out.
      logger.error('%s', error)


class StopSignals:
  """Records SIGTERM and SIGINT, so the train loop can save a checkpoint and stop between steps.

  A second SIGINT raises KeyboardInterrupt at once. Outside the main thread, where Python cannot
  install signal handlers, nothing is recorded.

  NOTE: in a multi-host run each process reacts to its own signal only; a preemption that signals
  some hosts and not others would leave the others waiting in the collective save. Orbax's
  `reached_preemption` sync point is the fix for that case and is not wired in.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    logger.info('Received %s: saving a checkpoint after this step, then stopping.',
                signal.Signals(signum).name)

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
