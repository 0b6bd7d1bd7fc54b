"""Look at a trained model: evaluation reports, confusion matrix and curves as PNG.

Plots are drawn with matplotlib's Agg canvas (no display, no pyplot state) at
fixed sizes, so they look the same on a laptop, a server and in CI.
"""

import dataclasses
import glob
import json
import math
import os
import struct
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cnn_jax.data.sources import Split
from cnn_jax.inference import InferenceError, TrainedModel, softmax

DPI = 100
CONFUSION_MATRIX_FILE = 'confusion_matrix.png'
MISTAKES_FILE = 'confident_mistakes.png'
REPORT_FILE = 'report.json'
CURVES_FILE = 'training_curves.png'
CURVES_SIZE = (1200, 480)  # Pixels: loss and accuracy side by side.
MISTAKES_GRID = 5  # The most confidently wrong images, in a 5x5 grid.
MISTAKES_SIZE = (1000, 1100)
# Cells are annotated with counts up to this many classes; beyond, only colors.
ANNOTATE_MAX_CLASSES = 20


def confusion_matrix_size(num_classes: int) -> tuple[int, int]:
  """Pixels of the confusion-matrix plot: 800x800, growing past 32 classes."""
  side = max(800, 25 * num_classes)
  return side, side


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Per-example logits and labels of one split."""

  logits_NxK: np.ndarray
  labels_N: np.ndarray
  class_names: tuple[str, ...]

  @property
  def probabilities_NxK(self) -> np.ndarray:
    return softmax(self.logits_NxK)

  @property
  def predictions_N(self) -> np.ndarray:
    return np.argmax(self.logits_NxK, axis=-1)

  @property
  def losses_N(self) -> np.ndarray:
    """Cross-entropy of each example, in float64."""
    logits = np.asarray(self.logits_NxK, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -log_probs[np.arange(len(self.labels_N)), self.labels_N]


def evaluate(model: TrainedModel, split: Split, batch_size: int = 1000) -> Evaluation:
  """Logits of every example of `split`, in eval mode."""
  if split.class_names != model.class_names:
    raise InferenceError(
        f'The data has classes {list(split.class_names)}, the model {list(model.class_names)}.'
    )
  if tuple(split.images.shape[1:]) != tuple(model.dataset.image_shape):
    raise InferenceError(
        f'The data has images of shape {split.images.shape[1:]}, the model takes '
        f'{tuple(model.dataset.image_shape)}.'
    )
  return Evaluation(model.logits(split.images, batch_size), split.labels, split.class_names)


def confusion_matrix(labels_N: np.ndarray, predictions_N: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts (K, K): row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels_N, predictions_N), 1)
  return matrix


def _ratio(numerator: float, denominator: float) -> float | None:
  return numerator / denominator if denominator else None  # None, not NaN: valid JSON.


def summarize(evaluation: Evaluation) -> dict:
  """Overall accuracy and loss, per-class metrics and the confusion matrix."""
  num_classes = len(evaluation.class_names)
  matrix = confusion_matrix(evaluation.labels_N, evaluation.predictions_N, num_classes)
  per_class = []
  for k, name in enumerate(evaluation.class_names):
    correct, support, predicted = int(matrix[k, k]), int(matrix[k].sum()), int(matrix[:, k].sum())
    precision, recall = _ratio(correct, predicted), _ratio(correct, support)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0 else None
    )
    per_class.append({
        'class': name,
        'support': support,
        'accuracy': recall,  # The fraction of this class's examples classified correctly.
        'precision': precision,
        'recall': recall,
        'f1': f1,
    })
  count = len(evaluation.labels_N)
  return {
      'count': count,
      'accuracy': float(np.trace(matrix)) / count if count else None,
      'loss': float(evaluation.losses_N.mean()) if count else None,
      'per_class': per_class,
      'class_names': list(evaluation.class_names),
      'confusion_matrix': matrix.tolist(),
  }


def _figure(size_px: tuple[int, int]):
  from matplotlib.figure import Figure  # Imported here: slow, and only plots need it.

  return Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI, layout='constrained')


def _save(figure, path: Path) -> Path:
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  FigureCanvasAgg(figure)
  path.parent.mkdir(parents=True, exist_ok=True)
  # No bbox_inches='tight': it would change the pixel size.
  figure.savefig(path, dpi=DPI, format='png')
  return path


def plot_confusion_matrix(matrix_KxK: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
  """Heatmap of the confusion matrix normalized per true class, with counts."""
  num_classes = len(class_names)
  figure = _figure(confusion_matrix_size(num_classes))
  axes = figure.add_subplot()
  support = np.maximum(matrix_KxK.sum(axis=1, keepdims=True), 1)
  fractions = matrix_KxK / support
  image = axes.imshow(fractions, cmap='Blues', vmin=0.0, vmax=1.0)
  figure.colorbar(image, ax=axes, fraction=0.046, label='fraction of the true class')
  ticks = np.arange(num_classes)
  axes.set_xticks(ticks, labels=class_names, rotation=45 if num_classes <= 40 else 90, ha='right')
  axes.set_yticks(ticks, labels=class_names)
  axes.set_xlabel('predicted class')
  axes.set_ylabel('true class')
  axes.set_title(f'Confusion matrix ({int(matrix_KxK.sum())} images)')
  if num_classes <= ANNOTATE_MAX_CLASSES:
    for (i, j), count in np.ndenumerate(matrix_KxK):
      axes.text(j, i, str(count), ha='center', va='center', fontsize=8,
                color='white' if fractions[i, j] > 0.5 else 'black')
  return _save(figure, path)


def plot_confident_mistakes(
    images_NxHxWxC: np.ndarray, evaluation: Evaluation, path: Path, grid: int = MISTAKES_GRID
) -> Path:
  """Plot the wrong predictions with the highest probability, with true and predicted labels."""
  probabilities = evaluation.probabilities_NxK
  predictions = evaluation.predictions_N
  wrong = np.flatnonzero(predictions != evaluation.labels_N)
  confidence = probabilities[wrong, predictions[wrong]]
  # Stable sort: ties keep data order, so the grid is the same for any batch size.
  chosen = wrong[np.argsort(-confidence, kind='stable')[:grid * grid]]
  figure = _figure(MISTAKES_SIZE)
  figure.suptitle(f'Most confident mistakes ({len(wrong)} wrong of {len(predictions)})')
  for cell in range(grid * grid):
    axes = figure.add_subplot(grid, grid, cell + 1)
    axes.set_axis_off()
    if cell >= len(chosen):
      continue
    index = chosen[cell]
    axes.imshow(images_NxHxWxC[index], interpolation='nearest')
    names = evaluation.class_names
    axes.set_title(
        f'true: {names[evaluation.labels_N[index]]}\n'
        f'pred: {names[predictions[index]]} ({probabilities[index, predictions[index]]:.0%})',
        fontsize=9,
    )
  return _save(figure, path)


def check_report_dir(output_dir: str, overwrite: bool) -> None:
  """Raise InferenceError when `output_dir` has a report and `overwrite` is off."""
  path = Path(output_dir) / REPORT_FILE
  if path.exists() and not overwrite:
    raise InferenceError(f'{path} exists; pass --overwrite to replace it or choose another --output_dir.')


def write_report(
    evaluation: Evaluation, images_NxHxWxC: np.ndarray, output_dir: str,
    metadata: Mapping[str, object] | None = None, overwrite: bool = False,
) -> dict:
  """Write report.json and the two PNG plots into `output_dir`; return the summary."""
  check_report_dir(output_dir, overwrite)
  directory = Path(output_dir)
  summary = {**(metadata or {}), **summarize(evaluation)}
  matrix = np.asarray(summary['confusion_matrix'])
  plot_confusion_matrix(matrix, evaluation.class_names, directory / CONFUSION_MATRIX_FILE)
  plot_confident_mistakes(images_NxHxWxC, evaluation, directory / MISTAKES_FILE)
  (directory / REPORT_FILE).write_text(json.dumps(summary, indent=2) + '\n')
  return summary


def format_summary(summary: Mapping) -> str:
  """Format a plain-text table: overall figures, then one line per class."""
  lines = [
      f'Accuracy: {summary["accuracy"]:.4f} | loss: {summary["loss"]:.4f} | images: {summary["count"]}',
      f'{"class":<16}{"accuracy":>10}{"precision":>11}{"recall":>9}{"support":>9}',
  ]
  def show(value: float | None) -> str:
    return '-' if value is None else f'{value:.4f}'

  for row in summary['per_class']:
    lines.append(
        f'{row["class"][:15]:<16}{show(row["accuracy"]):>10}{show(row["precision"]):>11}'
        f'{show(row["recall"]):>9}{row["support"]:>9}'
    )
  return '\n'.join(lines)


def _read_records(path: str):
  """Yield the records of a TFRecord file (TensorBoard's event format)."""
  with open(path, 'rb') as f:
    while True:
      header = f.read(12)  # uint64 length, uint32 CRC of the length.
      if len(header) < 12:
        return
      (length,) = struct.unpack('<Q', header[:8])
      record = f.read(length)
      if len(record) < length or len(f.read(4)) < 4:
        return  # A file still being written ends in a partial record.
      yield record


def read_training_history(workdir: str) -> dict[str, dict[int, float]]:
  """Scalars per epoch from the TensorBoard events in `workdir`: {tag: {epoch: value}}.

  Read without TensorFlow (the tensorboard reader imports it, which is slow).
  Event files are read oldest first, so after a resume the rerun epochs win.
  """
  from tensorboardX.proto import event_pb2

  history: dict[str, dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for record in _read_records(path):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.HasField('simple_value'):
          number = value.simple_value
        elif value.HasField('tensor') and value.tensor.float_val:
          number = value.tensor.float_val[0]
        else:
          continue
        history.setdefault(value.tag, {})[int(event.step)] = float(number)
  return history


def plot_training_curves(history: Mapping[str, Mapping[int, float]], path: Path) -> Path:
  """Train and test loss (left) and accuracy (right) per epoch."""
  from matplotlib.ticker import MaxNLocator

  figure = _figure(CURVES_SIZE)
  for column, metric in enumerate(('loss', 'accuracy')):
    axes = figure.add_subplot(1, 2, column + 1)
    for split, style in (('train', 'o-'), ('test', 's-')):
      series = history.get(f'{split}_{metric}', {})
      epochs = sorted(e for e in series if math.isfinite(series[e]))
      if epochs:
        axes.plot(epochs, [series[e] for e in epochs], style, label=split, markersize=4)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel('epoch')
    axes.set_ylabel(metric)
    axes.set_title(metric.capitalize())
    axes.grid(alpha=0.3)
    axes.legend()
  return _save(figure, path)


def write_training_curves(workdir: str, path: str | None = None) -> Path | None:
  """Plot the curves of `workdir` to WORKDIR/training_curves.png (or `path`).

  Returns None when the workdir has no epoch results yet.
  """
  history = read_training_history(workdir)
  if not any(f'{s}_{m}' in history for s in ('train', 'test') for m in ('loss', 'accuracy')):
    return None
  return plot_training_curves(history, Path(path) if path else Path(workdir) / CURVES_FILE)
