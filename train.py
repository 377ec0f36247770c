"""Train AlexNet with the paper's recipe on any Keras backend.

    python train.py                                   # the embedded demo dataset, offline
    python train.py --backend jax --data ~/images     # a folder of class sub-folders
    python train.py --dataset imagenet2012 --manual-dir ~/ilsvrc --epochs 90
    python train.py --backend tensorflow --distribute mirrored          # all GPUs
    python train.py --backend jax --distribute data-parallel --cpu-devices 2
    python train.py --backend jax --distribute model-parallel --model-parallel 2  # the paper's
    python train.py --backend jax --distribute data-parallel --num-processes 2 \
        --process-id 0 --job-addresses host0:1234,host1:1234 --data /shared/images  # on host0
    python train.py --output runs/demo-20261123-101500 --resume     # continue a killed run
    python train.py --export exports/alexnet/1        # SavedModel at the end
    python train.py --data ~/images --prepare ~/images-256   # the paper's 256x256, once
    python train.py --data ~/images-256               # train from the prepared folder
    python train.py --data ~/images-256 --data-service grpc://host:5050  # remote pipeline
    python train.py --data ~/caltech101 --fine-tune bvlc_alexnet.caffemodel --freeze conv5

Without a data argument it trains on the embedded default dataset (10 classes
of generated shape images, written as JPEG files on first use) with demo
settings (67x67 crops, batch 64, 15 epochs, He initialisation, seed 0) that
finish in a few minutes on a 2-core CPU. With --data or --dataset every
default is the paper's recipe (see `keras_alexnet.training.Recipe`). Each run
gets its own folder, runs/<data>-<date>-<time> unless --output names one.
--resume reads the run's settings from its run.json (the distribution and the
export included): `--output DIR --resume` alone continues it; arguments given
again must agree, except more --epochs, --lr and the devices and processes.
--prepare DIR writes the --data or --dataset source (or the embedded one) once
as squares of --resize-size (256) in DIR (JPEG of --prepare-quality 95, or
--prepare-format png), and exits; --data DIR then trains
from it, at that --resize-size (another is refused). --prepare runs in one
process: with several it is refused (exit code 2) before any process joins.
With --data-service over several processes, each process receives its own
part of every global batch from the service. Exit codes: 0 done, 2 bad arguments,
data or output folder, or a missing optional dependency an argument needs
(nothing written), 3 the loss became NaN, 4 --prepare failed while writing (a
full disk, say; what was complete is kept and the same command continues it),
5 no batch came from the --data-service for --service-timeout seconds (a lost
worker; the last checkpoint is kept for --resume), 6 a run over several
processes lost one.

A run over several processes (JAX): every process runs the same command but
--process-id (or gets KERAS_DISTRIBUTION_NUM_PROCESSES, _PROCESS_ID and
_JOB_ADDRESSES from its launcher). Process 0 alone writes the run folder and
the export; to --resume, every process must see the run folder (a shared
filesystem, or a copy at the same path). If a check fails on any process,
every process exits with code 2. If a process dies (killed, crashed, its
machine gone) or stops with an error while the others train, the others
stop: with "error: Process I of N stopped training: ..." and exit code 6
when their collective fails, or within --heartbeat-timeout seconds (100)
when JAX notices the silence, printing "Terminating process because the JAX
distributed service detected fatal errors" and ending with SIGABRT (exit
status 134 in a shell). Restart all of them with --resume.
"""

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
# The demo on the embedded dataset: small crops so it finishes in minutes,
# seeded so its result repeats. He initialisation: with the paper's
# N(0, 0.01) SGD stays on the initial loss plateau for far longer than a
# demo lasts.
DEMO_SETTINGS = dict(image_size=67, epochs=15, batch_size=64, initialization="he",
                     lr_patience=3, seed=0)
