"""Where genre_tf stands: the paper's Table 3 reproduced in one command, and speed and memory.

    python -m genre_tf.bench table3 --quick            # the embedded demo, short schedules, minutes on a CPU
    python -m genre_tf.bench table3 --data prepared/mmimdb
    python -m genre_tf.bench speed --serve-run RUN     # training, encoders, serving (repeatable) against the peak
    python -m genre_tf.bench speed --serving-only --serve-run RUN  # serving paths side by side, feature caching
    python -m genre_tf.bench speed --serving-only --in-turns --serve-run A --serve-run B  # runs against each other
    python -m genre_tf.bench encoders                  # each encoder alone, float32 and bfloat16, batch 1 and 32
    python -m genre_tf.bench all --quick               # both, into one dated benchmarks/ file

Every figure is measured in the run that prints it, the matmul peak included (genre_tf.bench.speed).
Results are written as markdown and JSON.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
from genre_tf.config import CommandLine


KINDS = ("most_common", "poster", "text_frozen", "text_finetuned", "integrated")
QUICK = ["epochs=10", "patience=4"]
# The paper's Table 3: weighted F1 on its own validation split (no OS, OS); not comparable with other data.
PAPER_TABLE3 = {"most_common": (0.209, None), "poster": (0.232, 0.210), "text_frozen": (0.192, 0.214),
                "text_finetuned": (0.433, 0.431), "integrated": (0.429, 0.453)}
AVERAGE_WEIGHT = 0.7  # the text model's share in the untuned probability average (issue 22's reference)
HISTOGRAM_SIZE = 64  # posters are shrunk to this before the colour-histogram baseline reads them
PUBLISHED = ("Published on MM-IMDb (their own split; not comparable with other data): GMU (Arevalo et al. 2017) "
             "weighted F1 0.617, macro 0.541; MMBT (Kiela et al. 2019) micro 0.668, macro 0.616. The paper's best: "
             "weighted F1 0.453 (integrated, oversampled) on its own IMDb catalogue.")


def for_kind(overrides: Sequence[str], kind: str) -> list[str]:
    """The options that apply to one model: plain `key=value` ones, and `KIND:key=value` ones for that kind."""
    chosen = []
    for item in overrides:
        prefix, sep, rest = item.partition(":")
        if sep and "=" not in prefix:
            if prefix not in KINDS:
                raise ValueError(f"{item!r}: {prefix!r} is not a model kind; kinds are {', '.join(KINDS)}")
            if prefix == kind:
                chosen.append(rest)
        else:
            chosen.append(item)
    return chosen


def _config(data: str, kind: str, oversample: bool, run_dir: str, overrides: Sequence[str]):
    from genre_tf.config import load_config

    return load_config(overrides=[f"data={data}", f"model.kind={kind}", f"oversample={str(oversample).lower()}",
                                  f"run_dir={run_dir}", *for_kind(overrides, kind)])


def reference_rows(data: str, overrides: Sequence[str] = ()):
    """The floors and the classic models (TF-IDF on plots, colour histograms on posters) on the data's split.

    Returns (floor rows, classic rows, test labels) in genre_tf.evaluate.baselines' row schema; classic rows carry
    `seconds` and, for genre_tf.evaluate.comparison, their tuned test `predictions`.
    """
    from genre_tf.data.dataset import split_plots, split_posters, split_labels
    from genre_tf.data.demo import open_prepared
    from genre_tf.data.readers import SPLIT_NAMES
    from genre_tf.evaluate import baselines
    from genre_tf.evaluate.metrics import predict_labels

    prepared = open_prepared(_config(data, "most_common", False, "", overrides).data)
    labels = {split: split_labels(prepared, split)["labels"] for split in SPLIT_NAMES}
    floors = baselines.constant_floors(labels["train"], labels["dev"], labels["test"], prepared.genres)
    classic = []
    for name, read, fit in (
            ("classic: TF-IDF + logistic regression (plot)", split_plots, baselines.tfidf_logistic),
            ("classic: colour histogram + logistic regression (poster)",
             lambda prepared, split: split_posters(prepared, split, HISTOGRAM_SIZE),
             baselines.colour_histogram_logistic)):
        print(f"\n=== table3: {name} ===", flush=True)
        started = time.time()
        inputs = {split: read(prepared, split) for split in SPLIT_NAMES}
        dev, test = fit(inputs["train"], labels["train"], inputs["dev"], labels["dev"], inputs["test"])
        row = baselines.score_probabilities(name, labels["dev"], dev, labels["test"], test, genres=prepared.genres)
        classic.append(dict(row, seconds=round(time.time() - started, 1), probabilities=test[None],
                            predictions=predict_labels(test, np.asarray(row["thresholds"]))[None]))
    return floors, classic, labels["test"]


def seed_counts(specs: Sequence[str], kinds: Sequence[str] = KINDS) -> dict[str, int]:
    """--seeds values as seeds per kind: `3` for every kind, `text_finetuned=1` for one (later ones win);
    `text_finetuned=0` leaves that kind out of the table (on a CPU, fine-tuning MPNet takes about half an hour an
    epoch)."""
    counts = dict.fromkeys(kinds, 1)
    for spec in specs:
        kind, sep, number = spec.rpartition("=")
        if not number.isdigit() or int(number) < (0 if sep else 1) or (sep and kind not in KINDS):
            raise ValueError(f"--seeds {spec!r}: give N >= 1, or KIND=N with N >= 0 (0 leaves KIND out), KIND one "
                             f"of {', '.join(KINDS)}")
        for name in ([kind] if sep else kinds):
            counts[name] = int(number)
    if not any(counts.values()):
        raise ValueError("--seeds leaves every model out of the table; give at least one kind N >= 1")
    return counts


def run_name(kind: str, oversample: bool, seed: int) -> str:
    """A table row's run folder: kind[-os][-seedN]; seed 0 keeps the name of runs made before seeds."""
    return f"{kind}{'-os' if oversample else ''}{f'-seed{seed}' if seed else ''}"


