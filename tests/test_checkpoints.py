"""The Checkpointer on its own: keep-best, stale temporary folders, config checks, write failures."""

import contextlib
import json
import os
import resource
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import checkpoints, models, optim, train
from experiments.configs import default


def make_config(**checkpoint_fields):
  config = default.get_config()
  config.unlock()
  for name, value in checkpoint_fields.items():
    config.checkpoint[name] = value
  return config


def make_state(config, step: int = 0):
  """A SimpleCNN train state whose parameters and step tell checkpoints apart."""
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  state = train.create_train_state(models.create_model('simple_cnn', 10), tx, jax.random.key(0), (32, 32, 3))
  return state.replace(
      step=jnp.asarray(step, jnp.int32), params=jax.tree.map(lambda p: p + step, state.params))


def summary(test_accuracy: float) -> dict[str, float]:
  return {'train_loss': 1.0, 'train_accuracy': 0.5, 'test_loss': 1.0, 'test_accuracy': test_accuracy}


def steps_in(directory) -> list[int]:
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def assert_same_arrays(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_steps(workdir, config, steps):
  with checkpoints.Checkpointer(workdir, config) as checkpointer:
    for step in steps:
      checkpointer.save(step, make_state(config, step))


def test_keep_best_with_falling_metric_keeps_best_and_latest(tmp_path):
  config = make_config(keep=2)
  with checkpoints.Checkpointer(tmp_path, config) as checkpointer:
    for step, accuracy in [(10, 0.5), (20, 0.4), (30, 0.3), (40, 0.2)]:
      state = make_state(config, step)
      assert checkpointer.offer_best(step, state, summary(accuracy)) == (step == 10)
      checkpointer.save(step, state)

  assert steps_in(tmp_path / 'best') == [10]
  assert steps_in(tmp_path / 'checkpoints') == [30, 40]
  with checkpoints.Checkpointer(tmp_path, config) as checkpointer:
    assert checkpointer.best_metric() == 0.5
    restored, _ = checkpointer.restore(make_state(config), steps_per_epoch=10)
  assert int(restored.step) == 40
  assert_same_arrays(restored.params, make_state(config, 40).params)


def test_best_by_a_minimized_metric(tmp_path):
  config = make_config(best_metric='test_loss', best_mode='min')
  with checkpoints.Checkpointer(tmp_path, config) as checkpointer:
    for step, loss in [(1, 2.0), (2, 1.5), (3, 1.7)]:
      checkpointer.offer_best(step, make_state(config, step), {**summary(0.1), 'test_loss': loss})
    with pytest.raises(ValueError, match="best_metric='test_loss' is not an epoch metric"):
      checkpointer.offer_best(4, make_state(config, 4), {'test_accuracy': 0.5})
  assert steps_in(tmp_path / 'best') == [2]


def test_stale_temporary_folder_is_ignored_and_removed(tmp_path, caplog):
  config = make_config()
  save_steps(tmp_path, config, [10, 20])
  # What a save killed half-way leaves: a temporary folder with part of the files.
  stale = tmp_path / 'checkpoints' / '30.orbax-checkpoint-tmp'
  shutil.copytree(tmp_path / 'checkpoints' / '20', stale)
  (stale / '_CHECKPOINT_METADATA').unlink()
  (tmp_path / 'best' / '30.orbax-checkpoint-tmp').mkdir()

  caplog.set_level('INFO')
  with checkpoints.Checkpointer(tmp_path, config) as checkpointer:
    restored, _ = checkpointer.restore(make_state(config), steps_per_epoch=7)
    checkpointer.save(30, make_state(config, 30))
  assert int(restored.step) == 20
  assert 'Resuming from' in caplog.text and 'step 20, epoch 3, next batch 7 of 7' in caplog.text
  assert 'Removed incomplete checkpoint folders' in caplog.text
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['10', '20', '30']
  assert list((tmp_path / 'best').iterdir()) == []


def truncate_largest_file(folder) -> None:
  largest = max((p for p in folder.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  with open(largest, 'r+b') as f:
    f.truncate(100)


@pytest.mark.parametrize('damage', ['truncated data', 'missing _METADATA', 'junk step folder'])
def test_damaged_latest_checkpoint_is_named_and_kept(tmp_path, damage):
  config = make_config()
  save_steps(tmp_path, config, [10, 20])
  damaged = tmp_path / 'checkpoints' / '20'
  if damage == 'truncated data':
    truncate_largest_file(damaged)
  elif damage == 'missing _METADATA':
    (damaged / 'default' / '_METADATA').unlink()
  else:
    damaged = tmp_path / 'checkpoints' / '999'
    damaged.mkdir()
    (damaged / 'notes.txt').write_text('not a checkpoint')

  with checkpoints.Checkpointer(tmp_path, config) as checkpointer:
    with pytest.raises(checkpoints.CheckpointReadError) as raised:
      checkpointer.restore(make_state(config), steps_per_epoch=7)
  message = str(raised.value)
  assert f'The checkpoint {damaged} could not be read' in message
  assert f'Move or delete {damaged} to go on from the checkpoint before it' in message
  assert damaged.is_dir()
  assert (tmp_path / 'checkpoints' / '10').is_dir()

  shutil.rmtree(damaged)  # The advice in the message: the run then resumes from the step before.
  with checkpoints.Checkpointer(tmp_path, config) as checkpointer:
    restored, _ = checkpointer.restore(make_state(config), steps_per_epoch=7)
  assert int(restored.step) == (20 if damage == 'junk step folder' else 10)


def test_other_config_is_refused_with_the_differences(tmp_path):
  config = make_config()
  save_steps(tmp_path, config, [10])
  stored = (tmp_path / 'config.json').read_text()
  other = make_config()
  other.seed = 1
  other.optimizer.learning_rate = 0.1

  with pytest.raises(checkpoints.ConfigMismatchError) as refused:
    checkpoints.Checkpointer(tmp_path, other)
  message = str(refused.value)
  assert 'seed: 0 there, 1 now' in message
  assert 'optimizer.learning_rate: 0.001 there, 0.1 now' in message
  assert 'max_steps' not in message
  assert '--overwrite' in message and '--workdir' in message
  assert (tmp_path / 'config.json').read_text() == stored
  assert steps_in(tmp_path / 'checkpoints') == [10]


def test_run_settings_may_change_on_resume(tmp_path, caplog):
  config = make_config()
  save_steps(tmp_path, config, [10])
  longer = make_config(keep=5)
  longer.max_steps = 50
  caplog.set_level('INFO')
  with checkpoints.Checkpointer(tmp_path, longer) as checkpointer:
    assert checkpointer.latest_step() == 10
  assert 'max_steps -1 -> 50' in caplog.text
  assert json.loads((tmp_path / 'config.json').read_text())['max_steps'] == 50


def test_fields_added_by_a_code_update_do_not_block_resume(tmp_path, caplog):
  config = make_config()
  save_steps(tmp_path, config, [10])
  stored = json.loads((tmp_path / 'config.json').read_text())
  del stored['checkpoint']['async_save']
  stored['retired_option'] = 1
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  caplog.set_level('INFO')
  with checkpoints.Checkpointer(tmp_path, config) as checkpointer:
    assert checkpointer.latest_step() == 10
  assert "checkpoint.async_save '<absent>' -> True" in caplog.text
  assert "retired_option 1 -> '<absent>'" in caplog.text


def test_overwrite_starts_fresh(tmp_path):
  config = make_config()
  save_steps(tmp_path, config, [10])
  other = make_config()
  other.seed = 1
  with checkpoints.Checkpointer(tmp_path, other, overwrite=True) as checkpointer:
    assert checkpointer.latest_step() is None
    state, epoch_sums = checkpointer.restore(make_state(other), steps_per_epoch=10)
  assert int(state.step) == 0 and epoch_sums is None
  assert steps_in(tmp_path / 'checkpoints') == []
  assert json.loads((tmp_path / 'config.json').read_text())['seed'] == 1


def test_checkpoints_without_a_stored_config_are_refused(tmp_path):
  config = make_config()
  save_steps(tmp_path, config, [10])
  (tmp_path / 'config.json').unlink()
  with pytest.raises(checkpoints.ConfigMismatchError, match='no config.json'):
    checkpoints.Checkpointer(tmp_path, config)


def test_explicit_checkpoint_must_exist_and_hold_a_checkpoint(tmp_path):
  config = make_config()
  with pytest.raises(checkpoints.CheckpointNotFoundError, match='does not exist'):
    checkpoints.Checkpointer(tmp_path / 'run', config, restore_from=str(tmp_path / 'missing'))
  (tmp_path / 'empty' / '7.orbax-checkpoint-tmp').mkdir(parents=True)
  with pytest.raises(checkpoints.CheckpointNotFoundError, match='holds no complete checkpoint'):
    checkpoints.Checkpointer(tmp_path / 'run', config, restore_from=str(tmp_path / 'empty'))
  assert not (tmp_path / 'run').exists()


def test_explicit_checkpoint_starts_a_new_workdir(tmp_path, caplog):
  config = make_config()
  save_steps(tmp_path / 'old', config, [10, 20])
  caplog.set_level('INFO')
  for path, step in [('old/checkpoints', 20), ('old/checkpoints/10', 10)]:
    with checkpoints.Checkpointer(tmp_path / 'new', config, restore_from=str(tmp_path / path)) as checkpointer:
      restored, _ = checkpointer.restore(make_state(config), steps_per_epoch=10)
    assert int(restored.step) == step
    assert_same_arrays(restored.params, make_state(config, step).params)
  assert 'given by --checkpoint' in caplog.text

  # Once the new workdir has a checkpoint of its own, a rerun resumes from it.
  save_steps(tmp_path / 'new', config, [15])
  with checkpoints.Checkpointer(tmp_path / 'new', config, restore_from=str(tmp_path / 'old/checkpoints')) as checkpointer:
    restored, _ = checkpointer.restore(make_state(config), steps_per_epoch=10)
  assert int(restored.step) == 15


def test_unwritable_workdir_is_reported_with_its_path(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  workdir = blocker / 'run'
  with pytest.raises(checkpoints.CheckpointWriteError, match=f'Could not write to the workdir {workdir}'):
    checkpoints.Checkpointer(workdir, make_config())


@contextlib.contextmanager
def file_size_limit(max_bytes: int):
  """Make larger writes fail with EFBIG, as a full disk would; this works for root too."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous_handler)


def test_failed_save_names_the_path_and_keeps_the_last_good_checkpoint(tmp_path):
  config = make_config(async_save=True)
  checkpointer = checkpoints.Checkpointer(tmp_path, config)
  checkpointer.save(10, make_state(config, 10))
  checkpointer.latest_manager.wait_until_finished()
  # The parameters (about 250 kB) no longer fit; the error of the background write must surface.
  with file_size_limit(64_000), pytest.raises(checkpoints.CheckpointWriteError) as failed:
    checkpointer.save(20, make_state(config, 20))
    checkpointer.close()
  message = str(failed.value)
  assert str(tmp_path / 'checkpoints' / '20') in message
  assert f'{tmp_path / "checkpoints" / "10"}, is intact' in message

  with checkpoints.Checkpointer(tmp_path, config) as checkpointer:
    restored, _ = checkpointer.restore(make_state(config), steps_per_epoch=10)
  assert int(restored.step) == 10
  assert_same_arrays(restored.params, make_state(config, 10).params)


def test_stop_signals_are_recorded_and_handlers_restored():
  previous = signal.getsignal(signal.SIGTERM)
  with checkpoints.StopSignals() as stop:
    assert stop.received is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # The handler runs in the main thread at the next bytecode.
    assert stop.received == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    assert stop.received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # A second SIGINT stops at once.
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.05)
  assert signal.getsignal(signal.SIGTERM) is previous
