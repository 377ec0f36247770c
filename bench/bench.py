"""keras-alexnet benchmarks: one command, one run, one table in BENCHMARKS.md.

    python bench/bench.py                                # the default sections
    python bench/bench.py --sections implementations     # LRN / grouped conv choices
    python bench/bench.py --sections peak reference keras --steps 5
    python bench/bench.py --sections peak keras --dtypes float32 --repeats 3

Sections:
    peak             float32 and bfloat16 matrix-multiply peak (torch, FLOP/s)
    reference        the original AlexNet written in PyTorch eager code
    keras            keras_alexnet.AlexNet() on each backend, float32 and
                     mixed_bfloat16, training step and inference
    implementations  per backend: grouped conv "native" vs "split" and LRN
                     "ops" vs "native", training step; TensorFlow with its
                     oneDNN kernels off too
    pipeline         the tf.data training pipeline, decode + augment
    listing          starting image_folder on a 100,000-file folder against a
                     plain os.scandir walk of it
    prepared         prepare() on ImageNet-like JPEGs (500x375, about 110 KB),
                     then the training pipeline on the raw files against the
                     prepared folder: images per CPU-second, and the cores that
                     would feed the H100 training speed
    memory           peak resident memory of a batch-128 float32 training process
    processes        JAX data parallelism on this CPU: one process of one core
                     against two processes of one core each (the collectives' cost)

Every Keras measurement runs in a fresh process (the backend is fixed when
Keras is imported), with TensorFlow's oneDNN kernels on as train.py sets
them. A speed is the median of the timed steps. Ratios are only meaningful
within one run: the machine is shared and noisy, so `--repeats N` measures
each Keras row N times, each beside a fresh reference run, and reports the
medians. The table is written between markers in BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")
# A measurement still running after this long is reported as timed out.
WORKER_TIMEOUT_SECONDS = 300
# Multiply-adds of one forward pass of the original AlexNet at 227x227.
FORWARD_MACS = 724_406_816
# A training step costs about three forward passes (forward, two backward).
TRAIN_FLOPS_PER_IMAGE = 3 * 2 * FORWARD_MACS
INFER_FLOPS_PER_IMAGE = 2 * FORWARD_MACS
# The JAX backend's float32 training speed on one H100 (BENCHMARKS.md): what
# an input pipeline must feed.
H100_TRAIN_IMAGES_PER_SECOND = 10_640
# The listing section's folder: classes x files, hard links to one tiny JPEG
# per class (a file system allows about 65,000 links to one file).
LISTING_CLASSES, LISTING_FILES_PER_CLASS = 100, 1000
# The prepared section's ImageNet-like images: size, JPEG quality, and the
# exponent of their 1/f^a spectrum, chosen so that a file is about 110 KB.
PHOTO_SHAPE, PHOTO_QUALITY, PHOTO_SPECTRUM_EXPONENT = (375, 500), 90, 1.05
PHOTO_CLASSES, PHOTO_IMAGES_PER_CLASS = 4, 128
# Epochs of them each pipeline is timed over, after one epoch of warm-up.
FEED_EPOCHS = 3


def _timed(step, steps, warmup, budget_seconds=60.0):
    """Median seconds per call of `step`: `warmup` untimed calls, then up to
    `steps` timed calls, fewer (at least one) once `budget_seconds` have
    passed. The median, not the mean: a step slowed by another process on
    this shared machine should not move the figure."""
    for _ in range(warmup):
        step()
    durations = []
    while len(durations) < steps and (not durations or sum(durations) < budget_seconds):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


# ----------------------------------------------------------------- workers


def _torch_device():
    """CUDA when PyTorch sees a GPU (as Keras' torch and JAX backends do), else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _synchronized(step):
    """`step`, then a wait for the GPU's queued work, so that timings are real."""
    import torch

    def run():
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return run


def worker_peak(args):
    import torch

    device = _torch_device()
    size = 8192 if device.type == "cuda" else 2048
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
              "size": size}
    for dtype in ("float32", "bfloat16"):
        a = torch.randn(size, size, dtype=getattr(torch, dtype), device=device)
        b = torch.randn(size, size, dtype=getattr(torch, dtype), device=device)
        # bfloat16 without AVX-512 BF16 / AMX falls back to slow code: bound the time.
        seconds = _timed(_synchronized(lambda: torch.mm(a, b)), steps=10, warmup=1,
                         budget_seconds=10)
        result[dtype] = 2 * size**3 / seconds
    return result


