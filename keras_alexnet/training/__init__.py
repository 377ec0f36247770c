"""The paper's training recipe (§5) as library functions; `train.py` is a thin CLI over them.

    from keras_alexnet import data, training
    source = data.image_folder("~/images")
    summary = training.train(training.Recipe(epochs=30), source, "runs/mine")
    # ZFNet §5.2: a pretrained network, a new fc8, conv1-conv5 kept as they are.
    transfer = training.Recipe(fine_tune="bvlc_alexnet.caffemodel", freeze="conv5")

The run folder (`keras_alexnet.run_folder`) holds `run.json` (the settings),
`backup/` (the checkpoint a killed run resumes from: weights, optimizer
state, epoch, the learning-rate schedule's state), `best.keras` and
`best.json` (its score), `final.keras`, `log.csv`, `tensorboard/`, the
names of the files skipped in `skipped_files.txt` (undecodable ones met in
training, and those the source left out: `Source.skipped`), and, once finished,
`summary.json`. In a run over several processes (`keras_alexnet.distribute`)
process 0 alone writes it; see `train`.

One concept a module: `recipe.py` (the `Recipe`), `model.py` (the model it
builds or fine-tunes), `datasets.py`, `callbacks.py`, `resume.py` (what a
resumed run may change) and `run.py` (`train`).
"""

# The names this package has always had, from the modules that now define them.
from keras_alexnet.data_service import STALL_TIMEOUT_SECONDS
from keras_alexnet.run_folder import RunFolderError
from keras_alexnet.training.callbacks import (
    BestModel,
    EpochSummary,
    NaNLossError,
    PlateauSchedule,
    RunCheckpoint,
    SkippedFilesReport,
    StopOnNaN,
    Validation,
)
from keras_alexnet.training.datasets import CACHE_BYTES, make_datasets
from keras_alexnet.training.model import (
    apply_weight_decay,
    build_model,
    check_fine_tune,
    fine_tuned_model,
    takes_pixel_values,
)
from keras_alexnet.training.recipe import Recipe, default_image_size, trained_variant
from keras_alexnet.training.resume import (
    RESUMABLE_CHANGES,
    _recipe_changes,
    check_resume,
    data_identity,
)
from keras_alexnet.training.run import train

__all__ = ["Recipe", "NaNLossError", "RunFolderError", "train", "build_model",
           "make_datasets", "fine_tuned_model", "check_fine_tune"]