# The paper's 256 / 227: how much larger the short side is than the crop.
PAPER_RESIZE_RATIO = 256 / 227
# Arguments that name the data; run.json keeps them so --resume can rebuild the source.
DATA_ARGUMENTS = ("data", "dataset", "data_dir", "manual_dir", "validation_fraction")
# The run's distribution and export: run.json keeps them, and --resume continues
# with them (the distribution's before the processes join).
DISTRIBUTION_ARGUMENTS = ("distribute", "model_parallel")
EXPORT_ARGUMENTS = ("export",)
# Arguments that only say how or where this session runs: a resumed run may change them.
SESSION_ARGUMENTS = ("backend", "output", "resume", "overwrite", "cpu_devices", "quiet",
                     "data_dir", "manual_dir", "data_service", "service_timeout",
                     "num_processes", "process_id", "job_addresses", "heartbeat_timeout")
# Held out per class for validation without --validation-fraction, when the
# data has no validation split.
VALIDATION_FRACTION = 0.1
# The JPEG quality --prepare writes without --prepare-quality (data.prepare's).
PREPARE_QUALITY = 95
# The size --prepare writes without --resize-size: the paper's.
PREPARE_SIZE = 256
# A run over several processes stopped because one of them was lost.
LOST_PROCESS_EXIT_CODE = 6
# The values each numeric option takes (checked before anything runs), as
# (test, what the message says it must be). 0 is a value like any other.
POSITIVE = (lambda value: value >= 1, ">= 1")
FRACTION = (lambda value: 0 <= value < 1, "in [0, 1)")
NUMERIC_OPTIONS = {
    "validation_fraction": FRACTION,
    "service_timeout": (lambda value: value > 0, "> 0"),
    "image_size": POSITIVE, "resize_size": POSITIVE, "epochs": POSITIVE,
    "batch_size": POSITIVE,
    "lr": (lambda value: value > 0, "> 0"),
    "momentum": FRACTION,
    "weight_decay": (lambda value: value >= 0, ">= 0"),
    "dropout": FRACTION,
    "lr_patience": POSITIVE,
    # What every backend's generators take (NumPy's: an unsigned 32-bit number).
    "seed": (lambda value: 0 <= value < 2**32, "in [0, 2**32)"),
    "steps_per_epoch": POSITIVE, "model_parallel": POSITIVE, "cpu_devices": POSITIVE,
    "num_processes": POSITIVE,
    "process_id": (lambda value: value >= 0, ">= 0"),
    "heartbeat_timeout": POSITIVE,
    "prepare_quality": (lambda value: 1 <= value <= 100, "in [1, 100]"),
}
# Recipe fields set by command-line options of another name.
RECIPE_OPTIONS = {"lr": "learning_rate", "init": "initialization"}


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
    data.add_argument("--validation-fraction", type=float,
                      help="held out per class when there is no validation split (0.1).")
    data.add_argument("--prepare", metavar="DIR",
                      help="write the data once as --resize-size squares (256) in sharded "
                           "TFRecords in DIR, and exit; train with --data DIR (one process).")
    data.add_argument("--prepare-format", choices=("jpeg", "png"),
                      help="how --prepare encodes the squares: jpeg (the default; training "
                           "decodes only each crop's window) or png (lossless, larger).")
    data.add_argument("--prepare-quality", type=int, metavar="1-100",
                      help="the JPEG quality of --prepare (95).")
    data.add_argument("--data-service", metavar="grpc://HOST:PORT",
                      help="make the training batches on a tf.data service (python -m "
                           "keras_alexnet.data_service).")
    data.add_argument("--service-timeout", type=float, metavar="SECONDS",
                      help="with --data-service: stop (exit code 5) after this long without "
                           "a training batch, e.g. a worker lost for good (600).")
    recipe = parser.add_argument_group("model and recipe (defaults: the paper)")
    recipe.add_argument("--variant", choices=("original", "one_weird_trick", "zfnet"),
                        help="(original; with --fine-tune the weights file's)")
    recipe.add_argument("--image-size", type=int,
                        help="crop size (the variant's: 227, 224 for one_weird_trick and "
                             "zfnet; demo 67).")
    recipe.add_argument("--resize-size", type=int,
                        help="short side before cropping (256; demo: image size x 256/227; "
                             "a prepared folder: its size).")
    recipe.add_argument("--epochs", type=int, help="epochs (90; demo 15).")
    recipe.add_argument("--batch-size", type=int, help="global batch size (128; demo 64).")
    recipe.add_argument("--lr", type=float, help="learning rate (0.01).")
    recipe.add_argument("--momentum", type=float, help="(0.9)")
    recipe.add_argument("--weight-decay", type=float, help="(5e-4)")
    recipe.add_argument("--dropout", type=float, help="(0.5)")
    recipe.add_argument("--init", choices=("paper", "caffe", "glorot", "he"),
                        help="initialisation (paper; demo he).")
    recipe.add_argument("--lr-patience", type=int,
                        help="epochs without validation improvement before lr /= 10 (5).")
    recipe.add_argument("--policy", choices=("randaugment", "augmix"),
                        help="a stronger keras-cv policy on top of the paper's augmentation.")
    recipe.add_argument("--seed", type=int,
                        help="repeat a run exactly (default: none; demo 0).")
    recipe.add_argument("--mixed-precision", action="store_true", default=None,
                        help="train in mixed_bfloat16.")
    recipe.add_argument("--steps-per-epoch", type=int, help="cap on steps per epoch.")
    recipe.add_argument("--ten-crop", action="store_true", default=None,
                        help="final evaluation with the paper's 10 crops.")
    transfer = parser.add_argument_group("transfer learning (ZFNet §5.2)")
    transfer.add_argument("--fine-tune", metavar="WEIGHTS",
                          help="start from a pretrained weights file (.weights.h5, "
                               ".caffemodel, .pth) with a new fc8 for this data's classes; "
                               "the variant and LRN constants follow the file.")
    transfer.add_argument("--freeze", metavar="UP_TO_LAYER",
                          help="with --fine-tune: keep this layer and every one before it "
                               "as pretrained, e.g. conv5.")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--output", help="run folder (default: runs/<data>-<date>-<time>).")
    outputs.add_argument("--resume", action="store_true",
                         help="continue the run in --output with its own settings.")
    outputs.add_argument("--overwrite", action="store_true",
                         help="start again in --output, deleting only that run's own files "
                              "(and replace a previous SavedModel at --export).")
    outputs.add_argument("--export", help="write a SavedModel here at the end.")
    distribution = parser.add_argument_group("distribution")
    distribution.add_argument("--distribute",
                              choices=("none", "mirrored", "data-parallel", "model-parallel"))
    distribution.add_argument("--model-parallel", type=int, metavar="M",
                              help="devices per model replica with --distribute "
                                   "model-parallel (the paper's 2); the other devices of all "
                                   "processes train replicas side by side.")
    distribution.add_argument("--cpu-devices", type=int,
                              help="split the CPU into N logical devices (to run "
                                   "distribution without GPUs).")
    processes = parser.add_argument_group(
        "many processes or machines (JAX; defaults: $KERAS_DISTRIBUTION_NUM_PROCESSES, "
        "_PROCESS_ID, _JOB_ADDRESSES)")
    processes.add_argument("--num-processes", type=int, help="processes in the run.")
    processes.add_argument("--process-id", type=int,
                           help="this process, 0 to N-1; process 0 writes the run folder.")
    processes.add_argument("--job-addresses", metavar="HOST:PORT,...",
                           help="every process's host:port, or process 0's alone.")
    processes.add_argument("--heartbeat-timeout", type=int, metavar="SECONDS",
                           help="a process silent this long counts as dead and the others "
                                "stop (100).")
    parser.add_argument("--quiet", action="store_true", help="no progress bar.")
    return parser, parser.parse_args(argv)


