"""Classify image files with a trained model.

  python scripts/predict.py --workdir=runs/simple_cnn cat.jpg dog.png
  python scripts/predict.py --checkpoint=runs/simple_cnn/best/7820 --json --top_k=3 *.png

Prints the top-k classes of each image with their probabilities. Images of
any size and color mode (grayscale, RGBA, palette, 16-bit) are converted as
the training data was. A missing or unreadable file gets an error line on
stderr and the others are still classified. The exit code is 0 when every
file was classified, 1 when some failed and 2 when nothing could run.
"""

import argparse
import json
import os
import sys

# Make `cnn_jax` and `scripts` importable when the script runs from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import _cli  # noqa: E402


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be 1 or more, got {value}')
  return value


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  _cli.add_model_arguments(parser)
  parser.add_argument('images', nargs='+', metavar='IMAGE', help='Image files (PNG, JPEG, ...).')
  parser.add_argument('--top_k', type=_positive_int, default=5, help='Classes to show per image (default: 5).')
  parser.add_argument('--json', action='store_true', help='Print one JSON list instead of text.')
  parser.add_argument('--batch_size', type=int, default=256, help='Images per forward pass.')
  parser.add_argument('--verbose', action='store_true', help='Log loading steps to stderr.')
  args = parser.parse_args(argv)
  _cli.check_model_arguments(parser, args)
  _cli.setup_logging(args.verbose)

  from cnn_jax import inference

  try:
    model = _cli.load_model(args)
  except inference.InferenceError as error:
    print(f'predict.py: error: {error}', file=sys.stderr)
    return _cli.EXIT_ERROR
  predictions = inference.predict_files(model, args.images, args.top_k, args.batch_size)

  for prediction in predictions:
    if prediction.error:
      print(f'predict.py: error: {prediction.error}', file=sys.stderr)
  if args.json:
    print(json.dumps([p.to_json() for p in predictions], indent=2))
  else:
    for prediction in predictions:
      if not prediction.error:
        print(inference.format_prediction(prediction))
  return _cli.EXIT_SOME_FAILED if any(p.error for p in predictions) else _cli.EXIT_OK


if __name__ == '__main__':
  sys.exit(main())
