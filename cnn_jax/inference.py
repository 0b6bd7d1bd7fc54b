"""Use a trained model: load it from a workdir, read images, predict, export.

A workdir contains everything needed to rebuild the model without the data set:
the run's config (`config.json`), the class names and input shape
(`dataset.json`), and Orbax checkpoints in `checkpoints/<step>` (latest) and
`best/<step>` (best by the config's metric). Images are converted the way the
training data was: RGB, resized with PIL's bilinear filter to the model's
input size, then normalized inside the jitted function as the eval step does
(with the training split's statistics for `standardize`), and classified with
the run's weight average and test-time augmentation when it used them.
"""

import dataclasses
import functools
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image, ImageOps

from cnn_jax import checkpoints, fast_cpu, models, tta
from cnn_jax.data import augment

logger = logging.getLogger(__name__)

CONFIG_FILE = checkpoints.CONFIG_FILE
DATASET_FILE = 'dataset.json'
CHECKPOINT_KINDS = ('best', 'latest')
# The item name Orbax's CheckpointManager gives a single StandardSave.
_ORBAX_ITEM = 'default'
EXPORT_FILE = 'model.jax'
EXPORT_INFO_FILE = 'model.json'
EXPORT_PLATFORMS = ('cpu', 'cuda', 'tpu')


class InferenceError(ValueError):
  """A workdir, checkpoint or export that cannot be used, with the reason."""


