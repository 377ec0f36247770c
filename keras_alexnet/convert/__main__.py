"""Convert published AlexNet weights to a Keras weights file, once.

    python -m keras_alexnet.convert bvlc_alexnet.caffemodel bvlc_alexnet.weights.h5
    python -m keras_alexnet.convert alexnet-owt-7be5be79.pth alexnet.weights.h5

The `.weights.h5` records the architecture, so `AlexNet(weights=DST)` loads
it on any backend without PyTorch. Exit codes: 0 done, 2 bad arguments or
file.
"""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_alexnet.convert", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .caffemodel, .pth or .pt file.")
    parser.add_argument("destination", help="the .weights.h5 file to write.")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing destination.")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from keras_alexnet.convert import convert_weights

    try:
        pretrained = convert_weights(args.source, args.destination, args.overwrite)
    except (ValueError, FileExistsError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lrn = pretrained.lrn_constants
    mean, std = (", ".join(f"{value:g}" for value in values)
                 for values in (pretrained.pixel_mean, pretrained.pixel_std))
    print(f"Wrote {args.destination}: {pretrained.source} weights, "
          f"variant={pretrained.variant!r}, {pretrained.classes} classes, "
          + (f"LRN {lrn}, " if lrn else "no LRN, ")
          + f"input mean ({mean}) / std ({std}) (RGB, 0-255).\n"
          f"Load it with keras_alexnet.AlexNet(weights={args.destination!r}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