def branch_options(config, runs_root: str, oversample: bool, seed: int, seeds: dict[str, int]) -> list[str]:
    """model.text_run / model.poster_run naming this table's runs of the same oversampling and seed, where the
    table trains them: the late-fusion row is then exactly those rows' models, mixed."""
    text = "text_finetuned" if config.model.fine_tune_text else "text_frozen"
    return [f"model.{option}_run={os.path.join(runs_root, run_name(kind, oversample, seed))}"
            for option, kind in (("text", text), ("poster", "poster")) if seed < seeds.get(kind, 0)]


def train_or_reuse(config) -> str:
    """Train a run, or reuse the finished one in its folder when its config is the same; returns the folder."""
    from genre_tf.config import comparable_config
    from genre_tf.run_dir import load_config
    from genre_tf.train.training import train

    run_dir = config.run_dir
    finished = os.path.exists(os.path.join(run_dir, "final.json"))
    if finished and comparable_config(load_config(run_dir)) == comparable_config(config):
        print(f"reusing the finished run {run_dir}")
        return run_dir
    if os.path.exists(run_dir):
        print(f"removing {run_dir}: unfinished, or trained with other options")
        shutil.rmtree(run_dir)
    return train(config)


def average_rows(runs_root: str, oversample: bool, seeds: dict[str, int], genres: Sequence[str],
                 text: str) -> list[dict]:
    """The untuned late-fusion reference: 0.7 x the text model's (`text`: the integrated model's text kind) + 0.3 x
    the poster model's probabilities, per seed both have, thresholds tuned on dev like any row. Empty unless the
    table has both models."""
    from genre_tf.evaluate.baselines import score_probabilities
    from genre_tf.evaluate.evaluation import load_predictions
    from genre_tf.evaluate.metrics import predict_labels

    rows = []
    for seed in range(min(seeds.get(text, 0), seeds.get("poster", 0))):
        text_p, poster_p = (load_predictions(os.path.join(runs_root, run_name(kind, oversample, seed)))
                            for kind in (text, "poster"))
        mixed = {split: AVERAGE_WEIGHT * text_p[f"{split}_probabilities"]
                 + (1 - AVERAGE_WEIGHT) * poster_p[f"{split}_probabilities"] for split in ("dev", "test")}
        row = score_probabilities(f"average: {AVERAGE_WEIGHT} {text} + {1 - AVERAGE_WEIGHT:.1f} poster",
                                  text_p["dev_labels"], mixed["dev"], text_p["test_labels"], mixed["test"],
                                  kind="average", genres=genres)
        rows.append(dict(row, oversampled=oversample, seed=seed, probabilities=mixed["test"][None],
                         predictions=predict_labels(mixed["test"], np.asarray(row["thresholds"]))[None]))
    return rows


