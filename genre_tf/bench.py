"""Where genre_tf stands: the paper's Table 3 reproduced in one command, and speed and memory.

    python -m genre_tf.bench table3 --quick            # the embedded demo, short schedules, minutes on a CPU
    python -m genre_tf.bench table3 --data prepared/mmimdb
    python -m genre_tf.bench speed                     # training, input pipeline, memory, serving
    python -m genre_tf.bench encoders                  # each encoder alone: posters/s and plots/s at batch 1 and 32
    python -m genre_tf.bench all --quick               # both, into one dated benchmarks/ file

Every figure is measured in the run that prints it. Results are written as markdown and JSON.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

KINDS = ("most_common", "poster", "text_frozen", "text_finetuned", "integrated")
QUICK = ["epochs=10", "patience=4"]
# The paper's Table 3: weighted F1 on its own validation split (no OS, OS); not comparable with other data.
PAPER_TABLE3 = {"most_common": (0.209, None), "poster": (0.232, 0.210), "text_frozen": (0.192, 0.214),
                "text_finetuned": (0.433, 0.431), "integrated": (0.429, 0.453)}
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

    Returns (floor rows, classic rows) in genre_tf.baselines' row schema; classic rows carry `seconds`.
    """
    from genre_tf import baselines
    from genre_tf.dataset import split_plots, split_posters
    from genre_tf.readers import SPLIT_NAMES
    from genre_tf.training import open_dataset, split_labels

    prepared = open_dataset(_config(data, "most_common", False, "", overrides))
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
        classic.append(dict(row, seconds=round(time.time() - started, 1)))
    return floors, classic


def table3(data: str = "demo", overrides: Sequence[str] = (), runs_root: str = "", kinds: Sequence[str] = KINDS,
           quick: bool = False) -> dict:
    """Train and evaluate every model with and without oversampling on one split; returns the table.

    quick shortens the schedule of the models that fine-tune BERT (minutes per epoch on a CPU); heads
    over cached features keep theirs (seconds per epoch). A finished row with the same config is
    reused, so an interrupted table resumes.
    """
    from genre_tf.baselines import lift_rows
    from genre_tf.config import config_to_dict
    from genre_tf.evaluation import check_same_split, evaluate_run, table3_row
    from genre_tf.files import read_json
    from genre_tf.config import fine_tunes_text
    from genre_tf.training import train

    runs_root = runs_root or os.path.join("runs", f"table3-{datetime.date.today().isoformat()}")
    floors, rows = reference_rows(data, overrides)
    metrics_by_run = []
    for kind in kinds:
        for oversample in (False, True):
            run_dir = os.path.join(runs_root, f"{kind}{'-os' if oversample else ''}")
            config = _config(data, kind, oversample, run_dir, overrides)
            if quick and fine_tunes_text(config.model):
                config = _config(data, kind, oversample, run_dir, [*QUICK, *overrides])
            print(f"\n=== table3: {kind}, oversampling {'yes' if oversample else 'no'} ===", flush=True)
            finished = os.path.exists(os.path.join(run_dir, "final.json"))
            if finished and read_json(os.path.join(run_dir, "config.json")) == config_to_dict(config):
                print(f"reusing the finished run {run_dir}")
            else:
                if os.path.exists(run_dir):
                    print(f"removing {run_dir}: unfinished, or trained with other options")
                    shutil.rmtree(run_dir)
                run_dir = train(config)
            seconds = read_json(os.path.join(run_dir, "final.json"))["seconds"]  # the training loop's wall time
            metrics = evaluate_run(run_dir)
            rows.append(dict(table3_row(metrics), run_dir=run_dir, seconds=seconds))
            metrics_by_run.append(metrics)
    check_same_split(metrics_by_run)
    first = metrics_by_run[0]
    return {"dataset": first["dataset"]["name"], "fingerprint": first["dataset"]["fingerprint"],
            "split_digest": first["split_digest"], "test_movies": first["splits"]["test"]["movies"],
            "genres": first["genres"], "encoders": read_json(os.path.join(rows[-1]["run_dir"], "encoders.json")),
            "overrides": list(overrides), "quick": quick, "floors": floors, "rows": lift_rows(rows, floors)}


