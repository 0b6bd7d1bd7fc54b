"""Orbax checkpoints of the train state: the latest K, and the best by a metric."""

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


def _savable(state) -> dict[str, Any]:
  """The array part of a train state; `apply_fn` and `tx` are rebuilt from the config."""
  return {
      'step': state.step,
      'params': state.params,
      'batch_stats': state.batch_stats,
      'opt_state': state.opt_state,
  }


class Checkpointer:
  """Saves to WORKDIR/checkpoints (latest K) and WORKDIR/best (best by metric)."""

  def __init__(self, workdir: str, checkpoint_config: ml_collections.ConfigDict):
    self._metric = checkpoint_config.best_metric
    self._mode = checkpoint_config.best_mode
    workdir = os.path.abspath(workdir)
    self.latest_manager = ocp.CheckpointManager(
        os.path.join(workdir, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=checkpoint_config.keep, create=True),
    )
    self.best_manager = ocp.CheckpointManager(
        os.path.join(workdir, 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1,
            best_fn=lambda summary: summary[self._metric],
            best_mode=self._mode,
            create=True,
        ),
    )

  def latest_step(self) -> int | None:
    return self.latest_manager.latest_step()

  def best_metric(self) -> float | None:
    """The chosen metric of the best checkpoint so far, or None."""
    step = self.best_manager.best_step()
    if step is None:
      return None
    return self.best_manager.metrics(step)[self._metric]

  def save(self, step: int, state, summary: dict[str, float]) -> None:
    """Save `state` as the latest checkpoint and offer it as the best one."""
    savable = _savable(state)
    self.latest_manager.save(step, args=ocp.args.StandardSave(savable))
    self.best_manager.save(step, args=ocp.args.StandardSave(savable), metrics=dict(summary))

  def restore_latest(self, state):
    """Return `state` restored from the latest checkpoint, or `state` unchanged."""
    step = self.latest_manager.latest_step()
    if step is None:
      logger.info('No checkpoint in %s; starting from scratch.', self.latest_manager.directory)
      return state
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(state))
    restored = self.latest_manager.restore(step, args=ocp.args.StandardRestore(target))
    logger.info('Resumed from the checkpoint at step %d.', step)
    return state.replace(**restored)

  def close(self) -> None:
    """Finish pending asynchronous saves and release the managers."""
    self.latest_manager.wait_until_finished()
    self.best_manager.wait_until_finished()
    self.latest_manager.close()
    self.best_manager.close()