def worker_reference(args):
    import torch

    from bench.torch_reference import torch_alexnet

    device = _torch_device()
    model, _ = torch_alexnet("original", classes=1000)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, 227, 227, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    def train_step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    def infer_step():
        with torch.no_grad():
            model(x)

    model.train()
    train = _timed(_synchronized(train_step), args.steps, args.warmup)
    model.eval()
    infer = _timed(_synchronized(infer_step), args.steps, args.warmup)
    return {"train": args.batch_size / train, "infer": args.batch_size / infer}


def worker_keras(args):
    import keras
    import numpy as np

    import keras_alexnet

    if args.dtype != "float32":
        keras.mixed_precision.set_dtype_policy(args.dtype)
    model = keras_alexnet.AlexNet(
        grouped_conv_implementation=args.grouped_conv,
        lrn_implementation=args.lrn,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    rng = np.random.default_rng(0)
    # On the backend's device once, as the reference's tensors are: a GPU
    # would otherwise time a host-to-device copy of the batch every step.
    x = keras.ops.convert_to_tensor(
        rng.normal(size=(args.batch_size, 227, 227, 3)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.integers(0, 1000, args.batch_size))
    result = {}
    if "train" in args.modes:
        train = _timed(lambda: model.train_on_batch(x, y), args.steps, args.warmup)
        result["train"] = args.batch_size / train
    if "infer" in args.modes:
        infer = _timed(lambda: model.predict_on_batch(x), args.steps, args.warmup)
        result["infer"] = args.batch_size / infer
    return result


def worker_pipeline(args):
    from keras_alexnet import data, presets

    root = Path(args.scratch) / "pipeline_images"
    if not root.exists():
        data.write_synthetic_image_folder(root, classes=4, images_per_class=64,
                                          image_size=(300, 400), seed=0)
    source = data.image_folder(root, validation_fraction=0.0)
    preset = presets.TrainPreset(crop_size=227)
    dataset = preset.dataset(source.train, batch_size=args.batch_size,
                             shuffle=False).repeat()
    iterator = iter(dataset)
    seconds = _timed(lambda: next(iterator), args.steps * 2, args.warmup)
    return {"images_per_second": args.batch_size / seconds}


def _scandir_walk(root):
    """Files below `root`: the plain os.scandir walk the listing is compared with."""
    count, pending = 0, [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    pending.append(entry.path)
                else:
                    count += 1
    return count


def _seconds(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def worker_listing(args):
    import numpy as np
    from PIL import Image

    from keras_alexnet import data

    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="listing-", dir=args.scratch))
    try:
        for label in range(LISTING_CLASSES):
            folder = root / f"class{label:03d}"
            folder.mkdir()
            original = root / f"class{label:03d}.jpg"
            Image.fromarray(np.full((8, 8, 3), label, np.uint8)).save(original)
            for index in range(LISTING_FILES_PER_CLASS):
                os.link(original, folder / f"{index:05d}.jpg")
            original.unlink()
        files = _scandir_walk(root)
        data.image_folder(root)  # both timings start from the same warm caches
        walks, starts = [], []
        for _ in range(args.steps):
            walks.append(_seconds(lambda: _scandir_walk(root)))
            starts.append(_seconds(lambda: data.image_folder(root)))
    finally:
        shutil.rmtree(root)
    return {"files": files, "scandir_seconds": statistics.median(walks),
            "image_folder_seconds": statistics.median(starts)}


def _photo_like(rng):
    """An RGB image with a photograph's 1/f spectrum (so its JPEG has a photo's size)."""
    import numpy as np

    height, width = PHOTO_SHAPE
    frequency = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    frequency[0, 0] = 1
    fields = np.stack([np.fft.irfft2((rng.normal(size=frequency.shape)
                                      + 1j * rng.normal(size=frequency.shape))
                                     / frequency**PHOTO_SPECTRUM_EXPONENT, s=(height, width))
                       for _ in range(3)], -1)
    fields = fields @ (np.eye(3) + 0.3 * rng.normal(size=(3, 3)))
    fields = (fields - fields.mean()) / fields.std()
    return np.clip(128 + 50 * fields + rng.uniform(-40, 40, 3), 0, 255).astype(np.uint8)


def _photo_folders(scratch):
    """The ImageNet-like raw folder (written once) and where its preparation goes."""
    import numpy as np
    import tensorflow as tf

    raw, prepared = Path(scratch) / "photos", Path(scratch) / "photos-256"
    marker = raw / ".complete"
    if not marker.exists():
        rng = np.random.default_rng(0)
        for label in range(PHOTO_CLASSES):
            (raw / f"class{label}").mkdir(parents=True, exist_ok=True)
            for index in range(PHOTO_IMAGES_PER_CLASS):
                encoded = tf.io.encode_jpeg(_photo_like(rng), quality=PHOTO_QUALITY)
                tf.io.write_file(str(raw / f"class{label}" / f"{index:04d}.jpg"), encoded)
        marker.write_text("")
    return raw, prepared


def worker_prepare(args):
    from keras_alexnet import data

    raw, prepared = _photo_folders(args.scratch)
    shutil.rmtree(prepared, ignore_errors=True)
    files = list(raw.rglob("*.jpg"))
    source = data.image_folder(raw, validation_fraction=0.0)
    seconds = _seconds(lambda: data.prepare(source, prepared, size=256, log=lambda line: None))
    written = sum(path.stat().st_size for path in prepared.glob("*.tfrecord"))
    return {"images": len(files), "images_per_second": len(files) / seconds,
            "raw_kb": sum(path.stat().st_size for path in files) / len(files) / 1000,
            "prepared_kb": written / len(files) / 1000}


def worker_feed(args):
    import resource

    import tensorflow as tf

    from keras_alexnet import data, presets

    raw, prepared = _photo_folders(args.scratch)
    source = (data.image_folder(raw, validation_fraction=0.0) if args.feed == "raw"
              else data.prepared(prepared))
    # --seed -1: an unseeded stream (not deterministic: no order kept).
    dataset = presets.TrainPreset().epochs(source, args.batch_size,
                                           seed=None if args.seed < 0 else args.seed)
    if args.threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = args.threads
        options.threading.max_intra_op_parallelism = 1
        dataset = dataset.with_options(options)
    # Whole epochs: the shuffle buffer holds more images than an epoch of this
    # folder, so a part of an epoch could come out of the buffer undecoded.
    steps_per_epoch = source.counts["train"] // args.batch_size
    iterator = iter(dataset)
    for _ in range(steps_per_epoch):
        next(iterator)

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    steps = FEED_EPOCHS * steps_per_epoch
    cpu, wall = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        next(iterator)
    images = steps * args.batch_size
    return {"images_per_second": images / (time.perf_counter() - wall),
            "images_per_cpu_second": images / (cpu_seconds() - cpu)}


def worker_processes(args):
    """One process of a JAX data-parallel training, pinned to `--cores`.

    With KERAS_DISTRIBUTION_* set it joins a run over several processes;
    `--batch-size` is the global batch, split over the processes.
    """
    os.sched_setaffinity(0, [int(core) for core in args.cores])
    import keras
    import numpy as np

    import keras_alexnet
    from keras_alexnet import distribute

    processes = distribute.resolve_processes()
    if processes is not None:
        keras.utils.set_random_seed(distribute.initialize_processes(processes))
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    model = keras_alexnet.AlexNet()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    # This process's part of the global batch; Keras assembles the global one.
    local = args.batch_size // distribute.process_count()
    rng = np.random.default_rng(distribute.process_index())
    x = rng.normal(size=(local, 227, 227, 3)).astype("float32")
    y = rng.integers(0, 1000, local)
    cpu_seconds = []

    def step():
        start = time.process_time()
        model.train_on_batch(x, y)
        cpu_seconds.append(time.process_time() - start)

    seconds = _timed(step, args.steps, args.warmup)
    # This process's CPU time (every thread's) per timed step: the machine is
    # shared, and CPU time moves less with the load than wall time does.
    result = {"train": args.batch_size / seconds, "step_seconds": seconds,
              "cpu_seconds": statistics.median(cpu_seconds[args.warmup:])}
    if processes is not None:
        result["all_reduce_seconds"] = _all_reduce_seconds(model.count_params(), args)
    return result


def _all_reduce_seconds(count, args):
    """Seconds to sum `count` float32 values over the processes, as the gradients are."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("processes",))
    local = np.ones((1, count), np.float32)
    stacked = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec("processes")), local)
    total = jax.jit(lambda values: values.sum(axis=0),
                    out_shardings=NamedSharding(mesh, PartitionSpec()))
    return _timed(lambda: total(stacked).block_until_ready(), args.steps, args.warmup)


WORKERS = {
    "peak": worker_peak,
    "reference": worker_reference,
    "keras": worker_keras,
    "pipeline": worker_pipeline,
    "listing": worker_listing,
    "prepare": worker_prepare,
    "feed": worker_feed,
    "processes": worker_processes,
}


def run_worker(name, backend=None, environment=None, **options):
    """Runs one worker in a fresh process; returns its result and peak memory.

    TensorFlow's oneDNN kernels are on, as train.py sets them, unless
    `environment` or the caller's own environment says otherwise."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        command += [flag, *value] if isinstance(value, (list, tuple)) else [flag, str(value)]
    env = {"TF_ENABLE_ONEDNN_OPTS": "1", **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           **(environment or {})}
    if backend:
        env["KERAS_BACKEND"] = backend
    try:
        process = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                                 timeout=WORKER_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return {"timed_out": True}
    if process.returncode != 0:
        raise RuntimeError(f"worker {name} ({backend}) failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def _worker_main(args):
    import resource

    result = WORKERS[args.worker](args)
    # ru_maxrss is in KiB on Linux.
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


# ---------------------------------------------------------------- sections


def section_peak(args, report):
    peak = run_worker("peak")
    report["peak"] = peak
    return [
        "| matmul peak | GFLOP/s |",
        "|---|---:|",
        f"| float32 (torch.mm {peak['size']}, {peak['device']}) | {peak['float32'] / 1e9:.0f} |",
        f"| bfloat16 (torch.mm {peak['size']}, {peak['device']}) | {peak['bfloat16'] / 1e9:.0f} |",
    ]


def _peak_fraction(images_per_second, flops_per_image, report, dtype):
    peaks = report.get("peak", {})
    peak = peaks.get("float32")
    if "bfloat16" in dtype and peak:
        # A CPU without bfloat16 hardware (no AVX-512 BF16 / AMX) emulates it
        # slowly: the reachable peak is then the float32 one.
        peak = max(peak, peaks.get("bfloat16", 0))
    return f"{images_per_second * flops_per_image / peak:.0%}" if peak else "n/a"


def section_reference(args, report):
    reference = run_worker("reference", batch_size=args.batch_size,
                           steps=args.steps, warmup=args.warmup)
    report["reference"] = reference
    return [
        f"PyTorch eager reference (bench/torch_reference.py), batch {args.batch_size}: "
        f"training {reference['train']:.1f} images/s, inference "
        f"{reference['infer']:.1f} images/s "
        f"({_peak_fraction(reference['train'], TRAIN_FLOPS_PER_IMAGE, report, 'float32')}"
        " of the float32 peak in training)."
    ]


def _bfloat16_is_emulated(report):
    peaks = report.get("peak", {})
    return "bfloat16" in peaks and peaks["bfloat16"] < peaks["float32"]


def _keras_pairs(args, report, backend, dtype):
    """(reference, keras) results for one row. With --repeats N > 1 the row
    is measured N times, each right after a fresh reference run, so that each
    ratio compares two processes that ran seconds apart on this noisy machine.
    Emulated bfloat16 (no hardware for it) is measured once: it only shows
    that it is slow."""
    repeats = args.repeats
    if "bfloat16" in dtype and _bfloat16_is_emulated(report):
        repeats = 1
    pairs = []
    for _ in range(repeats):
        reference = (run_worker("reference", batch_size=args.batch_size, steps=args.steps,
                                warmup=args.warmup)
                     if repeats > 1 else report.get("reference"))
        result = run_worker("keras", backend, dtype=dtype, batch_size=args.batch_size,
                            steps=args.steps, warmup=args.warmup,
                            grouped_conv="auto", lrn="auto", modes=["train", "infer"])
        if result.get("timed_out"):
            return []
        pairs.append((reference, result))
    return pairs


def section_keras(args, report):
    rows = [
        "| backend | dtype | runs | train img/s | vs reference | % of peak | infer img/s "
        "| vs reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in args.backends:
        for dtype in args.dtypes:
            pairs = _keras_pairs(args, report, backend, dtype)
            if not pairs:
                rows.append(f"| {backend} | {dtype} | | timed out (> {WORKER_TIMEOUT_SECONDS} s) "
                            "| | | | |")
                continue
            # Medians over the runs: of the speeds, and of each run's ratio
            # to the reference measured beside it.
            row = {}
            for mode in ("train", "infer"):
                row[mode] = statistics.median(result[mode] for _, result in pairs)
                if pairs[0][0]:
                    row[f"{mode}_ratio"] = statistics.median(
                        result[mode] / reference[mode] for reference, result in pairs)
            report.setdefault("keras", {})[f"{backend}/{dtype}"] = {
                **row, "runs": [result for _, result in pairs]}
            ratio = {mode: f"{row[mode + '_ratio']:.2f}x" if f"{mode}_ratio" in row else "n/a"
                     for mode in ("train", "infer")}
            rows.append(
                f"| {backend} | {dtype} | {len(pairs)} | {row['train']:.1f} | {ratio['train']} | "
                f"{_peak_fraction(row['train'], TRAIN_FLOPS_PER_IMAGE, report, dtype)} | "
                f"{row['infer']:.1f} | {ratio['infer']} |"
            )
    if args.repeats > 1:
        rows += ["", f"Each row is the median of its runs; with {args.repeats} runs, each ran "
                     "right after its own reference run and its ratios are to that run."]
    return rows


def section_implementations(args, report):
    rows = [
        "| backend | grouped conv | LRN | TensorFlow oneDNN | train img/s |",
        "|---|---|---|---|---:|",
    ]
    for backend in args.backends:
        choices = [("native", "ops", "on"), ("split", "ops", "on"), ("split", "native", "on"),
                   ("native", "native", "on")]
        if backend == "tensorflow":
            # TensorFlow's own default on CPUs without VNNI, AVX-512 BF16 or AMX.
            choices.append(("split", "native", "off"))
        for grouped_conv, lrn, onednn in choices:
            result = run_worker("keras", backend, dtype="float32",
                                environment={"TF_ENABLE_ONEDNN_OPTS": str(int(onednn == "on"))},
                                batch_size=args.batch_size, steps=args.steps,
                                warmup=args.warmup, grouped_conv=grouped_conv, lrn=lrn,
                                modes=["train"])
            report.setdefault("implementations", {})[
                f"{backend}/{grouped_conv}/{lrn}/{onednn}"] = result
            speed = "timed out" if result.get("timed_out") else f"{result['train']:.1f}"
            shown = onednn if backend == "tensorflow" else "-"
            rows.append(f"| {backend} | {grouped_conv} | {lrn} | {shown} | {speed} |")
    return rows


def section_pipeline(args, report):
    result = run_worker("pipeline", batch_size=args.batch_size, steps=args.steps,
                        warmup=args.warmup, scratch=args.scratch)
    report["pipeline"] = result
    line = (f"Training pipeline (decode JPEG, resize, crop, flip, PCA lighting, "
            f"normalise), 2 CPU threads: {result['images_per_second']:.0f} images/s")
    tensorflow = report.get("keras", {}).get("tensorflow/float32", {})
    if "train" in tensorflow:
        line += f", {result['images_per_second'] / tensorflow['train']:.1f}x TensorFlow float32 training"
    return [line + "."]


def section_listing(args, report):
    result = run_worker("listing", steps=args.steps, scratch=args.scratch)
    report["listing"] = result
    ratio = result["image_folder_seconds"] / result["scandir_seconds"]
    return [
        f"Starting `image_folder` on a folder of {result['files']:,} files "
        f"({LISTING_CLASSES} classes, hard links to tiny JPEGs, page cache warm): "
        f"{result['image_folder_seconds'] * 1000:.0f} ms against "
        f"{result['scandir_seconds'] * 1000:.0f} ms for a plain `os.scandir` walk of it: "
        f"{ratio:.1f}x (medians of {args.steps})."
    ]


def section_prepared(args, report):
    prepared = run_worker("prepare", scratch=args.scratch)
    runs = {(feed, threads): [] for feed in ("raw", "prepared") for threads in (1, 0)}
    for _ in range(args.repeats):
        for feed, threads in runs:
            runs[feed, threads].append(run_worker("feed", feed=feed, threads=threads,
                                                  batch_size=args.batch_size,
                                                  scratch=args.scratch))
    medians = {key: {name: statistics.median(run[name] for run in values)
                     for name in ("images_per_second", "images_per_cpu_second")}
               for key, values in runs.items()}
    report["prepared"] = {"prepare": prepared, "feed": {
        f"{feed}/{threads or 'all'}": value for (feed, threads), value in medians.items()}}
    rows = [
        f"`prepare` wrote {prepared['images']} ImageNet-like JPEGs ({PHOTO_SHAPE[1]}x"
        f"{PHOTO_SHAPE[0]}, {prepared['raw_kb']:.0f} KB each) as 256x256 JPEG squares "
        f"({prepared['prepared_kb']:.0f} KB each) at {prepared['images_per_second']:.0f} "
        f"images/s on {os.cpu_count()} CPUs.",
        "",
        "| training pipeline (TrainPreset.epochs, batch "
        f"{args.batch_size}) | images per CPU-second (runs) | 1 thread img/s | "
        f"{os.cpu_count()} threads img/s | cores to feed {H100_TRAIN_IMAGES_PER_SECOND:,} "
        "img/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for feed, label in (("raw", "raw JPEG files (decode, resize, crop)"),
                        ("prepared", "prepared folder (decode only the crop window)")):
        per_cpu = medians[feed, 1]["images_per_cpu_second"]
        each = ", ".join(f"{run['images_per_cpu_second']:.0f}" for run in runs[feed, 1])
        rows.append(f"| {label} | {per_cpu:.0f} ({each}) | "
                    f"{medians[feed, 1]['images_per_second']:.0f} | "
                    f"{medians[feed, 0]['images_per_second']:.0f} | "
                    f"{H100_TRAIN_IMAGES_PER_SECOND / per_cpu:.0f} |")
    ratio = medians["prepared", 1]["images_per_cpu_second"] / medians[
        "raw", 1]["images_per_cpu_second"]
    rows += ["", f"Prepared data reads {ratio:.1f}x faster per core (images per CPU-second "
                 f"of the one-thread runs, medians of {args.repeats}; each run in its own "
                 f"process, {FEED_EPOCHS} epochs of {prepared['images']} images timed after "
                 "one of warm-up)."]
    return rows


def section_determinism(args, report):
    """What a seeded (deterministic) training stream costs against an unseeded one."""
    runs = {"seeded": [], "unseeded": []}
    for _ in range(args.repeats):
        for mode in runs:  # alternated, so that load changes touch both alike
            runs[mode].append(run_worker("feed", feed="raw", batch_size=args.batch_size,
                                         seed=0 if mode == "seeded" else -1,
                                         scratch=args.scratch))
    medians = {mode: statistics.median(run["images_per_second"] for run in values)
               for mode, values in runs.items()}
    report["determinism"] = medians
    rows = [f"| TrainPreset.epochs on raw JPEGs, batch {args.batch_size}, "
            f"{os.cpu_count()} threads | images/s, median (runs) |", "|---|---:|"]
    for mode, label in (("seeded", "seed=0 (deterministic: order kept)"),
                        ("unseeded", "seed=None (not deterministic)")):
        each = ", ".join(f"{run['images_per_second']:.0f}" for run in runs[mode])
        rows.append(f"| {label} | {medians[mode]:.0f} ({each}) |")
    rows += ["", f"The seeded stream runs at {medians['seeded'] / medians['unseeded']:.2f}x "
                 f"the unseeded one's speed (medians of {args.repeats}; each run in its own "
                 f"process, {FEED_EPOCHS} epochs timed after one of warm-up)."]
    return rows


def section_memory(args, report):
    result = run_worker("keras", "tensorflow", dtype="float32", batch_size=128,
                        steps=2, warmup=1, grouped_conv="auto", lrn="auto", modes=["train"])
    report["memory"] = result
    return [f"Peak resident memory of a batch-128 float32 training process "
            f"(TensorFlow backend): {result['peak_rss_gib']:.2f} GiB."]


def _data_parallel(core_groups, batch_size, args):
    """Training images/s of one JAX process per group of CPU cores, batch split over them."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]

    def process(index):
        environment = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
        if len(core_groups) > 1:
            environment.update(KERAS_DISTRIBUTION_NUM_PROCESSES=str(len(core_groups)),
                               KERAS_DISTRIBUTION_PROCESS_ID=str(index),
                               KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}")
        return run_worker("processes", "jax", environment, batch_size=batch_size,
                          steps=args.steps, warmup=args.warmup,
                          cores=[str(core) for core in core_groups[index]])

    with ThreadPoolExecutor(len(core_groups)) as pool:
        results = list(pool.map(process, range(len(core_groups))))
    if any(result.get("timed_out") for result in results):
        return {"timed_out": True}
    # Process 0's timings; the CPU time of all.
    return {**results[0], "cpu_seconds": sum(result["cpu_seconds"] for result in results)}


def section_processes(args, report):
    half = args.batch_size // 2
    runs = [("1 process, 1 core", 1, half, [[0]]),
            ("1 process, 2 cores", 1, args.batch_size, [[0, 1]]),
            ("2 processes, 1 core each", 2, args.batch_size, [[0], [1]])]
    rows = ["| setup | processes | global batch | train img/s | vs 1 process, 1 core | "
            "img per CPU-second | vs 1 process, 1 core | all-reduce of the gradients |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    results = {}
    for name, processes, batch_size, core_groups in runs:
        result = results[name] = _data_parallel(core_groups, batch_size, args)
        if result.get("timed_out"):
            rows.append(f"| {name} | {processes} | {batch_size} | timed out | | | | |")
            continue
        result["per_cpu_second"] = batch_size / result["cpu_seconds"]
        first = results[runs[0][0]]
        all_reduce = (f"{result['all_reduce_seconds']:.2f} s (step {result['step_seconds']:.1f} s)"
                      if "all_reduce_seconds" in result else "")
        rows.append(
            f"| {name} | {processes} | {batch_size} | {result['train']:.1f} | "
            f"{result['train'] / first['train']:.2f}x | {result['per_cpu_second']:.2f} | "
            f"{result['per_cpu_second'] / first['per_cpu_second']:.2f}x | {all_reduce} |")
    report["processes"] = results
    return [
        f"JAX `keras.distribution.DataParallel`, AlexNet 227x227 float32 training, on "
        f"{_cpu_model()} ({os.cpu_count()} CPUs); each process pinned to its cores, one "
        "device per process, the processes' collectives through gloo on localhost.",
        "",
        *rows,
        "",
        "Two processes of one core each do twice the work of one; what they fall short of "
        "2x in images/s, or of 1x in images per CPU-second (the CPU time of every process), "
        "is the cost of their collectives (an all-reduce of AlexNet's 61M gradients, 244 MB, "
        "every step; timed alone in the last column) and of waiting for each other. No GPU "
        "was available for this run: data-parallel, model-parallel and hybrid runs on GPUs "
        "are not measured.",
    ]


SECTIONS = {
    "peak": section_peak,
    "reference": section_reference,
    "keras": section_keras,
    "implementations": section_implementations,
    "pipeline": section_pipeline,
    "listing": section_listing,
    "prepared": section_prepared,
    "determinism": section_determinism,
    "memory": section_memory,
    "processes": section_processes,
}
BEGIN, END = "<!-- bench.py:begin -->", "<!-- bench.py:end -->"


def _cpu_model():
    """The CPU's model name, as `lscpu` shows it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return models[0] if models else platform.processor() or platform.machine()


def write_report(lines, path):
    """Replaces the generated block of BENCHMARKS.md, keeping the prose around it."""
    path = Path(path)
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS),
                        default=["peak", "reference", "keras", "pipeline", "memory"])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1,
                        help="keras section: measure each row this many times, each "
                             "beside a fresh reference run, and report medians; prepared "
                             "and determinism sections: run each pipeline this many times.")
    parser.add_argument("--scratch", default="/tmp/keras_alexnet_bench")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"),
                        help="Markdown file whose generated block is replaced; '-' prints only.")
    # Worker options (internal).
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--grouped-conv", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--lrn", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], help=argparse.SUPPRESS)
    parser.add_argument("--feed", choices=("raw", "prepared"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cores", nargs="+", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1. Received: {args.repeats}")
    if args.worker:
        sys.path.insert(0, str(ROOT))
        return _worker_main(args)

    command = "python bench/bench.py " + " ".join(sys.argv[1:])
    lines = [
        f"Generated by `{command.strip()}` on {datetime.date.today()} "
        f"({_cpu_model()}, {os.cpu_count()} CPUs, "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up).",
        "",
    ]
    report = {}
    for name in args.sections:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        lines += [f"### {name}", "", *SECTIONS[name](args, report), ""]
        print("\n".join(lines[-3:]), file=sys.stderr, flush=True)
    print("\n".join(lines))
    if args.output != "-":
        write_report(lines, args.output)


if __name__ == "__main__":
    main()
