"""Metric sums to means, and the writers: console lines and TensorBoard."""

import json
import logging
import math
import os
import sys
from typing import Mapping, Sequence, TextIO

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


class Writers:
  """Console lines in the PyTorch-tutorial style plus TensorBoard scalars.

  Only process 0 writes, so multi-host runs log once.
  """

  def __init__(self, workdir: str | None, config: ml_collections.ConfigDict | None = None,
               stream: TextIO = sys.stdout, process_index: int = 0):
    self._stream = stream
    self._active = process_index == 0
    self._tensorboard = None
    if self._active and workdir:
      from tensorboardX import SummaryWriter  # Imported here: optional in tests.

      self._tensorboard = SummaryWriter(logdir=os.fspath(workdir))
      if config is not None:
        self._tensorboard.add_text('config', '```\n' + config.to_json(indent=2) + '\n```', 0)

  def _print(self, line: str) -> None:
    if self._active:
      print(line, file=self._stream, flush=True)

  def console_progress(self, epoch: int, seen: int, total: int, loss: float) -> None:
    self._print(f'Train Epoch: {epoch} [{seen}/{total} ({100.0 * seen / total:.0f}%)]\tLoss: {loss:.6f}')

  def write_epoch(self, epoch: int, step: int, summary: Mapping[str, float]) -> None:
    """Print the epoch line and write every value in `summary` to TensorBoard."""
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

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def create_writers(workdir: str, config: ml_collections.ConfigDict) -> Writers:
  import jax

  return Writers(workdir, config, process_index=jax.process_index())
