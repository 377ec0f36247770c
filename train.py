"""Train AlexNet with the paper's recipe on any Keras backend.

    python train.py                                   # the embedded demo dataset, offline
    python train.py --backend jax --data ~/images     # a folder of class sub-folders
    python train.py --dataset imagenet2012 --manual-dir ~/ilsvrc --epochs 90
    python train.py --backend tensorflow --distribute mirrored          # all GPUs
    python train.py --backend jax --distribute data-parallel --cpu-devices 2
    python train.py --output runs/demo --resume       # continue a killed run
    python train.py --export exports/alexnet/1        # SavedModel at the end

Without a data argument it trains on the embedded default dataset (10 classes
of generated shape images, written as JPEG files on first use) with demo
settings (67x67 crops, batch 64, 15 epochs, He initialisation) that finish
in a few minutes on a 2-core CPU. With --data or --dataset every default is
the paper's recipe (see
`keras_alexnet.training.Recipe`). Exit codes: 0 done, 2 bad arguments or
output folder, 3 the loss became NaN (the last good checkpoint is kept).
"""

import argparse
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
# The demo on the embedded dataset: small crops so it finishes in minutes.
# He initialisation: with the paper's N(0, 0.01) SGD stays on the initial
# loss plateau for far longer than a demo lasts.
DEMO_SETTINGS = dict(image_size=67, resize_size=76, epochs=15, batch_size=64,
                     initialization="he", lr_patience=3)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="folder of class sub-folders (or train/ and val/).")
    data.add_argument("--dataset", help="TensorFlow Datasets name, e.g. imagenet2012.")
    data.add_argument("--data-dir", help="TFDS data folder.")
    data.add_argument("--manual-dir", help="TFDS manual download folder (ImageNet tars).")
    data.add_argument("--validation-fraction", type=float, default=0.1,
                      help="held out per class when there is no validation split (0.1).")
    recipe = parser.add_argument_group("model and recipe (defaults: the paper)")
    recipe.add_argument("--variant", choices=("original", "one_weird_trick"), default="original")
    recipe.add_argument("--image-size", type=int, help="crop size (227; demo 67).")
    recipe.add_argument("--resize-size", type=int, help="short side before cropping (256).")
    recipe.add_argument("--epochs", type=int, help="epochs (90; demo 15).")
    recipe.add_argument("--batch-size", type=int, help="global batch size (128; demo 64).")
    recipe.add_argument("--lr", type=float, default=0.01, help="learning rate (0.01).")
    recipe.add_argument("--momentum", type=float, default=0.9)
    recipe.add_argument("--weight-decay", type=float, default=5e-4)
    recipe.add_argument("--dropout", type=float, default=0.5)
    recipe.add_argument("--init", choices=("paper", "caffe", "glorot", "he"),
                        help="initialisation (paper; demo he).")
    recipe.add_argument("--lr-patience", type=int,
                        help="epochs without validation improvement before lr /= 10 (5).")
    recipe.add_argument("--policy", choices=("randaugment", "augmix"),
                        help="a stronger keras-cv policy on top of the paper's augmentation.")
    recipe.add_argument("--seed", type=int, default=None)
    recipe.add_argument("--mixed-precision", action="store_true",
                        help="train in mixed_bfloat16.")
    recipe.add_argument("--steps-per-epoch", type=int, help="cap on steps per epoch.")
    recipe.add_argument("--ten-crop", action="store_true",
                        help="final evaluation with the paper's 10 crops.")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--output", default="runs/alexnet", help="run folder (runs/alexnet).")
    outputs.add_argument("--resume", action="store_true", help="continue the run in --output.")
    outputs.add_argument("--overwrite", action="store_true",
                         help="start again in --output (and replace --export).")
    outputs.add_argument("--export", help="write a SavedModel here at the end.")
    distribution = parser.add_argument_group("distribution")
    distribution.add_argument("--distribute", choices=("none", "mirrored", "data-parallel"),
                              default="none")
    distribution.add_argument("--cpu-devices", type=int,
                              help="split the CPU into N logical devices (to run "
                                   "distribution without GPUs).")
    parser.add_argument("--quiet", action="store_true", help="no progress bar.")
    return parser, parser.parse_args(argv)


def configure_environment(args):
    """Backend and device settings that must precede importing Keras."""
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with
    # VNNI, AVX-512 BF16 or AMX instructions; on an AVX2-only CPU they trained
    # AlexNet 1.4x faster (BENCHMARKS.md). Read once, when TensorFlow loads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if args.cpu_devices:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}").strip()


def make_recipe(args, training):
    demo = not (args.data or args.dataset)
    chosen = dict(image_size=args.image_size, resize_size=args.resize_size, epochs=args.epochs,
                  batch_size=args.batch_size, initialization=args.init,
                  lr_patience=args.lr_patience)
    defaults = DEMO_SETTINGS if demo else {}
    settings = {key: value if value is not None else defaults.get(key)
                for key, value in chosen.items()}
    settings = {key: value for key, value in settings.items() if value is not None}
    if "resize_size" not in settings and "image_size" in settings:
        settings["resize_size"] = max(256, settings["image_size"])
    return training.Recipe(
        variant=args.variant, learning_rate=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, dropout=args.dropout, policy=args.policy,
        seed=args.seed, mixed_precision=args.mixed_precision,
        steps_per_epoch=args.steps_per_epoch, ten_crop=args.ten_crop, **settings,
    )


def main(argv=None):
    parser, args = parse_arguments(argv)
    if args.cpu_devices is not None and args.cpu_devices < 1:
        parser.error(f"--cpu-devices must be >= 1. Received: {args.cpu_devices}")
    if args.data and not os.path.isdir(os.path.expanduser(args.data)):
        parser.error(f"--data: no such folder: {args.data}")
    configure_environment(args)

    import keras

    from keras_alexnet import data, distribute, training

    print(f"Keras backend: {keras.backend.backend()}")
    try:
        recipe = make_recipe(args, training)
        # Check the output folder before anything is written (the demo dataset too).
        training.prepare_run_folder(args.output, args.resume, args.overwrite, create=False)
        distribute.check_distribution(args.distribute)
        if args.cpu_devices and keras.backend.backend() == "tensorflow":
            distribute.split_cpu_for_tensorflow(args.cpu_devices)
        source = data.from_arguments(args.data, args.dataset, args.data_dir, args.manual_dir,
                                     args.validation_fraction)
        summary = training.train(
            recipe, source, args.output, resume=args.resume, overwrite=args.overwrite,
            distribute=args.distribute, export=args.export,
            verbose=0 if args.quiet else "auto",
        )
    except (ValueError, FileNotFoundError, training.RunFolderError) as error:
        # Bad arguments, data or output folder: say which, and write nothing.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except training.NaNLossError as error:
        print(f"error: {error} Training stopped; the last good checkpoint is in "
              f"{os.path.join(args.output, 'backup')} (resume with --resume after "
              "lowering --lr).", file=sys.stderr)
        return 3

    if summary["top1_error"] is not None:
        print(f"Final validation ({summary['evaluation']}): top-1 error "
              f"{100 * summary['top1_error']:.1f}%, top-5 error "
              f"{100 * summary['top5_error']:.1f}% (chance top-1 error "
              f"{100 * summary['chance_top1_error']:.1f}%).")
    print(f"Model: {summary['final_model']} (best: {summary['best_model']}); logs, "
          f"checkpoints and summary.json in {os.path.abspath(args.output)}")
    if "export" in summary:
        print(f"SavedModel: {summary['export']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
