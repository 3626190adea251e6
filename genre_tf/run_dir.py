"""The run directory, the one hand-off from training to what follows it (evaluate, export, bench, speed).

Training writes a run through this module; everything after training reads it through this module alone,
so a change to training cannot break them. Layout:

    config.json  encoders.json  dataset.json  genres.txt   written when the run is created (config.json last)
    history.csv                                           one row per finished epoch (Keras' CSVLogger)
    checkpoints/best/{weights.*, checkpoint.json}          the best dev epoch's weights, replaced atomically
    serving/{serving.json, warmup_poster.png}             thresholds, fallbacks, warm-up inputs: all export needs
    final.json                                            written last: the run is finished
    .lock                                                 held (flock) while a training writes the run
    .evaluation.lock                                      held (flock) while an evaluation writes its report
"""
import contextlib
import csv
import dataclasses
import fcntl
import glob
import os
import re
import shutil

import numpy as np

from genre_tf.config import TrainConfig, comparable_config, config_from_dict, config_to_dict
from genre_tf.data.dataset import PreparedDataset, changed_files, load_prepared
from genre_tf.files import atomic_path, is_within, read_json, refuse_to_write_into, sha256_of, write_json, write_text

FINAL = "final.json"
LOCK = ".lock"
EVALUATION_LOCK = ".evaluation.lock"   # held by evaluate_run: report, predictions and TensorBoard events
HISTORY = "history.csv"                # CSVLogger: one row per finished epoch
BEST = "best"
CHECKPOINT_RECORD = "checkpoint.json"  # inside checkpoints/best: the epoch and dev score the weights come from
MONITOR = "dev_weighted_f1"
DEV_SCORES = ("weighted_f1", "macro_f1", "micro_f1", "samples_f1")
SERVING = "serving"                    # serving.json and warmup_poster.png: all the export reads besides the checkpoint
SERVING_FORMAT = 2  # 2: the warm-up poster is the stored PNG (dataset format 2)
WARMUP_POSTER = "warmup_poster.png"
OUT_OF_FOLD = "dev_out_of_fold.npz"   # dev ids and out-of-fold probabilities: thresholds are tuned on these
CALIBRATED_OUT_OF_FOLD = "dev_calibrated_out_of_fold.npz"  # the same after a calibrator cross-fitted on dev


class RunDirectoryInUse(RuntimeError):
    """Another process holds the run directory's lock (a training) or its evaluation lock (an evaluation)."""


class ServingFilesMissing(FileNotFoundError):
    """A run directory without up-to-date serving files (trained before they existed, or changed since)."""


class RunUnfinished(ValueError):
    """A run still training, or stopped before its end: its best checkpoint may not be the run's best."""


class DatasetChanged(ValueError):
    """The prepared dataset a run was trained on is no longer the one on disk."""


def safe_name(name: str) -> str:
    """A dataset name as one path component: [A-Za-z0-9._-] only and no leading dot, so it stays inside runs/."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "dataset"


def default_run_dir(config: TrainConfig, dataset_name: str) -> str:
    """runs/<dataset>-<model>[-os][-N]: the first such folder that is not finished, so a rerun resumes."""
    base = os.path.join("runs", f"{safe_name(dataset_name)}-{config.model.kind}{'-os' if config.oversample else ''}")
    candidate, number = base, 1
    while os.path.exists(os.path.join(candidate, FINAL)):
        number += 1
        candidate = f"{base}-{number}"
    return candidate


@contextlib.contextmanager
def _flocked(path: str, refusal: str):
    """Hold an exclusive flock on `path`, or raise RunDirectoryInUse(refusal) at once."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryInUse(refusal) from None
        yield  # the lock goes with the file descriptor, also when the process is killed


@contextlib.contextmanager
def locked(run_dir: str):
    """Hold the run directory's exclusive lock, or refuse at once: two trainings would overwrite each other."""
    os.makedirs(run_dir, exist_ok=True)
    with _flocked(os.path.join(run_dir, LOCK), f"{run_dir} is in use by another training (it holds "
                  f"{run_dir}/{LOCK}); wait for it to finish or choose another run_dir"):
        yield


@contextlib.contextmanager
def evaluation_locked(run_dir: str):
    """Hold the run's evaluation lock, or refuse at once: two evaluations would both append TensorBoard events.

    A lock of its own, not the training's: an unfinished run may be evaluated while it trains."""
    with _flocked(os.path.join(run_dir, EVALUATION_LOCK), f"{run_dir} is being evaluated by another process (it "
                  f"holds {run_dir}/{EVALUATION_LOCK}); wait for that evaluation to finish"):
        yield