def table3(data: str = "demo", overrides: Sequence[str] = (), runs_root: str = "", kinds: Sequence[str] = KINDS,
           quick: bool = False, seeds: dict[str, int] | None = None) -> dict:
    """Train and evaluate every model with and without oversampling on one split; returns the table.

    Each model is trained with seeds 0..N-1 (`seeds`, per kind; default 1) and shown as the mean over seeds with
    its spread, a 95% bootstrap interval and paired differences (genre_tf.evaluate.comparison). quick shortens the
    schedule of the models that fine-tune BERT (minutes per epoch on a CPU); heads over cached features keep
    theirs (seconds per epoch). A finished run with the same config is reused, so an interrupted table resumes.
    """
    from genre_tf.config import fine_tunes_text, late_fusion
    from genre_tf.evaluate.baselines import lift_rows
    from genre_tf.evaluate.comparison import add_uncertainty, group_seeds, without_arrays
    from genre_tf.evaluate.evaluation import check_same_split, evaluate_run, load_predictions, model_row
    from genre_tf.files import read_json

    runs_root = runs_root or os.path.join("runs", f"table3-{datetime.date.today().isoformat()}")
    seeds = {kind: (seeds or {}).get(kind, 1) for kind in kinds}
    floors, rows, test_labels = reference_rows(data, overrides)
    metrics_by_run = []
    for kind in kinds:
        for oversample in (False, True):
            for seed in range(seeds[kind]):
                options = [*overrides, f"seed={seed}"]
                run_dir = os.path.join(runs_root, run_name(kind, oversample, seed))
                config = _config(data, kind, oversample, run_dir, options)
                if quick and fine_tunes_text(config.model):
                    config = _config(data, kind, oversample, run_dir, [*QUICK, *options])
                if late_fusion(config.model):  # the table's own branch runs, where it trains them
                    config = _config(data, kind, oversample, run_dir, [*options, *branch_options(
                        config, runs_root, oversample, seed, seeds)])
                print(f"\n=== table3: {kind}, oversampling {'yes' if oversample else 'no'}, seed {seed} ===",
                      flush=True)
                run_dir = train_or_reuse(config)
                seconds = read_json(os.path.join(run_dir, "final.json"))["seconds"]  # the training loop's wall time
                metrics = evaluate_run(run_dir)
                rows.append(dict(model_row(metrics, load_predictions(run_dir)), seconds=seconds, seed=seed))
                metrics_by_run.append(metrics)
    check_same_split(metrics_by_run)
    first = metrics_by_run[0]
    integrated = _config(data, "integrated", False, "", overrides).model
    for oversample in (False, True):
        rows += average_rows(runs_root, oversample, seeds, first["genres"],
                             "text_finetuned" if integrated.fine_tune_text else "text_frozen")
    rows = lift_rows(group_seeds(rows), floors)
    best = add_uncertainty(rows, floors, test_labels, first["genres"])
    return {"dataset": first["dataset"]["name"], "fingerprint": first["dataset"]["fingerprint"],
            "split_digest": first["split_digest"], "test_movies": first["splits"]["test"]["movies"],
            "genres": first["genres"],
            "encoders": read_json(os.path.join(metrics_by_run[-1]["run_dir"], "encoders.json")),
            "overrides": list(overrides), "quick": quick, "seeds": seeds, "floors": floors,
            "rows": without_arrays(rows), "best": {"model": best["model"], "oversampled": best.get("oversampled")}}