def given_or(value, default):
    """An option's value, or `default` where it was not given (0 is given)."""
    return default if value is None else value


def configure_environment(args):
    """Backend and device settings that must precede importing Keras."""
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with
    # VNNI, AVX-512 BF16 or AMX instructions; on an AVX2-only CPU they trained
    # AlexNet 1.4x faster (BENCHMARKS.md). Read once, when TensorFlow loads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if args.cpu_devices is not None:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}").strip()


def recipe_options(args, training):
    """The Recipe fields the command line sets (argparse leaves the others None)."""
    options = {RECIPE_OPTIONS.get(key, key): value for key, value in vars(args).items()}
    return {field.name: options[field.name] for field in dataclasses.fields(training.Recipe)
            if options.get(field.name) is not None}


def resolved_data_arguments(arguments):
    """`DATA_ARGUMENTS` of `arguments` (a run.json's), with the values unset ones stand for."""
    arguments = {key: arguments.get(key) for key in DATA_ARGUMENTS}
    arguments["validation_fraction"] = given_or(arguments["validation_fraction"],
                                                VALIDATION_FRACTION)
    return arguments


def resume_arguments(args, settings, training):
    """`args` completed from a run's run.json; raises ValueError where they disagree.

    Session options (where and how this process runs) may change; the data
    and the recipe may not, except `training.RESUMABLE_CHANGES` (more epochs,
    a new learning rate). The values compared are those the run trains
    with: `--variant original` agrees with a run started without `--variant`.
    """
    flags = {field: key for key, field in RECIPE_OPTIONS.items()}
    # What the run trains with: run.json's recipe with its defaults resolved.
    recorded = dataclasses.asdict(training.Recipe(**settings["recipe"]))
    differences = [(flags.get(field, field), recorded[field], value)
                   for field, value in recipe_options(args, training).items()
                   if value != recorded[field] and field not in training.RESUMABLE_CHANGES]
    data = resolved_data_arguments(settings.get("arguments", {}))
    differences += [(key, data[key], getattr(args, key)) for key in DATA_ARGUMENTS
                    if key not in SESSION_ARGUMENTS and getattr(args, key) not in (None, data[key])]
    _refuse_differences(differences)
    for key in DATA_ARGUMENTS:
        if getattr(args, key) is None:
            setattr(args, key, settings.get("arguments", {}).get(key))
    return settings["recipe"]


