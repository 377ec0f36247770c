"""`train`: a whole training run, checked first, written to its run folder."""

import dataclasses
import math
import os
import time

import keras
import numpy as np

from keras_alexnet import evaluation
from keras_alexnet import distribute as distribute_lib
from keras_alexnet.data_service import STALL_TIMEOUT_SECONDS, EpochJobs, StalledServiceWatchdog
from keras_alexnet.export import check_export_target, export_saved_model
from keras_alexnet.run_folder import (
    BACKUP,
    BEST_MODEL,
    FINAL_MODEL,
    LOG,
    SETTINGS,
    SKIPPED_FILES,
    SUMMARY,
    TENSORBOARD,
    RunFolder,
    write_json_atomically,
)
from keras_alexnet.training.callbacks import (
    BestModel,
    EpochSummary,
    NaNLossError,
    PlateauSchedule,
    RunCheckpoint,
    SkippedFilesReport,
    StopOnNaN,
    Validation,
    _previous_best,
)
from keras_alexnet.training.datasets import make_datasets
from keras_alexnet.training.model import build_model, check_fine_tune, takes_pixel_values
from keras_alexnet.training.recipe import trained_variant
from keras_alexnet.training.resume import check_resume, data_identity


def train(recipe, source, output, resume=False, overwrite=False, distribute="none",
          export=None, log=print, verbose="auto", arguments=None,
          model_parallel=distribute_lib.PAPER_MODEL_PARALLEL, data_service=None,
          data_service_timeout=STALL_TIMEOUT_SECONDS):
    """Trains AlexNet on a source with a recipe; returns the summary dict.

    Everything is checked before the first file is written: a bad recipe,
    source, output folder, export target, distribution or model-parallel
    layout raises and leaves the disk as it was.

    Over several processes (JAX; `distribute.initialize_processes` first),
    every process calls `train` with the same arguments and trains on its
    part of every global batch. Process 0 alone writes the run folder and
    the export; the others only read the run folder, to resume. The checks
    of every process pass or all processes raise
    (`distribute.start_together`), a recipe without a seed gets one drawn
    by process 0 (recorded in `run.json`, so a resumed run repeats it), and
    the call returns on every process once process 0 has written everything.

    Args:
        recipe: a `Recipe`.
        source: a `keras_alexnet.data.Source`.
        output: the run folder (see the module docstring).
        resume: continue the run in `output` from its last checkpoint; the
            recipe and source must be the run's own (more epochs allowed).
        overwrite: start again, deleting the previous run's files in
            `output` (only a keras-alexnet run's own files: a folder holding
            anything else is refused), and replace a previous SavedModel at
            `export`.
        distribute: `"none"`, `"mirrored"` (TensorFlow), `"data-parallel"` or
            `"model-parallel"` (JAX, over every device of every process; see
            `keras_alexnet.distribute`).
        export: a folder to export the final model to as a SavedModel
            (recorded in `run.json`; a resumed run replaces its own previous
            export there).
        log: where progress lines go.
        verbose: Keras' `fit` verbosity (progress bar).
        arguments: extra settings to record in `run.json` (train.py's data
            arguments, so `--resume` alone can rebuild the source).
        model_parallel: the devices of the model axis with
            `distribute="model-parallel"` (the paper's 2).
        data_service: a tf.data service dispatcher, `"grpc://host:port"`:
            its workers make the training batches (see `make_datasets`).
            Files they cannot decode are named in the workers' logs, not in
            `skipped_files.txt`; one training process says when an epoch
            came short. Several processes share each epoch's job, each
            receiving its own part of every global batch (see
            `data_service.EpochJobs`).
        data_service_timeout: with `data_service`, seconds without a
            training batch after which the process ends with a message and
            status `data_service.EXIT_STALLED` (a worker lost for good;
            see `data_service.StalledServiceWatchdog`).
    """
    run = RunFolder(output)
    num_processes = distribute_lib.process_count()
    writes = distribute_lib.process_index() == 0
    if export is not None:
        export = os.path.abspath(os.path.expanduser(os.fspath(export)))
    with distribute_lib.start_together() as agreed:
        settings = run.check(resume, overwrite, writes=writes)
        # A resumed run replaces its own previous export (of fewer epochs).
        replace_export = overwrite or (resume and export == settings.get("export"))
        if export is not None and writes:
            check_export_target(export, replace_export)
        pretrained = check_fine_tune(recipe, source.num_classes)
        # A fine-tuned run trains the file's variant: run.json records that one.
        recipe = dataclasses.replace(recipe, variant=trained_variant(recipe.variant, pretrained))
        resume_note = (check_resume(run, settings, recipe, source, pretrained) if resume
                       else None)
        checkpoint = run.read_checkpoint() if resume else None
        best = _previous_best(run) if resume else -math.inf
        agreed.update(recipe=dataclasses.asdict(recipe), source=source.name,
                      class_names=source.class_names, counts=source.counts,
                      distribute=distribute, model_parallel=model_parallel,
                      checkpoint=checkpoint, best=best)
    if num_processes > 1 and recipe.seed is None:
        # Every process must shuffle, augment and initialise alike.
        recipe = dataclasses.replace(recipe, seed=distribute_lib.shared_seed())
        log(f"Seed {recipe.seed}, drawn by process 0 for every process (recorded in "
            f"{run / SETTINGS}, so --resume repeats it).")
    initial_epoch = checkpoint["epoch"] if checkpoint else 0
    jobs = None
    if data_service is not None:
        # One name for this session's jobs on every process, and no earlier
        # session's: the service never reuses a job name.
        jobs = EpochJobs(data_service, name=f"keras-alexnet-{distribute_lib.shared_seed():08x}",
                         processes=num_processes)
    scope, replicas = distribute_lib.distribution_scope(distribute, recipe.batch_size,
                                                      model_parallel,
                                                      per_process_data=jobs is not None)
    train_data, validation, steps, eval_preset = make_datasets(
        recipe, source, skipped_log=str(run / SKIPPED_FILES) if writes else None,
        first_epoch=initial_epoch, normalize=not takes_pixel_values(pretrained),
        data_service=jobs)
    if recipe.seed is not None:
        keras.utils.set_random_seed(recipe.seed)
    with scope:
        # Built before anything is written: a layer too narrow to split is an error.
        model = build_model(recipe, source.num_classes, pretrained)
        if resume:
            # The checkpoint restores the optimizer's variables too: created here, in
            # the distribution's scope (MirroredStrategy refuses them outside it).
            model.optimizer.build(model.trainable_variables)
    writer = distribute_lib.ModelWriter(model)

    # Nothing was written before this line.
    if writes:
        run.create(resume, overwrite)
        run.write_settings({
            "recipe": dataclasses.asdict(recipe), "source": source.name,
            "class_names": source.class_names, "counts": source.counts,
            "source_identity": data_identity(source), "arguments": arguments or {},
            "backend": keras.backend.backend(), "distribute": distribute, "replicas": replicas,
            "model_parallel": model_parallel if distribute == "model-parallel" else None,
            "processes": num_processes, "export": export,
        })
    new_rate = resume and recipe.learning_rate != settings["recipe"]["learning_rate"]
    if resume:
        run.restore_checkpoint(model, roll_back=writes)
        if new_rate:
            # The checkpoint's optimizer holds the old rate (drops included).
            model.optimizer.learning_rate.assign(recipe.learning_rate)
        started = (settings.get("replicas"), settings.get("processes"))
        if started != (replicas, num_processes):
            # Devices and processes belong to one start: the global batches stay the same.
            resume_note = " ".join(filter(None, [resume_note, (
                f"Training on {replicas} replica(s) over {num_processes} process(es) (the "
                f"previous start had {started[0]} over {started[1]}).")]))
        log(f"Resuming {run.path} after epoch {initial_epoch} of {recipe.epochs}."
            + (f" {resume_note}" if resume_note else ""))

    monitor = "val_top1" if validation is not None else "top1"
    schedule = PlateauSchedule(recipe.lr_factor, recipe.lr_patience, recipe.max_lr_drops,
                               monitor=monitor,
                               state=checkpoint["schedule"] if checkpoint else None)
    if new_rate:  # the rate given is the one the next epoch trains at
        schedule.state["pending_drop"] = False
    summary_printer = EpochSummary(recipe.epochs, recipe.batch_size, log)
    skipped_report = SkippedFilesReport(str(run / SKIPPED_FILES), log)
    if writes:
        skipped_report.record(source.skipped)
    callbacks = [
        *([StalledServiceWatchdog(data_service, data_service_timeout)] if data_service else []),
        StopOnNaN(),
        *([Validation(validation, source.num_classes)] if validation is not None else []),
        schedule,
        *([keras.callbacks.CSVLogger(str(run / LOG), append=resume),
           keras.callbacks.TensorBoard(str(run / TENSORBOARD))] if writes else []),
        BestModel(run, monitor, writer, best),
        summary_printer,
        *([skipped_report] if writes else []),
        RunCheckpoint(run, schedule, writer, resumed_from=checkpoint),
    ]
    if pretrained is not None:
        trained = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
        log(f"Fine-tuning {recipe.fine_tune}: a new fc8 for {source.num_classes} classes"
            + (f", layers up to {recipe.freeze} frozen" if recipe.freeze else "")
            + f"; {trained:,} of {model.count_params():,} parameters trained.")
    where = f"run folder {run.path}"
    if num_processes > 1:
        where = (f"process {distribute_lib.process_index()} of {num_processes}; "
                 + (where if writes else "process 0 writes the run folder"))
    log(f"Training AlexNet ({recipe.variant}) on {source.name}: {source.num_classes} classes, "
        f"{source.counts}, backend {keras.backend.backend()}, {replicas} replica(s); {where}."
        + (f" Training batches from the tf.data service at {data_service}."
           if data_service else ""))
    started = time.perf_counter()
    try:
        model.fit(train_data, epochs=recipe.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
    except NaNLossError as error:
        kept = run.read_checkpoint()
        raise NaNLossError(
            f"{error} Training stopped. " + (
                f"The checkpoint after epoch {kept['epoch']} is kept in {run / BACKUP}; "
                f"continue it at a lower learning rate with --output {run.path} --resume "
                "--lr RATE." if kept else
                "No epoch had finished, so no checkpoint was kept (only run.json and the "
                "logs); lower --lr and start again with --overwrite.")
        ) from None
    except Exception as error:
        # Any other error is this process's own, and is raised as itself.
        if num_processes == 1 or not distribute_lib.is_collective_failure(error):
            raise
        kept = run.read_checkpoint()
        reason = str(error).splitlines()[0].rstrip(".")
        raise distribute_lib.LostProcessError(
            f"Process {distribute_lib.process_index()} of {num_processes} stopped training: "
            f"{reason}. In a run over several processes, this is how the others learn that "
            "one died or stopped with an error (see its output). "
            + (f"The checkpoint after epoch {kept['epoch']} is kept; " if kept else "")
            + "restart every process with --resume."
        ) from error
    wall_time = time.perf_counter() - started
    with writer.latest() as final_model:
        if final_model is not None:
            final_model.save(run / FINAL_MODEL)

    result = {"top1_error": None, "top5_error": None, "examples": 0}
    if validation is not None:
        final_preset = dataclasses.replace(eval_preset, ten_crop=recipe.ten_crop)
        result = evaluation.evaluate(
            model, final_preset.dataset(source.examples("validation"), recipe.batch_size))
    skipped = skipped_report.names() if writes else []
    summary = {
        **result,
        "evaluation": "10-crop" if recipe.ten_crop else "centre crop",
        "epochs": recipe.epochs,
        "wall_time_seconds": wall_time,
        "images_per_second": (float(np.median(summary_printer.images_per_second))
                              if summary_printer.images_per_second else None),
        "backend": keras.backend.backend(),
        "replicas": replicas,
        "processes": num_processes,
        "chance_top1_error": 1 - 1 / source.num_classes,
        "skipped_files": skipped,
        "data_service": data_service,
        "final_model": str(run / FINAL_MODEL),
        "best_model": str(run / BEST_MODEL),
    }
    with writer.latest() as final_model:
        if final_model is not None:
            if export is not None:
                summary["export"] = export_saved_model(final_model, export,
                                                       class_names=source.class_names,
                                                       preset=eval_preset,
                                                       overwrite=replace_export)
            write_json_atomically(run / SUMMARY, summary)
    # The others return once process 0 has written everything.
    distribute_lib.wait_for_every_process("keras_alexnet.training.train: run written")
    return summary