def table3_markdown(table: dict) -> str:
    """Table 3 under its floors and classic rows, the paper's numbers beside ours, and per-genre F1."""
    from genre_tf.evaluate.baselines import METRICS
    from genre_tf.evaluate.comparison import calibration_table_lines, uncertainty_lines
    from genre_tf.evaluate.evaluation import table3_lines
    from genre_tf.nets.encoders import encoders_summary

    quick = " Quick mode: the models that fine-tune BERT ran " + " ".join(QUICK) + "." if table["quick"] else ""
    encoders = encoders_summary(table["encoders"])
    best = next(row for row in table["rows"] if (row["model"], row.get("oversampled")) ==
                (table["best"]["model"], table["best"]["oversampled"]))
    seeds = ", ".join(f"{kind} {n}" if n else f"{kind} left out" for kind, n in table["seeds"].items())
    lines = [f"Dataset `{table['dataset']}` (fingerprint {table['fingerprint'][:12]}, split {table['split_digest']}), "
             f"test split of {table['test_movies']} movies; per-genre thresholds tuned on dev, applied unchanged to "
             f"test. Options: {' '.join(table['overrides']) or 'defaults'}.{quick} Seeds per model: {seeds}. "
             f"Encoders: {encoders}.", "", *uncertainty_lines([*table["floors"], *table["rows"]], best),
             "", *calibration_table_lines(table["rows"]),
             "", "Every score (means over seeds, four decimals; not a claim of that precision):", "",
             *table3_lines([*table["floors"], *table["rows"]])]
    deep = [row for row in table["rows"] if row["kind"] == "deep"]
    best = max(deep, key=lambda row: row["test"]["tuned"]["weighted_f1"])
    lines += ["", f"Best deep model by test weighted F1: {best['model']}{' (OS)' if best['oversampled'] else ''}, "
              "above the best floor by " + ", ".join(f"{best['lift'][m]:+.3f} {m.replace('_f1', '')}" for m in METRICS)
              + " F1."]
    lines += ["", "Beside the paper's Table 3 (weighted F1; the paper's on its own validation split, ours on this "
              "test split at 0.5, the paper's setting):", "",
              "| model | paper, no OS | paper, OS | ours, no OS | ours, OS |",
              "| --- | --- | --- | --- | --- |"]
    for kind, (paper, paper_os) in PAPER_TABLE3.items():
        ours = {row["oversampled"]: f"{row['test']['at_0.5']['weighted_f1']:.3f}"
                for row in deep if row["model"] == kind}
        lines.append(f"| {kind} | {paper:.3f} | {'-' if paper_os is None else f'{paper_os:.3f}'} | "
                     f"{ours.get(False, '-')} | {ours.get(True, '-')} |")
    genres = table["genres"]
    lines += ["", "Per-genre F1 on test (tuned thresholds):", "",
              "| model | OS | " + " | ".join(genres) + " |", "| --- " * (len(genres) + 2) + "|"]
    for row in deep:
        lines.append(f"| {row['model']} | {'yes' if row['oversampled'] else 'no'} | "
                     + " | ".join(f"{row['per_genre_f1_tuned'][g]:.3f}" for g in genres) + " |")
    return "\n".join(lines + ["", PUBLISHED]) + "\n"


def machine() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (f"{platform.node() or 'host'}: {os.cpu_count()} CPU cores, "
            f"{'GPU: ' + ', '.join(g.name for g in gpus) if gpus else 'no GPU'}; TensorFlow {tf.__version__}, "
            f"Python {platform.python_version()}")


def main(argv=None) -> int:
    parser = CommandLine(prog="python -m genre_tf.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("table3", "speed", "encoders", "all", "scale"))
    parser.add_argument("--data", default="demo", help="a prepared dataset, or demo")
    parser.add_argument("--quick", action="store_true",
                        help=f"short schedules ({' '.join(QUICK)}) for the models that fine-tune BERT")
    parser.add_argument("--out", default="benchmarks", help="where the dated markdown and JSON go")
    parser.add_argument("--seeds", action="append", default=[], metavar="N|KIND=N",
                        help="table3: train each model with seeds 0..N-1 (repeatable: 3 for all, then "
                             "text_finetuned=1 for one kind); rows show the mean, spread and intervals")
    parser.add_argument("--runs", default="", help="where table3's runs go (default runs/table3-<date>)")
    parser.add_argument("--serve-run", action="append", default=[], help="speed: a run to export and time "
                        "serving, repeatable (default: table3's integrated run when measured together)")
    parser.add_argument("--serving-only", action="store_true",
                        help="speed: only the --serve-run rows (serving paths and feature caching), no training")
    parser.add_argument("--in-turns", action="store_true",
                        help="speed: time the --serve-run runs against each other in turns (the same movies, one "
                             "sitting), in place of each run's serving paths")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000], help="scale: catalogue sizes")
    parser.add_argument("--scale-root", default=os.path.join("runs", "scale"), help="scale: where its data goes")
    parser.add_argument("--scale-config", default=None, help="scale: the encoders' preset, as train.py's --config "
                        "(default: the repository's configs/fast.yaml; none: the default encoders)")
    parser.add_argument("overrides", nargs="*", metavar="[KIND:]key=value",
                        help="train.py options for every run, or for one model kind (text_finetuned:epochs=8)")
    args = parser.parse_intermixed_args(argv)  # options may come after the key=value list
    try:
        check_arguments(args)  # before TensorFlow loads: a usage error answers at once, in one line
    except ValueError as error:
        parser.error(str(error))
    from genre_tf.run_dir import RunDirectoryInUse

    try:
        return run_benchmarks(args)
    except (ValueError, OSError, RunDirectoryInUse) as error:  # in use: a run another process trains or evaluates
        print(f"error: {error}", file=sys.stderr)
        return 1