class ImageError(ValueError):
  """One input file that is missing or cannot be read as an image."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """The facts about the training data that a model needs to classify new images."""

  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (height, width, channels) of the model input.
  # Per-channel mean and std of the training split in [0, 1] units, for
  # normalization=standardize; None for the other normalizations.
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None


def save_dataset_info(
    workdir: str, class_names: Sequence[str], image_shape: Sequence[int], stats=None
) -> None:
  """Write WORKDIR/dataset.json, or check that an existing one has the same content.

  `stats` (pipeline.NormalizationStats or None) are the training split's
  channel mean and std that `standardize` normalizes with.
  """
  info = {
      'class_names': list(class_names),
      'image_shape': [int(n) for n in image_shape],
      'mean': None if stats is None else [float(m) for m in stats.mean],
      'std': None if stats is None else [float(s) for s in stats.std],
  }
  path = Path(workdir) / DATASET_FILE
  if path.is_file():
    existing = json.loads(path.read_text())
    if existing != info:
      raise InferenceError(
          f'{path} describes other data ({len(existing["class_names"])} classes, image shape '
          f'{existing["image_shape"]}) than this run ({len(info["class_names"])} classes, image '
          f'shape {info["image_shape"]}). Use a new workdir for a different data set.'
      )
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_suffix('.json.tmp')
  temporary.write_text(json.dumps(info, indent=2) + '\n')
  temporary.replace(path)


def load_dataset_info(workdir: str) -> DatasetInfo:
  path = Path(workdir) / DATASET_FILE
  if not path.is_file():
    raise InferenceError(
        f'{path} not found. It is written when training starts; is {workdir!r} a workdir of '
        'experiments/cifar.py?'
    )
  info = json.loads(path.read_text())
  stats = {key: tuple(info[key]) if info.get(key) else None for key in ('mean', 'std')}
  return DatasetInfo(tuple(info['class_names']), tuple(info['image_shape']), **stats)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Read the config that the run in `workdir` was trained with."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise InferenceError(
        f'{path} not found. It is written when training starts; is {workdir!r} a workdir of '
        'experiments/cifar.py?'
    )
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def find_checkpoint(
    workdir: str | None = None, checkpoint: str | None = None, which: str = 'best'
) -> tuple[Path, Path]:
  """Return (workdir, step folder) for the chosen checkpoint.

  `checkpoint` is a step folder (WORKDIR/best/316) or a folder of steps
  (WORKDIR/checkpoints), which gives its latest step. Its workdir is the folder
  above unless `workdir` is given. Without `checkpoint`, `which` picks the best
  or the latest checkpoint of `workdir`.
  """
  if which not in CHECKPOINT_KINDS:
    raise InferenceError(f'Unknown checkpoint kind {which!r}. Valid: {", ".join(CHECKPOINT_KINDS)}.')
  if not checkpoint:
    if not workdir:
      raise InferenceError('Give a workdir or a checkpoint path.')
    if not Path(workdir).expanduser().is_dir():
      raise InferenceError(f'Workdir {workdir!r} not found. Check the path, or train a run first: '
                           f'python experiments/cifar.py --workdir={workdir}')
    # best/ keeps one step: a checkpoint is saved there only when it beats the one before.
    checkpoint = os.path.join(workdir, checkpoints.BEST_DIR if which == 'best' else checkpoints.LATEST_DIR)
    if not os.path.isdir(checkpoint):
      raise InferenceError(f'No {which} checkpoint in {workdir!r}: {checkpoint} does not exist.')
  try:
    directory, step = checkpoints.find_checkpoint(checkpoint)
  except checkpoints.CheckpointError as error:
    raise InferenceError(str(error)) from error
  step_dir = Path(directory) / str(step)
  return (Path(workdir) if workdir else step_dir.parent.parent), step_dir


def _uses_weight_average(config: ml_collections.ConfigDict) -> bool:
  """Return whether the run evaluated its exponential moving average instead of its weights."""
  return 'weight_averaging' in config and config.weight_averaging.mode == 'ema'


def _restore_variables(
    step_dir: Path, abstract_variables: dict, weight_average: bool
) -> tuple[dict, int]:
  """Restore params and batch_stats (not the optimizer state) onto one device.

  With `weight_average`, they come from the checkpoint's `weight_average`, the
  weights that the run evaluated.
  """
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  variables = {
      collection: jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract_variables[collection])
      for collection in ('params', 'batch_stats') if collection in abstract_variables
  }
  target = {'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)}
  if weight_average:
    target['weight_average'] = variables
  else:
    target.update(variables)
  restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
  with ocp.PyTreeCheckpointer() as checkpointer:
    try:
      restored = checkpointer.restore(
          step_dir / _ORBAX_ITEM,
          args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
      )
    except (ValueError, KeyError) as error:
      raise InferenceError(
          f'The checkpoint {str(step_dir)!r} does not match the model its config describes, or is '
          f'damaged: {checkpoints.error_summary(error)}'
      ) from error
    except Exception as error:  # TensorStore read errors surface as bare Exception.
      raise InferenceError(checkpoints.damaged_checkpoint_message(str(step_dir), error)) from error
  step = int(restored.pop('step'))
  return restored.get('weight_average', restored), step


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A model rebuilt from its config with the weights of one checkpoint."""

  config: ml_collections.ConfigDict
  dataset: DatasetInfo
  variables: dict  # {'params': ..., 'batch_stats': ...}, batch_stats only with BatchNorm.
  step: int
  checkpoint_dir: str

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.dataset.class_names

  @property
  def image_size(self) -> tuple[int, int]:
    """(height, width) of the model input."""
    return self.dataset.image_shape[:2]

  @property
  def tta_mode(self) -> str:
    """The run's test-time augmentation (tta.TTA_MODES), applied to every prediction."""
    return self.config.tta if 'tta' in self.config else 'none'

  def inference_fn(self) -> Callable[[jax.Array], jax.Array]:
    """Return the function uint8 images (B, H, W, 3) -> float32 logits (B, K), weights included.

    The images are normalized as in the eval step, then classified with the
    run's test-time augmentation.
    """
    model = _create_model(self.config, len(self.class_names))
    variables = self.variables
    method = self.config.data.normalization
    stats = {} if self.dataset.mean is None else {'mean': self.dataset.mean, 'std': self.dataset.std}
    if method == 'standardize' and not stats:
      raise InferenceError(
          f'normalization=standardize needs the training mean and std, which {DATASET_FILE} lacks.')
    tta_mode = self.tta_mode

    def logits_fn(images_uint8_BxHxWxC: jax.Array) -> jax.Array:
      images = augment.normalize(images_uint8_BxHxWxC, method, **stats)
      # Eval mode: BatchNorm uses its running averages, so one image's logits
      # do not depend on the other images in the batch.
      return tta.tta_logits(lambda x: model.apply(variables, x, train=False), images, tta_mode)

    return logits_fn

  @functools.cached_property
  def _jitted(self) -> Callable[[jax.Array], jax.Array]:
    # Compiled as in training: on the CPU fast path with XLA's own convolution kernels.
    return fast_cpu.jit(self.inference_fn(), fast_cpu.compiler_options(self.config.get('cpu_fast_path', True)))

  def logits(self, images_uint8_NxHxWxC: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Compute the logits of any number of images, in batches of `batch_size`.

    Every batch is padded to `batch_size` so the function compiles once.
    """
    images = np.asarray(images_uint8_NxHxWxC)
    expected = tuple(self.dataset.image_shape)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
      raise ValueError(
          f'Expected uint8 images of shape (N, {", ".join(map(str, expected))}), got '
          f'{images.dtype} {images.shape}; read files with load_image().'
      )
    batch_size = max(1, min(batch_size, len(images)))
    outputs = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      padding = batch_size - len(chunk)
      if padding:
        chunk = np.concatenate([chunk, np.zeros((padding, *expected), np.uint8)])
      outputs.append(np.asarray(self._jitted(chunk))[:batch_size - padding])
    if not outputs:
      return np.zeros((0, len(self.class_names)), np.float32)
    return np.concatenate(outputs)


def _create_model(config: ml_collections.ConfigDict, num_classes: int):
  options = config.model_options.to_dict() if 'model_options' in config else {}
  return models.create_model(config.model, num_classes, config.dtype, **options)


def load_trained_model(
    workdir: str | None = None, checkpoint: str | None = None, which: str = 'best'
) -> TrainedModel:
  """Rebuild the model of a workdir and restore the chosen checkpoint's weights."""
  root, step_dir = find_checkpoint(workdir, checkpoint, which)
  config = load_config(str(root))
  dataset = load_dataset_info(str(root))
  model = _create_model(config, len(dataset.class_names))
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *dataset.image_shape), jnp.float32), train=False)
  )
  variables, step = _restore_variables(step_dir, dict(abstract), _uses_weight_average(config))
  logger.info('Loaded %s (%s, step %d).', step_dir, config.model, step)
  return TrainedModel(config, dataset, variables, step, str(step_dir))


