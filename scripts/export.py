"""Export a trained model for serving as a jax.export (StableHLO) artifact.

  python scripts/export.py --workdir=runs/simple_cnn

Writes WORKDIR/export/model.jax, the inference function with its weights
for any batch size, and model.json with the class names, the input format
and the preprocessing. Load it without this project's code:

  exported = jax.export.deserialize(open('model.jax', 'rb').read())
  logits = exported.call(images_uint8_BxHxWx3)
"""

import argparse
import os
import sys
from pathlib import Path

# Make `cnn_jax` and `scripts` importable when the script runs from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import _cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  from cnn_jax import inference

  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  _cli.add_model_arguments(parser)
  parser.add_argument('--output_dir', help='Folder for model.jax and model.json (default WORKDIR/export).')
  parser.add_argument(
      '--platforms', default=','.join(inference.EXPORT_PLATFORMS),
      help='Comma-separated platforms the artifact can run on (cpu, cuda, rocm, tpu).',
  )
  parser.add_argument('--overwrite', action='store_true', help='Replace an existing export.')
  parser.add_argument('--verbose', action='store_true', help='Log loading steps to stderr.')
  args = parser.parse_args(argv)
  _cli.check_model_arguments(parser, args)
  _cli.setup_logging(args.verbose)

  try:
    model = _cli.load_model(args)
    workdir = Path(args.workdir) if args.workdir else Path(model.checkpoint_dir).parent.parent
    output_dir = args.output_dir or workdir / 'export'
    platforms = [p.strip() for p in args.platforms.split(',') if p.strip()]
    artifact, info = inference.export_model(model, str(output_dir), platforms, args.overwrite)
  except inference.InferenceError as error:
    print(f'export.py: error: {error}', file=sys.stderr)
    return _cli.EXIT_ERROR
  print(f'Exported {model.checkpoint_dir} (step {model.step}) for {", ".join(platforms)}:')
  print(f'  {artifact} ({artifact.stat().st_size:,} bytes)')
  print(f'  {info}')
  return _cli.EXIT_OK


if __name__ == '__main__':
  sys.exit(main())