def refuse_dataset_overlap(run_dir: str, data_path: str) -> None:
    """A run directory may not be, hold or lie inside a prepared dataset: training would overwrite its files."""
    if os.path.exists(data_path) and is_within(data_path, run_dir) and not is_within(run_dir, data_path):
        raise ValueError(f"run_dir={run_dir} holds the prepared dataset {data_path}; a run directory and a prepared "
                         "dataset must be separate folders: choose another run_dir")
    refuse_to_write_into(run_dir, "run_dir", {"data": data_path})


# What create and training write into a run directory; a run refused before its first epoch loses them again.
RUN_FILES = ("config.json", "encoders.json", "genres.txt", "dataset.json", HISTORY, "oversampled_counts.json",
             "logs", "backup", "checkpoints", SERVING, OUT_OF_FOLD)


def discard_untrained(run_dir: str) -> None:
    """Remove what a run that failed before training anything wrote, so a corrected command starts afresh.

    Only the run's own files go (a late-fusion run keeps its trained branches/); the caller holds the lock.
    """
    if read_history(run_dir) or os.path.exists(os.path.join(run_dir, "checkpoints", BEST)):
        return
    for name in RUN_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def remove_if_empty(run_dir: str) -> None:
    """After a refused run: its lock file goes when no run is left there, and the folder when it is then empty."""
    with contextlib.suppress(OSError):
        if not os.path.exists(os.path.join(run_dir, "config.json")):
            os.remove(os.path.join(run_dir, LOCK))
        os.rmdir(run_dir)  # only when empty


def in_use(run_dir: str) -> bool:
    """Whether a training holds the run directory's lock now."""
    path = os.path.join(run_dir, LOCK)
    if not os.path.exists(path):
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def with_absolute_data(config: TrainConfig) -> TrainConfig:
    """The config with its data path made absolute, so the run reads the same data from any folder."""
    if config.data in ("", "demo") or os.path.isabs(config.data):
        return config
    return dataclasses.replace(config, data=os.path.abspath(config.data))


def create(run_dir: str, config: TrainConfig, prepared: PreparedDataset, encoders: dict) -> None:
    """Create the run directory, or check that a reopened one (a resume) holds the same config and encoders."""
    config_path = os.path.join(run_dir, "config.json")
    if os.path.exists(config_path) and not read_history(run_dir) and not os.path.exists(
            os.path.join(run_dir, "checkpoints", BEST)):
        discard_untrained(run_dir)  # left by a run refused before its first epoch: nothing there to resume
        os.makedirs(run_dir, exist_ok=True)
    if os.path.exists(config_path):
        # Options added since are read as they were before (config.LEGACY_DEFAULTS), or as their defaults; a
        # relative data path as it resolves from here.
        if comparable_config(with_absolute_data(load_config(run_dir))) != comparable_config(with_absolute_data(config)):
            raise ValueError(f"{run_dir} holds a run with another config; choose another run_dir")
        recorded = read_json(os.path.join(run_dir, "encoders.json"))
        if recorded != encoders:
            raise ValueError(f"{run_dir} was trained with encoders {recorded}, but this machine resolves the same "
                             f"config to {encoders}; set poster.backbone explicitly or choose another run_dir")
        return
    write_json(os.path.join(run_dir, "encoders.json"), encoders)
    write_text(os.path.join(run_dir, "genres.txt"), "\n".join(prepared.genres) + "\n")
    write_json(os.path.join(run_dir, "dataset.json"), {
        "path": os.path.abspath(prepared.path), "name": prepared.name, "fingerprint": prepared.fingerprint,
        "files": prepared.metadata.get("files", {}), "split": prepared.split,
        "split_method": {k: v for k, v in prepared.split_record.items() if k != "years"}})
    write_json(config_path, config_to_dict(with_absolute_data(config)), indent=2)  # last: it marks a run


def load_config(run_dir: str) -> TrainConfig:
    """A run's config.json, with errors that name the file when it is missing, damaged or empty."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    tree = read_json(path)
    if not isinstance(tree, dict) or not tree:
        raise ValueError(f"{path} is empty: it holds no options, and defaults would describe another run; "
                         "restore it or retrain the run")
    try:
        return config_from_dict(tree)  # JSON, not YAML: YAML 1.1 reads JSON's 1e-05 as a string
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def genres(run_dir: str) -> list[str]:
    """The genre vocabulary the run was trained on (genres.txt), in output order."""
    with open(os.path.join(run_dir, "genres.txt"), encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def read_history(run_dir: str) -> list[dict]:
    """The finished epochs' rows of history.csv, in epoch order; an epoch trained twice keeps its last row."""
    path = os.path.join(run_dir, HISTORY)
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows[int(row["epoch"])] = {"epoch": int(row["epoch"]), "loss": float(row.get("loss") or "nan"),
                                       **{f"dev_{name}": float(row[f"dev_{name}"]) for name in DEV_SCORES}}
    return [rows[epoch] for epoch in sorted(rows)]


