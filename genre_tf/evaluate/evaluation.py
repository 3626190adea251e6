"""Evaluate a finished run: metrics on dev and test, dev-tuned thresholds, pictures and a report."""
import dataclasses
import io
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf.config import TrainConfig
from genre_tf.data.dataset import PreparedDataset, make_dataset, split_labels
from genre_tf.evaluate.baselines import METRICS, best_floor, constant_floors, degenerate_genres, lift_rows
from genre_tf.evaluate.calibration import calibration_intervals, calibration_lines, reliability_figure
from genre_tf.evaluate.metrics import (NEVER_THRESHOLD, distinct_combinations, f1_scores, predict_labels,
                                       ranking_scores, tune_thresholds, unseen_genres)
from genre_tf.evaluate.projector import write_projector
from genre_tf.evaluate.uncertainty import LEVEL, RESAMPLES, SEED, bootstrap_intervals, format_interval
from genre_tf.files import atomic_path, cache_key, read_json, write_json, write_text
from genre_tf.nets.encoders import encoders_summary
from genre_tf.nets.network import make_predictor, restore_trained
from genre_tf.run_dir import (evaluation_locked, load_config, read_serving_files, require_finished,
                              threshold_probabilities)

REPORT_FILES = ("report.md", "metrics.json", "predictions.npz", "cooccurrence.png", "per_genre_f1.png",
                "f1_by_year.png", "pr_curves.png", "reliability.png")
PREDICTIONS = "predictions.npz"  # dev and test ids, labels and probabilities: what paired comparisons read
NUM_EXAMPLES = 6


@dataclasses.dataclass
class RestoredRun:
    """A trained run brought back: its config, dataset, model (best checkpoint) and feature caches."""

    run_dir: str
    config: TrainConfig
    prepared: PreparedDataset
    model: keras.Model
    caches: dict[str, tuple]
    encoders: dict  # encoders.json: which text encoder and poster backbone, with which weights


def restore_run(run_dir: str) -> RestoredRun:
    """Rebuild a run's model and load its best checkpoint, after checking the dataset still matches."""
    config, prepared, model, caches = restore_trained(run_dir)
    return RestoredRun(run_dir, config, prepared, model, caches, read_json(os.path.join(run_dir, "encoders.json")))


def served_thresholds(run: RestoredRun) -> np.ndarray:
    """The thresholds the run serves with, tuned once on dev at the end of training (serving/serving.json).

    The most-common-class baseline serves nothing: its probabilities are 0 or 1, so 0.5 decides alike.
    """
    if run.config.model.kind == "most_common":
        return np.full(len(run.prepared.genres), 0.5)
    return np.asarray(read_serving_files(run.run_dir)[0]["thresholds"])