def take_run_arguments(args, settings, keys):
    """Sets `keys` of `args` that were not given to the run's own (run.json's).

    Raises ValueError for a given one that differs. A run.json written
    before it recorded a key leaves that key as given.
    """
    differences = []
    for key in keys:
        if key not in settings:
            continue
        given = getattr(args, key)
        if given is None:
            setattr(args, key, settings[key])
        elif given != settings[key]:
            differences.append((key, settings[key], given))
    _refuse_differences(differences)


def _refuse_differences(differences):
    """Raises ValueError for `(argument, run.json's value, given value)` differences."""
    if differences:
        listed = "; ".join(f"--{key.replace('_', '-')}: {old!r} -> {new!r}"
                           for key, old, new in differences)
        raise ValueError(
            "--resume continues a run with the settings it started with; these differ from "
            f"its run.json: {listed}. Leave them out (they are read from run.json) or start "
            "a new run."
        )


def make_recipe(args, training, source, recorded=None):
    """The Recipe of the command line: demo or paper defaults, or a resumed run's own.

    A prepared folder's squares set the default --resize-size (any other is
    refused by `training.make_datasets`: it would resize them again).
    """
    chosen = recipe_options(args, training)
    if recorded is not None:
        return training.Recipe(**{**recorded, **chosen})
    if source.prepared_size is not None:
        image_size = given_or(chosen.get("image_size"),
                              training.default_image_size(chosen.get("variant")))
        if image_size > source.prepared_size:
            raise ValueError(
                f"{source.name} holds {source.prepared_size}x{source.prepared_size} squares, "
                f"too small for crops of {image_size}; give a smaller --image-size, or prepare "
                f"the data again with --resize-size at least {image_size}.")
        chosen.setdefault("resize_size", source.prepared_size)
    elif not (args.data or args.dataset):
        chosen = {**DEMO_SETTINGS, **chosen}
        chosen.setdefault("resize_size", round(chosen["image_size"] * PAPER_RESIZE_RATIO))
    elif "resize_size" not in chosen and "image_size" in chosen:
        chosen["resize_size"] = max(256, chosen["image_size"])
    return training.Recipe(**chosen)