def forget_epochs_from(run_dir: str, first_epoch: int) -> None:
    """Drop history.csv's rows of epochs >= first_epoch, in place: a resume trains them again.

    In place, not replaced, because Keras' CSVLogger holds the file open for appending.
    """
    path = os.path.join(run_dir, HISTORY)
    if not os.path.exists(path):
        return
    with open(path, "r+", newline="", encoding="utf-8") as handle:
        lines = handle.readlines()
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) < first_epoch]
        if len(kept) < len(lines):
            handle.seek(0)
            handle.writelines(kept)
            handle.truncate()


def best_row(history: list[dict]) -> dict:
    """The first epoch with the highest dev weighted F1 (later ties do not count as improvements)."""
    return max(history, key=lambda row: row[MONITOR])


def best_checkpoint(run_dir: str) -> str:
    """The best checkpoint's prefix (falling back to the previous one if a swap was interrupted)."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    old = sorted(glob.glob(os.path.join(checkpoints, f".{BEST}.*.old")))  # atomic_path's name while it swaps
    for folder in (os.path.join(checkpoints, BEST), *old):
        if os.path.exists(os.path.join(folder, "weights.index")):
            return os.path.join(folder, "weights")
    raise FileNotFoundError(f"{run_dir} has no checkpoint (checkpoints/{BEST}); train it first")


def checkpoint_record(run_dir: str) -> dict:
    """The best checkpoint's record: its epoch (0-based) and dev weighted F1; {} when there is none."""
    try:
        path = os.path.join(os.path.dirname(best_checkpoint(run_dir)), CHECKPOINT_RECORD)
    except FileNotFoundError:
        return {}
    return read_json(path) if os.path.exists(path) else {}


def checkpoint_identity(run_dir: str) -> dict:
    """Which checkpoint serving files belong to: its epoch and the digest of its index."""
    return {"epoch": checkpoint_record(run_dir).get("epoch"),
            "index_sha256": sha256_of(best_checkpoint(run_dir) + ".index")}


def require_finished(run_dir: str, allow_unfinished: bool = False, can_allow: bool = True) -> None:
    """Refuse a run that is training now or stopped before its end, unless allowed; then say which epoch is used.

    can_allow: whether the command has --allow-unfinished to suggest (recalibrate and migrate have not)."""
    if not os.path.isdir(run_dir):  # not "unfinished": there is no run at all
        raise FileNotFoundError(f"{run_dir} does not exist; name a trained run directory")
    if in_use(run_dir):
        state = "is being trained now (another process holds its lock)"
    elif not os.path.exists(os.path.join(run_dir, FINAL)):
        state = f"is unfinished (no {FINAL}: training stopped before its end)"
    else:
        return
    epoch = checkpoint_record(run_dir).get("epoch")
    best = f"epoch {epoch + 1}" if epoch is not None else "no epoch yet"
    if not allow_unfinished:
        allow = ", or pass --allow-unfinished to use that checkpoint" if can_allow else ""
        raise RunUnfinished(f"{run_dir} {state}; its best checkpoint so far is {best}, which may not be the run's "
                            f"best. Let the training finish (rerun train.py to resume it){allow}")
    print(f"warning: {run_dir} {state}; using its best checkpoint so far ({best})")


def write_serving_files(run_dir: str, record: dict, warmup_poster: bytes) -> None:
    """serving/serving.json and the warm-up poster, replaced together."""
    record = dict(record, format=SERVING_FORMAT, checkpoint=checkpoint_identity(run_dir))
    with atomic_path(os.path.join(run_dir, SERVING)) as staging:
        write_json(os.path.join(staging, "serving.json"), record)
        with open(os.path.join(staging, WARMUP_POSTER), "wb") as handle:
            handle.write(warmup_poster)