def table3_markdown(table: dict) -> str:
    """Table 3 under its floors and classic rows, the paper's numbers beside ours, and per-genre F1."""
    from genre_tf.baselines import METRICS
    from genre_tf.encoders import encoders_summary
    from genre_tf.evaluation import table3_lines

    quick = " Quick mode: the models that fine-tune BERT ran " + " ".join(QUICK) + "." if table["quick"] else ""
    encoders = encoders_summary(table["encoders"])
    lines = [f"Dataset `{table['dataset']}` (fingerprint {table['fingerprint'][:12]}, split {table['split_digest']}), "
             f"test split of {table['test_movies']} movies; per-genre thresholds tuned on dev, applied unchanged to "
             f"test. Options: {' '.join(table['overrides']) or 'defaults'}.{quick} Encoders: {encoders}.", "",
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


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_throughput(config, steps: int = 6, warmup: int = 2, min_seconds: float = 5.0) -> dict[str, float]:
    """Training examples/s of one model, and the input pipeline's examples/s alone, on the train split.

    Each figure runs at least `steps` batches and at least `min_seconds`.
    """
    import tensorflow as tf

    from genre_tf.dataset import make_dataset
    from genre_tf.training import build_for_training, feature_caches, open_dataset, split_labels

    import tf_keras as keras

    prepared = open_dataset(config)
    caches = feature_caches(config, prepared) if config.feature_cache else {}
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    model = build_for_training(config, prepared, split_labels(prepared, "train")["labels"], caches)
    keras.mixed_precision.set_global_policy("float32")
    dataset = make_dataset(prepared, "train", config.batch_size, training=True, input_names=list(model.input_names),
                           image_size=config.poster.image_size, feature_caches=caches, seed=0).repeat()
    batches = iter(dataset)
    step = model.make_train_function()  # what fit runs each step, reading from the prefetching iterator
    for _ in range(warmup):
        step(batches)
    count, started = 0, time.perf_counter()
    while count < steps or time.perf_counter() - started < min_seconds:
        float(step(batches)["loss"])
        count += 1
    train_rate = count * config.batch_size / (time.perf_counter() - started)
    pipeline = iter(dataset)  # a fresh iterator, so the prefetch buffer filled during training does not count
    next(pipeline)
    count, started = 0, time.perf_counter()
    while count < steps or time.perf_counter() - started < min_seconds:
        tf.nest.map_structure(lambda t: t.numpy(), next(pipeline))
        count += 1
    return {"train_examples_per_s": train_rate,
            "pipeline_examples_per_s": count * config.batch_size / (time.perf_counter() - started)}


def serving_latency(model_dir: str, plots: list[str], posters: list[bytes], calls: int = 40) -> dict[str, float]:
    """p50/p95 latency of serving_default at batch 1 and examples/s at batch 32, on the loaded SavedModel."""
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    one = dict(plot=tf.constant(plots[:1]), poster=tf.constant(posters[:1]))
    batch = dict(plot=tf.constant((plots * 32)[:32]), poster=tf.constant((posters * 32)[:32]))
    for inputs in (one, batch, one):
        serve(**inputs)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        serve(**one)["probabilities"].numpy()
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(5):
        serve(**batch)["probabilities"].numpy()
    return {"batch1_p50_ms": float(np.percentile(latencies, 50) * 1000),
            "batch1_p95_ms": float(np.percentile(latencies, 95) * 1000),
            "batch32_examples_per_s": 5 * 32 / (time.perf_counter() - started)}


def median_seconds(function, calls: int, warmup: int = 2) -> float:
    """The median wall time of `calls` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def encoder_speed(image_size: int = 224, seq_length: int = 128, calls: int = 9) -> list[dict]:
    """Examples/s of each encoder alone at batch 1 and 32: the poster backbones, MiniLM embedding and fine-tuning.

    ResNet50 is timed with random weights (speed does not depend on them; its ImageNet file may be absent).
    """
    import tensorflow as tf
    import tf_keras as keras

    from genre_tf.config import PosterEncoderConfig, TextEncoderConfig
    from genre_tf.encoders import build_poster_encoder, build_text_encoder

    rows, rng = [], np.random.default_rng(0)
    for backbone, weights in (("efficientnet_lite0", "imagenet"), ("resnet50", "random")):
        encoder = build_poster_encoder(PosterEncoderConfig(backbone=backbone, weights=weights, image_size=image_size))
        step = tf.function(lambda x, encoder=encoder: encoder(x, training=False))
        for batch in (1, 32):
            posters = tf.constant(rng.integers(0, 255, (batch, image_size, image_size, 3), dtype=np.uint8))
            seconds = median_seconds(lambda posters=posters, step=step: step(posters).numpy(), calls)
            rows.append({"encoder": f"{backbone} features, {image_size} px", "batch": batch,
                         "examples_per_s": batch / seconds, "ms_per_call": seconds * 1000})
    text = build_text_encoder(TextEncoderConfig(seq_length=seq_length))
    embed = tf.function(lambda x: text(x, training=False))
    for batch in (1, 32):
        plots = tf.constant([" ".join(["story"] * 150)] * batch)
        seconds = median_seconds(lambda plots=plots: embed(plots).numpy(), calls)
        rows.append({"encoder": f"MiniLM-L6 embedding, {seq_length} tokens", "batch": batch,
                     "examples_per_s": batch / seconds, "ms_per_call": seconds * 1000})
    tuned = build_text_encoder(TextEncoderConfig(seq_length=seq_length), trainable=True)
    model = keras.Model(tuned.input, keras.layers.Dense(10, activation="sigmoid")(tuned.output))
    model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
    plots, labels = tf.constant([" ".join(["story"] * 150)] * 32), np.zeros((32, 10), np.float32)
    seconds = median_seconds(lambda: model.train_on_batch(plots, labels), max(3, calls // 3))
    rows.append({"encoder": f"MiniLM-L6 fine-tuning step, {seq_length} tokens", "batch": 32,
                 "examples_per_s": 32 / seconds, "ms_per_call": seconds * 1000})
    return rows


def encoders_markdown(rows: list[dict]) -> str:
    """The encoder speed table."""
    lines = ["| encoder | batch | examples/s | ms per call |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['encoder']} | {r['batch']} | {r['examples_per_s']:.1f} | {r['ms_per_call']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


SPEED_MODELS = [  # (label, extra options); feature caches on and off for each
    ("poster", ["model.kind=poster"]),
    ("text_frozen", ["model.kind=text_frozen"]),
    ("text_finetuned", ["model.kind=text_finetuned"]),
    ("integrated (frozen text, demo preset)", ["model.kind=integrated"]),
    ("integrated (fine-tuned text)", ["model.kind=integrated", "model.fine_tune_text=true"]),
]


def speed(data: str = "demo", overrides: Sequence[str] = (), serve_run: str = "") -> dict:
    """Training and pipeline examples/s per model with and without caches, peak memory, serving latency."""
    from genre_tf.config import load_config
    from genre_tf.serving import export_run

    rows = []
    for label, extra in SPEED_MODELS:
        for cached in (True, False):
            config = load_config(overrides=[f"data={data}", *extra, f"feature_cache={str(cached).lower()}",
                                            *overrides])
            print(f"speed: {label}, feature caches {'on' if cached else 'off'}", flush=True)
            rows.append({"model": label, "feature_cache": cached, **training_throughput(config)})
    result = {"training": rows, "peak_rss_mib_after_training": peak_rss_mib()}
    if serve_run:
        from genre_tf.dataset import raw_examples
        from genre_tf.training import open_dataset

        base = tempfile.mkdtemp(prefix="genre_tf_serving_bench_")
        try:
            model_dir = export_run(serve_run, base)
            served = load_config(os.path.join(serve_run, "config.json"))
            plots, posters = raw_examples(open_dataset(served), "test", limit=32)
            result["serving"] = dict(serving_latency(model_dir, plots, posters), model=served.model.kind,
                                     run_dir=serve_run)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def speed_markdown(result: dict) -> str:
    lines = ["| model | feature caches | training examples/s | input pipeline examples/s |",
             "| --- | --- | --- | --- |"]
    for row in result["training"]:
        lines.append(f"| {row['model']} | {'on' if row['feature_cache'] else 'off'} | "
                     f"{row['train_examples_per_s']:.1f} | {row['pipeline_examples_per_s']:.0f} |")
    lines += ["", f"Peak resident memory of the benchmark process: {result['peak_rss_mib']:.0f} MiB "
              f"({result['peak_rss_mib_after_training']:.0f} MiB after the training measurements)."]
    if "serving" in result:
        s = result["serving"]
        lines += ["", f"Serving (`{s['model']}` SavedModel, loaded in process, plot + poster bytes): batch 1 "
                  f"p50 {s['batch1_p50_ms']:.1f} ms, p95 {s['batch1_p95_ms']:.1f} ms; batch 32 "
                  f"{s['batch32_examples_per_s']:.1f} examples/s."]
    return "\n".join(lines) + "\n"


def machine() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (f"{platform.node() or 'host'}: {os.cpu_count()} CPU cores, "
            f"{'GPU: ' + ', '.join(g.name for g in gpus) if gpus else 'no GPU'}; TensorFlow {tf.__version__}, "
            f"Python {platform.python_version()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("table3", "speed", "encoders", "all"))
    parser.add_argument("--data", default="demo", help="a prepared dataset, or demo")
    parser.add_argument("--quick", action="store_true",
                        help=f"short schedules ({' '.join(QUICK)}) for the models that fine-tune BERT")
    parser.add_argument("--out", default="benchmarks", help="where the dated markdown and JSON go")
    parser.add_argument("--runs", default="", help="where table3's runs go (default runs/table3-<date>)")
    parser.add_argument("--serve-run", default="", help="speed: the run to export and time serving "
                        "(default: table3's integrated run when measured together)")
    parser.add_argument("overrides", nargs="*", metavar="[KIND:]key=value",
                        help="train.py options for every run, or for one model kind (text_finetuned:epochs=8)")
    args = parser.parse_intermixed_args(argv)  # options may come after the key=value list
    import genre_tf  # noqa: F401

    stamp = datetime.date.today().isoformat()
    report = {"date": stamp, "machine": machine(), "command": " ".join(["python -m genre_tf.bench", *sys.argv[1:]])}
    sections = [f"# genre_tf benchmark, {stamp}", "", f"Machine: {report['machine']}.",
                f"Command: `{report['command']}`.", ""]
    if args.what in ("table3", "all"):
        report["table3"] = table3(args.data, args.overrides, args.runs, quick=args.quick)
        sections += ["## Table 3", "", table3_markdown(report["table3"])]
    if args.what in ("speed", "all"):
        serve_run = args.serve_run or next((row["run_dir"] for row in report.get("table3", {}).get("rows", [])
                          if row["model"] == "integrated" and not row["oversampled"]), "")
        report["speed"] = speed(args.data, args.overrides, serve_run)
        sections += ["## Speed and memory", "", speed_markdown(report["speed"])]
    if args.what in ("encoders", "all"):
        report["encoders"] = encoder_speed()
        sections += ["## Encoders alone", "", encoders_markdown(report["encoders"])]
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