def check_arguments(args) -> None:
    """ValueError naming the first bad argument: --seeds, --data, --sizes, or a [KIND:]key=value option."""
    from genre_tf.config import load_config
    from genre_tf.files import is_prepared_folder

    seed_counts(args.seeds)
    if args.in_turns and (args.what != "speed" or len(args.serve_run) < 2):
        raise ValueError("--in-turns times two or more runs against each other: give speed and --serve-run at "
                         "least twice")
    if args.what in ("table3", "speed", "all") and args.data != "demo" and not is_prepared_folder(args.data):
        raise ValueError(f"--data {args.data} is not a prepared dataset (no split.json and movies.jsonl): run "
                         "python -m genre_tf.prepare first, or leave --data out for the demo")
    if any(size < 1 for size in args.sizes) or len(set(args.sizes)) != len(args.sizes):
        raise ValueError(f"--sizes must be different positive movie counts, got {args.sizes}")
    if args.what == "scale" and args.scale_config not in (None, "none"):
        if not os.path.isfile(args.scale_config):
            raise ValueError(f"--scale-config {args.scale_config} is not a file (a preset, as configs/fast.yaml, or "
                             "none)")
        load_config(args.scale_config)  # a bad preset answers now, not after the first catalogue
    for kind in KINDS:
        load_config(overrides=[f"model.kind={kind}", *for_kind(args.overrides, kind)])


def run_benchmarks(args) -> int:
    """The benchmarks the command line asked for, written as dated markdown and JSON under --out."""
    import genre_tf  # noqa: F401
    from genre_tf.bench import speed

    stamp = datetime.date.today().isoformat()
    report = {"date": stamp, "machine": machine(), "command": " ".join(["python -m genre_tf.bench", *sys.argv[1:]])}
    sections = [f"# genre_tf benchmark, {stamp}", "", f"Machine: {report['machine']}.",
                f"Command: `{report['command']}`.", ""]
    if args.what in ("table3", "all"):
        report["table3"] = table3(args.data, args.overrides, args.runs, quick=args.quick,
                                  seeds=seed_counts(args.seeds))
        sections += ["## Table 3", "", table3_markdown(report["table3"])]
    if args.what in ("speed", "all"):
        serve_runs = args.serve_run or [row["run_dir"] for row in report.get("table3", {}).get("rows", [])
                                        if row["model"] == "integrated" and not row["oversampled"]]
        report["speed"] = speed.speed(args.data, args.overrides, serve_runs, training=not args.serving_only,
                                      in_turns=args.in_turns)
        sections += ["## Speed against the limit", "", speed.speed_markdown(report["speed"])]
    if args.what == "encoders":
        peak = speed.peaks()
        report["encoders"] = {"peak_gflops": peak, "rows": speed.encoder_rows(peak)}
        sections += ["## Encoders alone", "", speed.rows_markdown(report["encoders"]["rows"])]
    if args.what == "scale":  # genre_tf/bench/scale.py: cost and peak memory by catalogue size
        from genre_tf.bench import scale

        preset = {None: scale.ScaleConfig.config, "none": ""}.get(args.scale_config)
        preset = os.path.abspath(args.scale_config) if preset is None else preset  # the user's: from where they are
        report["scale"] = scale.scale(scale.ScaleConfig(sizes=tuple(sorted(args.sizes)), root=args.scale_root,
                                                        config=preset))
        sections += ["## Cost by catalogue size", "", scale.__doc__.split("\n\n", 2)[2].strip(), "",
                     scale.scale_markdown(report["scale"])]
    os.makedirs(args.out, exist_ok=True)
    dataset = "" if args.data == "demo" else "-" + os.path.basename(os.path.normpath(args.data))
    name = os.path.join(args.out, f"{stamp}-{args.what}{'-quick' if args.quick else ''}{dataset}")
    with open(f"{name}.json", "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    with open(f"{name}.md", "w", encoding="utf-8") as handle:
        handle.write("\n".join(sections))
    print("\n".join(sections))
    print(f"written: {name}.md and {name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