def predict_split(run: RestoredRun, split: str, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Ids, multi-hot labels and predicted probabilities of one whole split, in split order."""
    truth = split_labels(run.prepared, split)
    if len(truth["ids"]) == 0:
        raise ValueError(f"the {split} split of {run.prepared.path} is empty; nothing to evaluate")
    dataset = make_dataset(run.prepared, split, batch_size, training=False, input_names=list(run.model.input_names),
                           image_size=run.config.poster.image_size, feature_caches=run.caches)
    return dict(truth, probabilities=make_predictor(run.model)(dataset))


def cooccurrence(labels: np.ndarray) -> np.ndarray:
    """How often each pair of genres appears together (the diagonal: each genre's count)."""
    labels = labels.astype(np.int64)
    return labels.T @ labels


def year_buckets(years: Sequence[int | None]) -> list[str]:
    """Decade labels ('1990s'), 'unknown' where a movie has no year."""
    return [f"{year // 10 * 10}s" if year else "unknown" for year in years]


def scores_by_year(labels, predicted, years) -> list[dict]:
    """Weighted F1 per release decade (the paper's Figure 6), with the number of movies in each."""
    buckets = np.asarray(year_buckets(years))
    rows = []
    for bucket in sorted(set(buckets)):
        rows_in = buckets == bucket
        rows.append({"bucket": bucket, "movies": int(rows_in.sum()),
                     "weighted_f1": f1_scores(labels[rows_in], predicted[rows_in])["weighted_f1"]})
    return rows


def _summary(scores: dict) -> dict:
    return {key: scores[key] for key in ("weighted_f1", "macro_f1", "micro_f1", "samples_f1")}


def compute_metrics(genres: Sequence[str], dev: dict, test: dict, movies: dict[str, dict],
                    thresholds: np.ndarray | None = None) -> dict:
    """Every number of the report, at the given thresholds (by default tuned on dev), applied unchanged to test."""
    thresholds = tune_thresholds(dev["labels"], dev["probabilities"]) if thresholds is None else thresholds
    result = {"genres": list(genres), "thresholds_from": "dev", "thresholds": thresholds.tolist(), "splits": {},
              "intervals_method": {"method": "percentile bootstrap over movies", "resamples": RESAMPLES,
                                   "level": LEVEL, "seed": SEED}}
    for name, part in (("dev", dev), ("test", test)):
        half_predictions = predict_labels(part["probabilities"], 0.5)
        at_half = f1_scores(part["labels"], half_predictions)
        tuned_predictions = predict_labels(part["probabilities"], thresholds)
        tuned = f1_scores(part["labels"], tuned_predictions)
        ranking = ranking_scores(part["labels"], part["probabilities"])
        intervals = {"at_0.5": bootstrap_intervals(part["labels"], half_predictions),
                     "tuned": bootstrap_intervals(part["labels"], tuned_predictions)}
        per_genre = [{"genre": genre, "support": int(tuned["support"][i]), "frequency": float(tuned["frequency"][i]),
                      "precision": float(tuned["precision"][i]), "recall": float(tuned["recall"][i]),
                      "f1": float(tuned["f1"][i]), "f1_at_0.5": float(at_half["f1"][i]),
                      "f1_interval": [intervals["tuned"]["per_genre_f1"][i][k] for k in ("low", "high")],
                      "frequency_x_f1": float(tuned["frequency"][i] * tuned["f1"][i]),
                      "roc_auc": _number(ranking["roc_auc"][i]), "pr_auc": _number(ranking["pr_auc"][i]),
                      "threshold": float(thresholds[i])} for i, genre in enumerate(genres)]
        result["splits"][name] = {
            "movies": len(part["ids"]), "at_0.5": _summary(at_half), "tuned": _summary(tuned), "per_genre": per_genre,
            "intervals": {key: {m: interval[m] for m in METRICS} for key, interval in intervals.items()},
            "distinct_combinations": {"truth": distinct_combinations(part["labels"]),
                                      "predicted_at_0.5": distinct_combinations(half_predictions),
                                      "predicted_tuned": distinct_combinations(tuned_predictions)},
            "by_year": scores_by_year(part["labels"], tuned_predictions,
                                      [movies[i].get("year") for i in part["ids"]]),
            "calibration": calibration_intervals(part["labels"], part["probabilities"])}
    return result


def reference_scores(train_labels: np.ndarray, dev: dict, test: dict, genres: Sequence[str], metrics: dict) -> dict:
    """The honest floors on this split, the model's lift over the best one, and its degenerate genres."""
    floors = constant_floors(train_labels, dev["labels"], test["labels"], genres)
    tuned = metrics["splits"]["test"]["tuned"]
    return {"floors": floors, "lift": {name: tuned[name] - best_floor(floors, name) for name in METRICS},
            "degenerate": degenerate_genres(dev["probabilities"], metrics["thresholds"], genres)}


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def movie_details(prepared: PreparedDataset, ids: Sequence[str], words: int = 40) -> dict[str, dict]:
    """{movie_id: its title, year and plot excerpt (the first `words` words, " ..." when there are more)} for the
    given movies: what the report and the projector show, read record by record, never a catalogue's plots."""
    wanted, details = set(ids), {}
    for movie in prepared.movies():
        if movie["movie_id"] in wanted:
            plot = movie["plot"].split()
            excerpt = " ".join(plot[:words]) + (" ..." if len(plot) > words else "")
            details[movie["movie_id"]] = {"movie_id": movie["movie_id"], "title": movie.get("title", ""),
                                          "year": movie.get("year"), "plot_excerpt": excerpt}
    return details


def choose_examples(test: dict, movies: dict[str, dict], genres: Sequence[str], thresholds,
                    count: int = NUM_EXAMPLES, seed: int = 0) -> list[dict]:
    """A reproducible handful of test predictions with plot excerpts (the paper's Appendix A); `movies` as movie_details
    gives them."""
    order = np.random.default_rng(seed).permutation(len(test["ids"]))[:count]
    examples = []
    for row in sorted(order):
        movie = movies[test["ids"][row]]
        probabilities = test["probabilities"][row]
        examples.append({
            "movie_id": movie["movie_id"], "title": movie.get("title", ""),
            "plot_excerpt": movie["plot_excerpt"],
            "true": [g for g, on in zip(genres, test["labels"][row], strict=True) if on],
            "predicted": [g for g, p, t in zip(genres, probabilities, thresholds, strict=True) if p >= t],
            "probabilities": {g: round(float(p), 3) for g, p in zip(genres, probabilities, strict=True)}})
    return examples


def draw_pictures(genres: Sequence[str], metrics: dict, test: dict) -> dict[str, bytes]:
    """The report's pictures as PNG bytes: {name: png}."""
    import matplotlib

    matplotlib.use("Agg")
    return {"cooccurrence": _png(_cooccurrence_figure(genres, metrics, test)),
            "per_genre_f1": _png(_per_genre_figure(genres, metrics)),
            "f1_by_year": _png(_by_year_figure(metrics)),
            "pr_curves": _png(_pr_curves_figure(genres, metrics, test)),
            "reliability": _png(reliability_figure(genres, test["labels"], test["probabilities"],
                                                   "reliability on the test split"))}


def _cooccurrence_figure(genres: Sequence[str], metrics: dict, test: dict):
    import matplotlib.pyplot as plt

    predicted = predict_labels(test["probabilities"], np.asarray(metrics["thresholds"]))
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for axis, matrix, title in ((axes[0], cooccurrence(test["labels"]), "truth"),
                                (axes[1], cooccurrence(predicted), "predicted (dev-tuned thresholds)")):
        image = axis.imshow(matrix, cmap="viridis")
        axis.set_xticks(range(len(genres)), genres, rotation=60, ha="right")
        axis.set_yticks(range(len(genres)), genres)
        axis.set_title(f"genre co-occurrence, test split: {title}")
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(j, i, str(value), ha="center", va="center", fontsize=7,
                      color="white" if value < matrix.max() / 2 else "black")
        figure.colorbar(image, ax=axis, fraction=0.046)
    return figure


def _per_genre_figure(genres: Sequence[str], metrics: dict):
    import matplotlib.pyplot as plt

    per_genre = metrics["splits"]["test"]["per_genre"]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(genres))
    axis.bar(x - 0.2, [g["f1_at_0.5"] for g in per_genre], 0.4, label="threshold 0.5")
    axis.bar(x + 0.2, [g["f1"] for g in per_genre], 0.4, label="dev-tuned thresholds")
    axis.set_xticks(x, genres, rotation=45, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("F1 (test split)")
    axis.set_title("per-genre F1 on the test split")
    axis.legend()
    return figure


def _by_year_figure(metrics: dict):
    import matplotlib.pyplot as plt

    by_year = metrics["splits"]["test"]["by_year"]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    axis.bar([row["bucket"] for row in by_year], [row["weighted_f1"] for row in by_year])
    for index, row in enumerate(by_year):
        axis.text(index, row["weighted_f1"] + 0.01, f"n={row['movies']}", ha="center", fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("weighted F1 (test, tuned thresholds)")
    axis.set_title("weighted F1 by release decade")
    plt.setp(axis.get_xticklabels(), rotation=45, ha="right")
    return figure


def _pr_curves_figure(genres: Sequence[str], metrics: dict, test: dict):
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    per_genre = metrics["splits"]["test"]["per_genre"]
    columns = min(5, len(genres))
    rows = -(-len(genres) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3 * rows), squeeze=False)
    for index, genre in enumerate(genres):
        axis = axes.flat[index]
        truth = test["labels"][:, index]
        if truth.min() != truth.max():
            precision, recall, _ = precision_recall_curve(truth, test["probabilities"][:, index])
            axis.plot(recall, precision)
        axis.set_title(f"{genre} (AP {per_genre[index]['pr_auc'] or float('nan'):.2f})", fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("recall", fontsize=8)
        axis.set_ylabel("precision", fontsize=8)
    for axis in list(axes.flat)[len(genres):]:
        axis.axis("off")
    figure.suptitle("precision-recall per genre, test split")
    return figure


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_tensorboard(run_dir: str, genres: Sequence[str], test: dict, pictures: dict[str, bytes],
                      metrics: dict) -> None:
    """The pictures as TensorBoard images and the test PR curves in the PR-curves plugin."""
    from tensorboard.plugins.pr_curve import summary as pr_summary

    writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "evaluation"))
    with writer.as_default(step=0):
        tf.summary.text("evaluation/floors_and_lift", "\n".join(floor_lines(metrics)))
        tf.summary.text("evaluation/intervals", "\n".join(interval_lines(metrics)))
        tf.summary.text("evaluation/degenerate_genres", "\n".join(degenerate_lines(metrics["degenerate"])))
        tf.summary.text("evaluation/calibration", "\n".join(calibration_lines(metrics)))
        for name, png in pictures.items():
            tf.summary.image(f"evaluation/{name}", tf.io.decode_png(png, channels=4)[None])
        for index, genre in enumerate(genres):
            summary = pr_summary.pb(f"test/{genre}", labels=test["labels"][:, index].astype(bool),
                                    predictions=test["probabilities"][:, index], num_thresholds=51)
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
    writer.close()


def render_report(run: RestoredRun, metrics: dict) -> str:
    """report.md: which split each number comes from, the tables, the pictures and examples."""
    dev, test = metrics["splits"]["dev"], metrics["splits"]["test"]
    lines = [f"# Evaluation of {os.path.basename(os.path.normpath(run.run_dir))}", "", *sample_size_lines(metrics),
             f"Model `{run.config.model.kind}`{' with oversampling' if run.config.oversample else ''} on dataset "
             f"`{run.prepared.name}` (fingerprint {run.prepared.fingerprint[:12]}), best checkpoint by dev "
             f"weighted F1. Encoders: {encoders_summary(run.encoders)}. "
             f"Dev: {dev['movies']} movies, test: {test['movies']} movies. Per-genre thresholds were tuned on the "
             "**dev** split to maximise each genre's F1 when training ended (the thresholds the export serves, from "
             "`serving/serving.json`) and applied unchanged to **test**; test chose nothing.", "",
             "| split | thresholds | weighted F1 (eq. 2) | macro F1 | micro F1 | samples F1 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, part in (("dev", dev), ("test", test)):
        for label, key in (("0.5", "at_0.5"), ("tuned on dev", "tuned")):
            lines.append(f"| {name} | {label} | " + " | ".join(
                format_interval(part["intervals"][key][m]) for m in METRICS) + " |")
    lines += ["", split_note(metrics["dataset"]["split"]), *text_only_lines(metrics["dataset"]), "",
              interval_note(metrics), "", *floor_lines(metrics), "",
              *degenerate_lines(metrics["degenerate"]),
              *unseen_lines(unseen_genres(metrics["genres"], metrics["thresholds"]))]
    lines += ["", "## Per genre (test split, dev-tuned thresholds; the paper's Table 4)", "",
              "| genre | support | frequency | precision | recall | F1 (95% CI) | F1 @0.5 | frequency x F1 | ROC-AUC "
              "| PR-AUC | threshold |", "| --- " * 11 + "|"]
    for g in test["per_genre"]:
        lines.append(f"| {g['genre']} | {g['support']} | {g['frequency']:.3f} | {g['precision']:.3f} | "
                     f"{g['recall']:.3f} | {g['f1']:.3f} ({g['f1_interval'][0]:.3f}-{g['f1_interval'][1]:.3f}) | "
                     f"{g['f1_at_0.5']:.3f} | {g['frequency_x_f1']:.3f} | "
                     f"{_fmt(g['roc_auc'])} | {_fmt(g['pr_auc'])} | {g['threshold']:.2f} |")
    combos = test["distinct_combinations"]
    lines += ["", "## Genre combinations (test split)", "",
              f"Distinct combinations in the truth: {combos['truth']}; predicted at 0.5: "
              f"{combos['predicted_at_0.5']}; predicted with tuned thresholds: {combos['predicted_tuned']}.", "",
              "![co-occurrence](cooccurrence.png)", "", "![per-genre F1](per_genre_f1.png)", "",
              "## By release decade (test split, tuned thresholds)", "", "| decade | movies | weighted F1 |",
              "| --- | --- | --- |"]
    lines += [f"| {row['bucket']} | {row['movies']} | {row['weighted_f1']:.3f} |" for row in test["by_year"]]
    lines += ["", "![F1 by year](f1_by_year.png)", "", "![PR curves](pr_curves.png)", "", *calibration_lines(metrics),
              "", "## Example predictions (test split, chosen with a fixed seed)", ""]
    for example in metrics["examples"]:
        lines += [f"**{example['title'] or example['movie_id']}** ({example['movie_id']})  ",
                  f"> {example['plot_excerpt']}", "",
                  f"true: {', '.join(example['true']) or '(none)'}; predicted: "
                  f"{', '.join(example['predicted']) or '(none)'}", ""]
    return "\n".join(lines) + "\n"


ID_ORDER_NOTE = ("Split: **in id order** (prepared before 2026-12-07; unless the catalogue carried a split, dev and "
                 "test hold mostly the newest movies): re-prepare the dataset for figures that describe the whole "
                 "catalogue.")


def split_note(record: dict) -> str:
    """Which movies test holds: how the split was drawn and test's release years beside the catalogue's."""
    def years(summary: dict) -> str:
        if not summary.get("dated"):
            return "no release years"
        return (f"median {summary['median']:.0f}, {summary['before_1990']:.0%} released before 1990, "
                f"{summary['from_2000']:.0%} from 2000 on")
    method = record.get("method", "id order")
    line = {"random": f"Split: random (stratified, seed {record.get('seed')}).",
            "time": "Split: **by time**: train holds the oldest movies and test the newest, so test measures how the "
                    "model ages, not how it does on the catalogue.",
            "given": "Split: the catalogue's own."}.get(method, ID_ORDER_NOTE)
    summaries = record.get("years", {})
    if "test" in summaries and "catalogue" in summaries:
        line += f" Test's years: {years(summaries['test'])}; the catalogue's: {years(summaries['catalogue'])}."
    return line


def text_only_lines(dataset: dict) -> list[str]:
    """The movies without a poster, when the dataset has any: where they are and what a poster model saw for them."""
    record = dataset.get("text_only", {})
    if not record.get("movies"):
        return []
    extra = f", {dataset['extra_train']} of them added to train by extra_train" if dataset.get("extra_train") else ""
    return ["", f"Text-only movies (no poster): train {record['train']}, dev {record['dev']}, test {record['test']}"
                f"{extra}. Models that read posters trained on the movies that have one and were scored on every "
                "movie, a text-only one with the mean training poster features, as the SavedModel serves it."]


MIN_TRUSTED_TEST_MOVIES = 30  # under this, a bootstrap over the test movies cannot say how far off a score is


def sample_size_lines(metrics: dict) -> list[str]:
    """The report's first warning: a test split too small for its scores and intervals, or lacking genres."""
    test = metrics["splits"]["test"]
    absent = [g["genre"] for g in test["per_genre"] if g["support"] == 0]
    lines = []
    if test["movies"] < MIN_TRUSTED_TEST_MOVIES:
        lines.append(f"**Warning: the test split holds only {test['movies']} movie(s)**, under "
                     f"{MIN_TRUSTED_TEST_MOVIES}: its scores say little about the model and its intervals cannot "
                     "be trusted; prepare a larger test split.")
    if absent:
        lines.append(f"**Warning: {len(absent)} of {len(test['per_genre'])} genres have no movie in the test "
                     f"split** ({', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''}): the test scores say "
                     "nothing about them.")
    return [*(f"{line}  " for line in lines[:-1]), *lines[-1:], ""] if lines else []


def interval_note(metrics: dict) -> str:
    """What the intervals in brackets are, and how wide they are on this test split (when it can say)."""
    method, weighted = metrics["intervals_method"], metrics["splits"]["test"]["intervals"]["tuned"]["weighted_f1"]
    note = (f"In brackets: the 95% percentile bootstrap interval over the split's movies ({method['resamples']} "
            f"resamples, seed {method['seed']}).")
    movies = metrics["splits"]["test"]["movies"]
    if movies < MIN_TRUSTED_TEST_MOVIES:  # a bootstrap of 1 movie has width 0: no evidence of precision
        return f"{note} On {movies} test movie(s) these intervals cannot be trusted, and no width is given."
    return (f"{note} On these {movies} test movies, "
            f"weighted F1 is known to within {weighted['high'] - weighted['low']:.3f}: a smaller difference between "
            "two models is not evidence; compare them with `evaluate.py RUN_A RUN_B --table` (paired).")


def floor_lines(metrics: dict) -> list[str]:
    """The floors on the same split and this model's lift over the best of them, as markdown."""
    lines = ["## Floors: what predicting without looking at a movie scores on this split", "",
             "| floor (test split) | weighted F1 | macro F1 | micro F1 | samples F1 |",
             "| --- | --- | --- | --- | --- |"]
    for floor in metrics["floors"]:
        lines.append(f"| {floor['model']} | " + " | ".join(f"{floor['test']['tuned'][m]:.4f}" for m in METRICS) + " |")
    lift = metrics["lift"]
    return lines + ["", "Lift of this model (test, dev-tuned thresholds) over the best floor: " + ", ".join(
        f"{name.replace('_f1', '')} {lift[name]:+.4f}" for name in METRICS) + ". Judge a model by this lift: "
        "weighted F1 rewards predicting the frequent genres for every movie."]


def degenerate_lines(degenerate: Sequence[dict]) -> list[str]:
    """Genres whose dev-tuned threshold predicts them for nearly every movie, as markdown."""
    if not degenerate:
        return ["Degenerate genres: none (no tuned threshold predicts a genre for 90% or more of dev)."]
    return ["Degenerate genres: the dev-tuned threshold predicts these for 90% or more of dev movies, so the model "
            "adds nothing for them beyond always saying yes: " + ", ".join(
                f"{d['genre']} (threshold {d['threshold']:.2f}, {d['share_predicted']:.0%} of dev)" for d in degenerate)
            + "."]


def unseen_lines(unseen: Sequence[str]) -> list[str]:
    """Genres with no positive dev movie, as markdown: their threshold (NEVER_THRESHOLD) never predicts them."""
    if not unseen:
        return []
    return ["", f"Genres never predicted: {', '.join(unseen)} had no positive movie on dev, so no threshold could be "
                f"tuned for them; their threshold is {NEVER_THRESHOLD:g}, above any probability."]


def interval_lines(metrics: dict) -> list[str]:
    """Test scores with their 95% intervals, overall and per genre, as markdown (TensorBoard's text tab)."""
    test = metrics["splits"]["test"]
    lines = ["| test, thresholds | " + " | ".join(METRICS) + " |", "| --- " * (len(METRICS) + 1) + "|"]
    for key in ("at_0.5", "tuned"):
        lines.append(f"| {key} | " + " | ".join(format_interval(test["intervals"][key][m]) for m in METRICS) + " |")
    lines += ["", "| genre | F1 (tuned, 95% CI) |", "| --- | --- |"]
    lines += [f"| {g['genre']} | {g['f1']:.3f} ({g['f1_interval'][0]:.3f}-{g['f1_interval'][1]:.3f}) |"
              for g in test["per_genre"]]
    return lines + ["", interval_note(metrics)]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def evaluate_run(run_dir: str, allow_unfinished: bool = False) -> dict:
    """Write report.md, metrics.json and the PNGs into run_dir; returns the metrics.

    Everything is computed in memory before the first file is written, so a failure leaves no partial
    report, and each file is replaced atomically. A second evaluation of the run meanwhile is refused.
    """
    require_finished(run_dir, allow_unfinished)
    with evaluation_locked(run_dir):
        return evaluate_locked(run_dir)


def evaluate_locked(run_dir: str) -> dict:
    """evaluate_run's work, under the run's evaluation lock."""
    run = restore_run(run_dir)
    dev, test = predict_split(run, "dev"), predict_split(run, "test")
    # a model fitted on dev (late fusion) is scored on dev, and tuned, out of fold
    dev["probabilities"] = threshold_probabilities(run_dir, dev["ids"], dev["probabilities"])
    movies = movie_details(run.prepared, [*dev["ids"], *test["ids"]])
    metrics = compute_metrics(run.prepared.genres, dev, test, movies, served_thresholds(run))
    metrics.update(reference_scores(split_labels(run.prepared, "train")["labels"], dev, test, run.prepared.genres,
                                    metrics))
    metrics.update(run_dir=os.path.abspath(run_dir), model=run.config.model.kind, oversample=run.config.oversample,
                   dataset={"name": run.prepared.name, "path": os.path.abspath(run.prepared.path),
                            "fingerprint": run.prepared.fingerprint, "split": run.prepared.split_record,
                            "text_only": run.prepared.metadata.get("text_only", {"movies": 0}),
                            "extra_train": run.prepared.metadata.get("extra_train", {}).get("movies", 0)},
                   split_digest=cache_key(json.dumps(run.prepared.split, sort_keys=True)),
                   examples=choose_examples(test, movies, run.prepared.genres, metrics["thresholds"]))
    pictures = draw_pictures(run.prepared.genres, metrics, test)
    report = render_report(run, metrics)
    for name, png in pictures.items():
        with atomic_path(os.path.join(run_dir, f"{name}.png")) as staging, open(staging, "wb") as handle:
            handle.write(png)
    write_predictions(run_dir, dev, test)
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    write_text(os.path.join(run_dir, "report.md"), report)
    write_tensorboard(run_dir, run.prepared.genres, test, pictures, metrics)
    if run.config.model.kind != "most_common":  # no head, nothing learned to map
        write_projector(run, test, metrics["thresholds"], movies)
    return metrics


def write_predictions(run_dir: str, dev: dict, test: dict) -> None:
    """predictions.npz: each split's ids, labels and probabilities, for paired comparisons between runs."""
    arrays = {f"{split}_{key}": np.asarray(part[key]) for split, part in (("dev", dev), ("test", test))
              for key in ("ids", "labels", "probabilities")}
    with atomic_path(os.path.join(run_dir, PREDICTIONS)) as staging:  # the staging name keeps .npz
        np.savez(staging, **arrays)


def load_predictions(run_dir: str) -> dict[str, np.ndarray]:
    """A run's predictions.npz (written by evaluate_run) as a dict of arrays."""
    path = os.path.join(run_dir, PREDICTIONS)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run `python evaluate.py {run_dir}` first")
    with np.load(path, allow_pickle=False) as stored:
        return {key: stored[key] for key in stored.files}


def model_row(metrics: dict, predictions: dict[str, np.ndarray]) -> dict:
    """table3_row with the run's test predictions at its dev-tuned thresholds, for genre_tf.evaluate.comparison."""
    tuned = predict_labels(predictions["test_probabilities"], np.asarray(metrics["thresholds"]))
    return dict(table3_row(metrics), run_dir=metrics["run_dir"], predictions=tuned[None],
                probabilities=predictions["test_probabilities"][None])


def seedless_config(run_dir: str) -> str:
    """A run's config without its seed, run_dir and branch runs: runs equal in it are seeds of one model."""
    config = load_config(run_dir)
    model = dataclasses.replace(config.model, text_run="", poster_run="")  # late fusion: each seed's own branches
    config = dataclasses.replace(config, seed=0, run_dir="", model=model)
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def check_same_split(metrics_list: Sequence[dict], predictions: Sequence[dict] | None = None) -> None:
    """Refuse to compare runs evaluated on different data or splits. With their predictions, runs on two prepared
    folders of one catalogue (the fast preset's 224 px posters beside the default's 260 px) compare when they
    scored the same movies with the same labels and genres."""
    first = metrics_list[0]
    for index, other in enumerate(metrics_list[1:], start=1):
        same_data = other["dataset"]["fingerprint"] == first["dataset"]["fingerprint"] or (
            predictions is not None and other["genres"] == first["genres"]
            and same_labels(predictions[index], predictions[0]))
        if not same_data or other["split_digest"] != first["split_digest"]:
            raise ValueError(f"{other['run_dir']} was evaluated on {other['dataset']['name']} with another split or "
                             f"data than {first['run_dir']} ({first['dataset']['name']}); their numbers do not compare")


def same_labels(a: dict, b: dict) -> bool:
    """Whether two runs' predictions hold the same dev and test movies, in order, with the same labels."""
    return all(np.array_equal(a[f"{split}_{key}"], b[f"{split}_{key}"])
               for split in ("dev", "test") for key in ("ids", "labels"))


def table3_row(metrics: dict) -> dict:
    """One run's line of Table 3, in the row schema of genre_tf.evaluate.baselines (dev and test, at 0.5 and tuned)."""
    splits = metrics["splits"]
    return {"model": metrics["model"], "kind": "deep", "oversampled": metrics["oversample"],
            "dev": {key: splits["dev"][key] for key in ("at_0.5", "tuned")},
            "test": {key: splits["test"][key] for key in ("at_0.5", "tuned")},
            "thresholds": metrics["thresholds"], "degenerate": metrics.get("degenerate", []),
            "per_genre_f1_tuned": {g["genre"]: g["f1"] for g in splits["test"]["per_genre"]}}


def table3_lines(rows: Sequence[dict]) -> list[str]:
    """Table 3 as markdown: test scores, and each model's lift over the best floor on every metric.

    Floors, classic and deep rows share one schema; a time column appears when any row has `seconds`.
    """
    timed = any("seconds" in row for row in rows)
    lines = ["| model | OS | weighted F1 @0.5 | weighted F1 | macro F1 | micro F1 | samples F1 | "
             "lift over best floor (weighted / macro / micro / samples) |" + (" time |" if timed else ""),
             "| --- " * (9 if timed else 8) + "|"]
    for row in rows:
        tuned = row["test"]["tuned"]
        lift = " / ".join(f"{row['lift'][m]:+.3f}" for m in METRICS) if "lift" in row else "-"
        oversampled = {True: "yes", False: "no"}.get(row.get("oversampled"), "-")
        lines.append(f"| {row['model']} | {oversampled} | {row['test']['at_0.5']['weighted_f1']:.4f} | "
                     + " | ".join(f"{tuned[m]:.4f}" for m in METRICS) + f" | {lift} |"
                     + (f" {row['seconds']:.0f} s |" if "seconds" in row else " - |" if timed else ""))
    return lines


def comparison_table(run_dirs: Sequence[str], metrics_list: Sequence[dict]) -> str:
    """The paper's Table 3 across runs on one dataset and split: the floors, each model's 95% interval, and paired
    differences with the best row and the best floor. Runs whose configs differ only in seed are one row."""
    from genre_tf.evaluate.comparison import add_uncertainty, calibration_table_lines, group_seeds, uncertainty_lines

    predictions = [load_predictions(run_dir) for run_dir in run_dirs]
    check_same_split(metrics_list, predictions)
    first = metrics_list[0]
    stale = [m["run_dir"] for m in metrics_list if "floors" not in m or "intervals_method" not in m]
    if stale:
        raise ValueError(f"{', '.join(stale)}: evaluated by an older genre_tf (no floors or intervals in "
                         "metrics.json); rerun `python evaluate.py RUN_DIR` on each")
    for run_dir, other in zip(run_dirs[1:], predictions[1:], strict=True):
        if not np.array_equal(other["test_ids"], predictions[0]["test_ids"]):
            raise ValueError(f"{run_dir} and {run_dirs[0]} predicted different test movies")
    rows = [dict(model_row(m, p), config=seedless_config(run_dir))
            for run_dir, m, p in zip(run_dirs, metrics_list, predictions, strict=True)]
    rows = group_seeds(rows, key=lambda row: row["config"])
    for row in rows:
        names = [os.path.basename(os.path.normpath(seed["run_dir"])) for seed in row["seed_rows"]]
        row["model"] = f"{row['model']} ({', '.join(names)})"
    floors = first["floors"]
    best = add_uncertainty(rows, floors, predictions[0]["test_labels"], first["genres"])
    lines = [f"Dataset `{first['dataset']['name']}` (fingerprint {first['dataset']['fingerprint'][:12]}), test split "
             f"({first['splits']['test']['movies']} movies); thresholds tuned on dev; floors scored on the same split.",
             "", *uncertainty_lines([*floors, *lift_rows(rows, floors)], best), "", *calibration_table_lines(rows)]
    return "\n".join(lines) + "\n"