def read_serving_files(run_dir: str) -> tuple[dict, bytes]:
    """serving/serving.json and the warm-up poster bytes; ServingFilesMissing when absent or from another checkpoint."""
    path = os.path.join(run_dir, SERVING, "serving.json")
    best_checkpoint(run_dir)  # a run without a checkpoint is that, whatever else it lacks
    if not os.path.exists(path) and not os.path.exists(os.path.join(run_dir, FINAL)):
        raise ServingFilesMissing(f"{run_dir} has no serving files yet: training writes them when it ends, and "
                                  "this run has not ended; let it finish (rerun train.py to resume it)")
    if not os.path.exists(path):
        raise ServingFilesMissing(f"{run_dir} has no serving files ({SERVING}/serving.json); runs trained before "
                                  "genre_tf wrote them lack them: run `python -m genre_tf.train.migrate "
                                  f"{run_dir}` once to compute them from its dataset")
    record = read_json(path)
    if record.get("format") != SERVING_FORMAT or record["checkpoint"] != checkpoint_identity(run_dir):
        raise ServingFilesMissing(f"{path} belongs to another checkpoint than {best_checkpoint(run_dir)}; run "
                                  f"`python -m genre_tf.train.migrate {run_dir}` to compute them again")
    if record["genres"] != genres(run_dir):
        raise ServingFilesMissing(f"{path} has genres {record['genres']}, but genres.txt {genres(run_dir)}")
    with open(os.path.join(run_dir, SERVING, WARMUP_POSTER), "rb") as handle:
        return record, handle.read()


def file_records(run_dir: str, recorded: dict, prepared: PreparedDataset) -> dict[str, list[str]]:
    """The digests to check the dataset's files against: the run's record and the dataset's own, by file name.

    Both, so that a record emptied in one place still leaves the other; names must be plain file names of the
    dataset folder, never paths that would lead the check elsewhere.
    """
    records = {}
    for where, files in ((f"{run_dir}/dataset.json", recorded.get("files", {})),
                         (f"{prepared.path}/dataset.json", prepared.metadata.get("files", {}))):
        if not isinstance(files, dict) or not all(isinstance(name, str) and isinstance(digest, str)
                                                   and name == os.path.basename(name) and name not in ("", ".", "..")
                                                   for name, digest in files.items()):
            raise DatasetChanged(f"{where} is damaged: its 'files' record is not a mapping of file names to "
                                 "digests; retrain the run, or prepare the dataset again")
        for name, digest in files.items():
            records.setdefault(name, []).append(digest)
    return records


def open_dataset(run_dir: str) -> PreparedDataset:
    """The prepared dataset the run was trained on, refused with what changed if it is not that dataset any more."""
    config, recorded = load_config(run_dir), read_json(os.path.join(run_dir, "dataset.json"))
    path = recorded.get("path") or config.data
    prepared = load_prepared(path)
    changes = []
    if prepared.fingerprint != recorded["fingerprint"]:
        changes.append(f"its fingerprint is {prepared.fingerprint}, the run recorded {recorded['fingerprint']} "
                       "(it was prepared again)")
    changes += changed_files(prepared, file_records(run_dir, recorded, prepared))
    if prepared.genres != genres(run_dir):
        changes.append(f"its genres are {prepared.genres}, the run was trained on {genres(run_dir)}")
    if prepared.split != recorded["split"]:
        changes.append("its split differs from the one the run recorded in dataset.json")
    if changes:
        raise DatasetChanged(f"the dataset at {prepared.path} is not the one {run_dir} was trained on: "
                             + "; ".join(changes) + ". Evaluate the run on its own dataset, or retrain it")
    return prepared


def write_out_of_fold(run_dir: str, ids, probabilities: np.ndarray, name: str = OUT_OF_FOLD) -> None:
    """Keep the honest dev probabilities beside the checkpoint, for threshold tuning at train end and in evaluate."""
    with atomic_path(os.path.join(run_dir, name)) as staging:
        np.savez(staging, ids=np.asarray(ids), probabilities=np.asarray(probabilities, np.float32))


def stored_dev_probabilities(run_dir: str, ids, calibrated: bool = True) -> np.ndarray | None:
    """The out-of-fold dev probabilities of a model fitted on dev (the calibrator's when it has one and
    `calibrated`, else late fusion's mix), or None when nothing was fitted on dev."""
    for name in (CALIBRATED_OUT_OF_FOLD, OUT_OF_FOLD)[0 if calibrated else 1:]:
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as stored:
                if stored["ids"].tolist() != list(ids):
                    raise ValueError(f"{path} holds other dev movies than the dataset's dev split; retrain the run")
                return stored["probabilities"]
    return None


def threshold_probabilities(run_dir: str, ids, probabilities: np.ndarray) -> np.ndarray:
    """The dev probabilities to tune thresholds on: the stored out-of-fold ones, else `probabilities`."""
    stored = stored_dev_probabilities(run_dir, ids)
    return probabilities if stored is None else stored