def _to_rgb(image: Image.Image) -> Image.Image:
  """Convert any PIL mode to 8-bit RGB, as training's convert('RGB') does for 8-bit files."""
  if image.mode.startswith('I;16') or image.mode == 'I':
    # PIL's convert() clips 16-bit values at 255 instead of scaling them.
    values = np.asarray(image).astype(np.int64)
    # NOTE: mode 'I' (32-bit) is assumed to hold 16-bit data when any value
    # exceeds 255 (16-bit PNGs and TIFFs); other ranges are clipped.
    if image.mode.startswith('I;16') or values.max(initial=0) > 255:
      values = values >> 8
    image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), 'L')
  elif image.mode == 'F':
    image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), 'L')
  elif image.mode == 'P':
    # Through RGBA so palettes with transparency convert without a warning;
    # the alpha channel is then dropped as training does.
    image = image.convert('RGBA')
  return image.convert('RGB')


def load_image(path: str, image_size: tuple[int, int]) -> np.ndarray:
  """Read one image file as uint8 (H, W, 3) the way the training data was read.

  Raises ImageError with the reason when the file is missing or not an image.
  """
  if not os.path.exists(path):
    raise ImageError(f'{path}: file not found')
  if os.path.isdir(path):
    raise ImageError(f'{path}: is a folder, not an image file')
  try:
    with Image.open(path) as image:
      image.load()
      image = ImageOps.exif_transpose(image)
      image = _to_rgb(image)
  except (Image.UnidentifiedImageError, Image.DecompressionBombError) as error:
    raise ImageError(f'{path}: not an image file PIL can read ({error})') from error
  except (OSError, SyntaxError, ValueError) as error:
    raise ImageError(f'{path}: failed to decode the image ({error})') from error
  height, width = image_size
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(image, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The top-k classes of one file, or the error that stopped it."""

  path: str
  top_k: tuple[tuple[str, float], ...] = ()  # (class name, probability), most probable first.
  error: str | None = None

  @property
  def label(self) -> str | None:
    return self.top_k[0][0] if self.top_k else None

  def to_json(self) -> dict:
    return {
        'path': self.path,
        'predictions': [{'class': name, 'probability': p} for name, p in self.top_k],
        'error': self.error,
    }


def softmax(logits_NxK: np.ndarray) -> np.ndarray:
  """Compute probabilities in float64 on the host, stable for large logits."""
  shifted = np.asarray(logits_NxK, np.float64)
  shifted = shifted - shifted.max(axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(axis=-1, keepdims=True)


def predict_files(
    model: TrainedModel, paths: Sequence[str], top_k: int = 5, batch_size: int = 256
) -> list[Prediction]:
  """Predict every readable file; unreadable ones get a Prediction with `error`."""
  images, readable, errors = [], [], {}
  for index, path in enumerate(paths):
    try:
      images.append(load_image(path, model.image_size))
      readable.append(index)
    except ImageError as error:
      errors[index] = str(error)
  probabilities = np.zeros((0, len(model.class_names)))
  if images:
    probabilities = softmax(model.logits(np.stack(images), batch_size))
  row = {index: i for i, index in enumerate(readable)}
  top_k = max(1, min(top_k, len(model.class_names)))
  predictions = []
  for index, path in enumerate(paths):
    if index in errors:
      predictions.append(Prediction(path, error=errors[index]))
      continue
    probs_K = probabilities[row[index]]
    order = np.argsort(-probs_K, kind='stable')[:top_k]
    predictions.append(
        Prediction(path, tuple((model.class_names[k], float(probs_K[k])) for k in order))
    )
  return predictions


def format_prediction(prediction: Prediction) -> str:
  """Format one line: `path: cat 0.812, dog 0.101, ...` or `path: error: ...`."""
  if prediction.error:
    return f'{prediction.path}: error: {prediction.error.removeprefix(prediction.path + ": ")}'
  ranked = ', '.join(f'{name} {p:.3f}' for name, p in prediction.top_k)
  return f'{prediction.path}: {ranked}'


def export_model(
    model: TrainedModel, output_dir: str, platforms: Sequence[str] = EXPORT_PLATFORMS,
    overwrite: bool = False,
) -> tuple[Path, Path]:
  """Write the inference function with its weights as a jax.export artifact.

  The artifact takes uint8 RGB images (B, H, W, 3) for any batch size B,
  already resized to the model input, and returns float32 logits (B, K). It
  normalizes the images itself. A JSON file beside it lists the class names
  and the preprocessing. Returns the two paths.
  """
  from jax import export  # Imported here: only this function needs it.

  directory = Path(output_dir)
  artifact_path, info_path = directory / EXPORT_FILE, directory / EXPORT_INFO_FILE
  existing = [str(p) for p in (artifact_path, info_path) if p.exists()]
  if existing and not overwrite:
    raise InferenceError(f'{", ".join(existing)} already exist; pass --overwrite to replace them.')

  height, width, channels = model.dataset.image_shape
  batch, = export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.uint8)
  exported = export.export(jax.jit(model.inference_fn()), platforms=tuple(platforms))(spec)

  info = {
      'format': 'jax.export',
      'artifact': EXPORT_FILE,
      'load': 'jax.export.deserialize(open(artifact, "rb").read()).call(images)',
      'calling_convention_version': exported.calling_convention_version,
      'jax_version': jax.__version__,
      'platforms': list(exported.platforms),
      'input': {
          'shape': ['batch', height, width, channels], 'dtype': 'uint8', 'layout': 'NHWC',
          'color': 'RGB',
      },
      'output': {
          'name': 'logits', 'shape': ['batch', len(model.class_names)], 'dtype': 'float32',
          'probabilities': 'softmax over the last axis',
      },
      'preprocessing': {
          'before_the_artifact': [
              'decode the file and convert it to 8-bit RGB (alpha dropped, 16-bit values divided by 256)',
              f'resize to {width}x{height} (width x height) with bilinear filtering, aspect ratio not kept',
          ],
          'inside_the_artifact': [
              f'normalization {model.config.data.normalization!r}'
              + (f' with mean {list(model.dataset.mean)} and std {list(model.dataset.std)}'
                 if model.config.data.normalization == 'standardize' else ''),
              f'test-time augmentation {model.tta_mode!r}',
          ],
      },
      'class_names': list(model.class_names),
      'model': model.config.model,
      'checkpoint': model.checkpoint_dir,
      'step': model.step,
  }
  directory.mkdir(parents=True, exist_ok=True)
  artifact_path.write_bytes(exported.serialize())
  info_path.write_text(json.dumps(info, indent=2) + '\n')
  return artifact_path, info_path
