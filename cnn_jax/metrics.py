"""Metric sums to means, and the writers: console, TensorBoard, optional W&B."""

import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

import ml_collections
import numpy as np

logger = logging.getLogger(__name__)


def means(sums: Sequence[Mapping[str, np.ndarray]]) -> dict[str, float]:
  """Mean loss and accuracy from per-batch sums of loss, correct and count."""
  loss_sum = sum(float(s['loss_sum']) for s in sums)
  correct = sum(float(s['correct']) for s in sums)
  count = sum(float(s['count']) for s in sums)
  if count == 0:
    return {'loss': float('nan'), 'accuracy': float('nan'), 'count': 0}
  return {'loss': loss_sum / count, 'accuracy': correct / count, 'count': int(count)}


def check_finite(loss: float, step: int, last_checkpoint_step: int | None) -> None:
  """Raise FloatingPointError when the loss is NaN or infinite."""
  if math.isfinite(loss):
    return
  kept = (
      f'the last good checkpoint (step {last_checkpoint_step}) is kept'
      if last_checkpoint_step is not None
      else 'no checkpoint was saved yet'
  )
  raise FloatingPointError(
      f'Loss is {loss} at step {step}; stopping. {kept}. Lower the learning '
      'rate or check the input data.'
  )


def flat_hparams(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
  """The config as {'optimizer.learning_rate': 0.001, ...} with TensorBoard-friendly values."""
  flat = {}

  def visit(prefix: str, value: Any) -> None:
    if isinstance(value, Mapping):
      for key, child in value.items():
        visit(f'{prefix}{key}.', child)
    elif isinstance(value, (bool, int, float, str)):
      flat[prefix[:-1]] = value
    else:
      flat[prefix[:-1]] = str(value)

  visit('', config.to_dict())
  return flat


def _format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds + 0.5), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes}:{seconds:02d}'


class ProgressBar:
  """One line per epoch, redrawn in place: bar, images, images/s, ETA and the last loss.

  NOTE: JAX dispatches steps asynchronously, so between the synchronizing
  loss readouts the count runs slightly ahead of the finished computation.
  """

  def __init__(self, stream: TextIO, width: int = 30, min_interval: float = 0.1,
               clock: Callable[[], float] = time.perf_counter):
    self._stream, self._width, self._min_interval, self._clock = stream, width, min_interval, clock
    self._epoch = None
    self._open = False

  def update(self, epoch: int, seen: int, total: int, loss: float | None = None,
             force: bool = False) -> None:
    now = self._clock()
    if epoch != self._epoch:
      self.finish()
      self._epoch, self._start, self._start_seen, self._loss, self._drawn = epoch, now, seen, None, None
    if loss is not None:
      self._loss = loss
    if not force and self._drawn is not None and now - self._drawn < self._min_interval and seen < total:
      return
    self._drawn = now
    elapsed = now - self._start
    rate = (seen - self._start_seen) / elapsed if elapsed > 0 else 0.0
    filled = int(self._width * seen / total) if total else self._width
    line = f'Epoch {epoch} [{"#" * filled}{"." * (self._width - filled)}] {seen}/{total}'
    if rate > 0:
      line += f' | {rate:,.0f} img/s | ETA {_format_duration((total - seen) / rate)}'
    if self._loss is not None:
      line += f' | loss {self._loss:.4f}'
    self._stream.write('\r' + line + '\x1b[K')  # \x1b[K clears what a longer line left.
    self._stream.flush()
    self._open = True

  def finish(self) -> None:
    """End the current line so that the next output starts on its own."""
    if self._open:
      self._stream.write('\n')
      self._stream.flush()
      self._open = False


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False