def default_output(args):
    """runs/<data>-<date>-<time>: a new folder for every run (-2, -3... within a second)."""
    name = (Path(args.data).name if args.data
            else (args.dataset or "demo").split("/")[0].split(":")[0])
    stem = os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    output, number = stem, 1
    while os.path.exists(output):
        number += 1
        output = f"{stem}-{number}"
    return output


def prepare(args, data):
    """--prepare DIR: writes the source once, prints what it did; the exit code."""
    try:
        source = data.from_arguments(args.data, args.dataset, args.data_dir, args.manual_dir,
                                     given_or(args.validation_fraction, VALIDATION_FRACTION))
        if args.prepare_quality is not None and args.prepare_format == "png":
            raise ValueError("--prepare-quality is the JPEG quality; PNG is lossless. "
                             "Received: --prepare-format png")
        data.prepare(source, args.prepare, size=given_or(args.resize_size, PREPARE_SIZE),
                     format=args.prepare_format or "jpeg",
                     quality=given_or(args.prepare_quality, PREPARE_QUALITY))
    except (ValueError, FileNotFoundError, data.OfflineError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    print(f"Train from it with: python train.py --data {os.path.abspath(args.prepare)}")
    return 0


def refuse_prepare_over_several_processes(args, distribute):
    """Raises ValueError if --prepare is given to one of several processes.

    Checked before any process joins (and before the backend's own checks of
    a run over several processes), so every process of a launcher fails at
    once with the same message, connecting to nothing and writing nothing.
    """
    if not args.prepare:
        return
    variable = distribute.ENVIRONMENT["num_processes"]
    named = (args.num_processes if args.num_processes is not None
             else os.environ.get(variable) or None)
    try:
        count = int(named) if named is not None else 1
    except ValueError:
        raise ValueError(f"{variable} must be a whole number. Received: {named!r}") from None
    if count > 1:
        raise ValueError(
            f"--prepare writes {args.prepare} from one process, but this command names "
            f"{count} processes (--num-processes or {variable}): every one would write into "
            "it. Run --prepare once, as a single process, then train with --data on the "
            "prepared folder.")


def join_processes(args, distribute):
    """Checks the distribution options and joins a run over several processes.

    Returns the `Processes` or None. Raises ValueError before touching any
    device.
    """
    distribution = args.distribute or "none"
    processes = distribute.resolve_processes(args.num_processes, args.process_id,
                                             args.job_addresses)
    distribute.check_distribution(distribution)
    if args.model_parallel is not None and distribution != "model-parallel":
        raise ValueError("--model-parallel sets the model axis of --distribute model-parallel. "
                         f"Received: --distribute {distribution}")
    if processes is None:
        if args.heartbeat_timeout is not None:
            raise ValueError("--heartbeat-timeout is for a run over several processes "
                             "(--num-processes).")
        return None
    if distribution not in ("data-parallel", "model-parallel"):
        raise ValueError("A run over several processes needs --distribute data-parallel or "
                         f"model-parallel. Received: --distribute {distribution}")
    distribute.initialize_processes(
        processes,
        heartbeat_timeout=given_or(args.heartbeat_timeout, distribute.HEARTBEAT_TIMEOUT))
    return processes


def main(argv=None):
    parser, args = parse_arguments(argv)
    for key, (valid, bound) in NUMERIC_OPTIONS.items():
        value = getattr(args, key)
        if value is not None and not valid(value):
            print(f"error: --{key.replace('_', '-')} must be {bound}. Received: {value}",
                  file=sys.stderr)
            return 2
    if args.resume and not args.output:
        parser.error("--resume needs --output: the run folder to continue.")
    if args.data:
        args.data = os.path.abspath(os.path.expanduser(args.data))
    if args.prepare:
        args.prepare = os.path.abspath(os.path.expanduser(args.prepare))
    if args.fine_tune:
        args.fine_tune = os.path.abspath(os.path.expanduser(args.fine_tune))
    if args.export:
        args.export = os.path.abspath(os.path.expanduser(args.export))
    configure_environment(args)

    import keras

    from keras_alexnet import data, distribute, training
    from keras_alexnet.run_folder import RunFolder, RunFolderError

    try:
        refuse_prepare_over_several_processes(args, distribute)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.prepare:
        return prepare(args, data)
    print(f"Keras backend: {keras.backend.backend()}")
    output = args.output or default_output(args)
    try:
        if args.resume:
            # The processes join with the run's own distribution; a run.json this
            # process cannot read is refused below, with the other checks.
            take_run_arguments(args, RunFolder(output).read_settings() or {},
                               DISTRIBUTION_ARGUMENTS)
        # Before any JAX computation.
        processes = join_processes(args, distribute)
        writes = processes is None or processes.process_id == 0
        with distribute.start_together():
            settings = RunFolder(output).check(args.resume, args.overwrite, writes=writes)
            recorded = None
            if args.resume:
                recorded = resume_arguments(args, settings, training)
                if writes:  # the others do not export
                    take_run_arguments(args, settings, EXPORT_ARGUMENTS)
            if args.data and not os.path.isdir(os.path.expanduser(args.data)):
                raise ValueError(f"--data: no such folder: {args.data}")
            if args.cpu_devices is not None and keras.backend.backend() == "tensorflow":
                distribute.split_cpu_for_tensorflow(args.cpu_devices)
            source = data.from_arguments(args.data, args.dataset, args.data_dir,
                                         args.manual_dir,
                                         given_or(args.validation_fraction,
                                                  VALIDATION_FRACTION))
            recipe = make_recipe(args, training, source, recorded)
        summary = training.train(
            recipe, source, output, resume=args.resume, overwrite=args.overwrite,
            distribute=args.distribute or "none", export=args.export,
            verbose=0 if args.quiet else "auto",
            arguments={key: getattr(args, key) for key in DATA_ARGUMENTS},
            data_service=args.data_service,
            data_service_timeout=given_or(args.service_timeout,
                                          training.STALL_TIMEOUT_SECONDS),
            model_parallel=given_or(args.model_parallel, distribute.PAPER_MODEL_PARALLEL),
        )
    except (ValueError, FileNotFoundError, FileExistsError, RunFolderError,
            data.OfflineError, ConnectionError, ImportError) as error:
        # Bad arguments, data or output folder, or an optional dependency an
        # argument needs (torch for --fine-tune x.pth, keras-cv for --policy)
        # that is missing: say which; nothing was written.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except training.NaNLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except distribute.LostProcessError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Leave now: at a normal exit JAX would wait for the lost process,
        # then abort this one.
        os._exit(LOST_PROCESS_EXIT_CODE)

    if not writes:
        print(f"Process {processes.process_id} of {processes.num_processes} done; process 0 "
              "wrote the run folder.")
        return 0
    if summary["top1_error"] is not None:
        print(f"Final validation ({summary['evaluation']}): top-1 error "
              f"{100 * summary['top1_error']:.1f}%, top-5 error "
              f"{100 * summary['top5_error']:.1f}% (chance top-1 error "
              f"{100 * summary['chance_top1_error']:.1f}%).")
    print(f"Model: {summary['final_model']} (best: {summary['best_model']}); logs, "
          f"checkpoints and summary.json in {os.path.abspath(output)}")
    if "export" in summary:
        print(f"SavedModel: {summary['export']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
