"""Evaluate a trained model on a data split and write a report.

  python scripts/evaluate.py --workdir=runs/simple_cnn
  python scripts/evaluate.py --workdir=runs/simple_cnn --latest --split=train \
    --source=image_folder --data_dir=../shared/data/cifar10-jpeg

Reads the split from the data source of the run's config (or the one given),
prints overall and per-class figures, and writes report.json (accuracy, loss,
per-class accuracy, precision and recall, confusion matrix),
confusion_matrix.png and confident_mistakes.png into
WORKDIR/reports/<best|latest>_step<step>_<split>/ or --output_dir. The
results do not depend on --batch_size.
"""

import argparse
import os
import sys
from pathlib import Path

# Make `cnn_jax` and `scripts` importable when the script runs from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import _cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  _cli.add_model_arguments(parser)
  parser.add_argument('--split', help="Split to evaluate; default: the config's test split.")
  parser.add_argument('--source', help="Data source (tfds, image_folder, ...); default: the config's.")
  parser.add_argument('--data_dir', help="Data folder for the source; default: the config's.")
  parser.add_argument('--limit', type=int, default=0, help='Evaluate a fixed subset of N examples.')
  parser.add_argument('--batch_size', type=int, default=1000, help='Images per forward pass.')
  parser.add_argument('--output_dir', help='Where to write the report (default under WORKDIR/reports).')
  parser.add_argument('--overwrite', action='store_true', help='Replace an existing report.')
  parser.add_argument('--verbose', action='store_true', help='Log loading steps to stderr.')
  args = parser.parse_args(argv)
  _cli.check_model_arguments(parser, args)
  _cli.setup_logging(args.verbose)

  import ml_collections

  from cnn_jax import checkpoints, data, inference, report

  try:
    model = _cli.load_model(args)
    data_config = ml_collections.ConfigDict(model.config.data.to_dict())
    if args.source:
      data_config.source = args.source
    if args.data_dir:
      data_config.data_dir = args.data_dir
    split_name = args.split or data_config.test_split
    step_dir = Path(model.checkpoint_dir)
    kind = 'latest' if step_dir.parent.name == checkpoints.LATEST_DIR else step_dir.parent.name
    workdir = Path(args.workdir) if args.workdir else step_dir.parent.parent
    output_dir = args.output_dir or workdir / 'reports' / f'{kind}_step{model.step}_{split_name}'
    report.check_report_dir(str(output_dir), args.overwrite)  # Before the slow part.

    split = data.load_split(data_config, split_name).take(args.limit)
    evaluation = report.evaluate(model, split, args.batch_size)
    summary = report.write_report(
        evaluation, split.images, str(output_dir),
        {'checkpoint': model.checkpoint_dir, 'step': model.step, 'split': split_name,
         'source': data_config.source, 'tta': model.tta_mode},
        overwrite=args.overwrite,
    )
  except (inference.InferenceError, data.DataSourceError) as error:
    # Data messages name the training flags; this script sets the same fields with its own.
    message = str(error).replace('--config.data.data_dir', '--data_dir').replace('--config.data.source', '--source')
    print(f'evaluate.py: error: {message}', file=sys.stderr)
    return _cli.EXIT_ERROR

  print(f'Checkpoint {model.checkpoint_dir} (step {model.step}) on {split_name!r} '
        f'({data_config.source}):')
  print(report.format_summary(summary))
  print(f'Report written to {output_dir}')
  return _cli.EXIT_OK


if __name__ == '__main__':
  sys.exit(main())