class Writers:
  """Console output, TensorBoard scalars and hyperparameters, and optionally W&B.

  The console gets a progress bar with images/s and ETA when `stream` is a
  terminal (or `progress_bar=True`), and the PyTorch-tutorial lines otherwise,
  so CI logs stay plain. Only process 0 writes, so multi-host runs log once.
  """

  def __init__(self, workdir: str | None, config: ml_collections.ConfigDict | None = None,
               stream: TextIO = sys.stdout, process_index: int = 0,
               progress_bar: bool | None = None):
    self._stream = stream
    self._active = process_index == 0
    self._tensorboard = None
    self._wandb_run = None
    if progress_bar is None:
      progress_bar = _is_terminal(stream)
    self._bar = ProgressBar(stream) if progress_bar and self._active else None
    if self._active and workdir:
      from tensorboardX import SummaryWriter  # Imported here: optional in tests.

      self._tensorboard = SummaryWriter(logdir=os.fspath(workdir))
      if config is not None:
        self._tensorboard.add_text('config', '```\n' + config.to_json(indent=2) + '\n```', 0)
        self._write_hparams(config)
    if self._active and config is not None and config.wandb.enabled:
      self._wandb_run = _start_wandb(config, workdir)

  def _write_hparams(self, config: ml_collections.ConfigDict) -> None:
    """The config in TensorBoard's HParams tab, with the epoch metrics of this run."""
    from tensorboardX.summary import hparams

    metric_tags = ('test_accuracy', 'test_loss', 'train_accuracy', 'train_loss')
    experiment, session_start, _ = hparams(flat_hparams(config), dict.fromkeys(metric_tags, 0.0))
    writer = self._tensorboard.file_writer
    writer.add_summary(experiment)
    writer.add_summary(session_start)

  def _print(self, line: str) -> None:
    if self._active:
      if self._bar is not None:
        self._bar.finish()
      print(line, file=self._stream, flush=True)

  def train_progress(self, epoch: int, seen: int, total: int) -> None:
    """Called after every train step; redraws the progress bar (no-op without one)."""
    if self._bar is not None and self._active:
      self._bar.update(epoch, seen, total)

  def console_progress(self, epoch: int, seen: int, total: int, loss: float) -> None:
    if self._bar is not None:
      if self._active:
        self._bar.update(epoch, seen, total, loss, force=True)
      return
    self._print(f'Train Epoch: {epoch} [{seen}/{total} ({100.0 * seen / total:.0f}%)]\tLoss: {loss:.6f}')

  def write_epoch(self, epoch: int, step: int, summary: Mapping[str, float]) -> None:
    """Print the epoch line and write every value in `summary` to TensorBoard and W&B."""
    self._print(
        f'Epoch: {epoch} | train loss: {summary["train_loss"]:.4f} | '
        f'train acc: {summary["train_accuracy"]:.4f} | test loss: {summary["test_loss"]:.4f} | '
        f'test acc: {summary["test_accuracy"]:.4f}'
    )
    if self._tensorboard is not None:
      for name, value in summary.items():
        self._tensorboard.add_scalar(name, value, epoch)
      self._tensorboard.add_scalar('step', step, epoch)
      self._tensorboard.flush()
    if self._wandb_run is not None:
      self._wandb_run.log({**summary, 'epoch': epoch}, step=step)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.finish()
    if self._tensorboard is not None:
      self._tensorboard.close()
    if self._wandb_run is not None:
      self._wandb_run.finish()


def _start_wandb(config: ml_collections.ConfigDict, workdir: str | None):
  """Start a Weights & Biases run; wandb is imported only here."""
  try:
    import wandb
  except ImportError as error:
    raise ImportError(
        'config.wandb.enabled=True needs the wandb package: pip install -e ".[wandb]", '
        'or set --config.wandb.enabled=False.'
    ) from error
  options = config.wandb
  return wandb.init(
      project=options.project,
      entity=options.entity or None,
      name=options.name or None,
      mode=options.mode,
      dir=os.fspath(workdir) if workdir else None,
      config=config.to_dict(),
  )


def create_writers(workdir: str, config: ml_collections.ConfigDict) -> Writers:
  import jax

  return Writers(workdir, config, process_index=jax.process_index())
