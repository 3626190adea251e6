"""Speed against the limit: examples/s, GFLOP/s and the fraction of this machine's own matmul peak.

FLOPs come from genre_tf.bench.flops (the models' own shapes); the peak is a large tf.matmul measured in
the same run, so a figure reads as "this step runs at N% of what this machine's matmuls reach".
"""
import dataclasses
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np

PEAK_SIZE = 4096  # large enough for the matmul library to reach its peak on a CPU or a GPU


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def call_times(function, calls: int, warmup: int = 2) -> list[float]:
    """The wall time of each of `calls` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def median_seconds(function, calls: int, warmup: int = 2) -> float:
    """The median wall time of `calls` calls after `warmup` untimed ones."""
    return float(np.median(call_times(function, calls, warmup)))


def matmul_peak(dtype: str = "float32", size: int = PEAK_SIZE, calls: int = 5) -> float:
    """GFLOP/s of the fastest of `calls` size x size matmuls in `dtype`, on TensorFlow's default device."""
    import tensorflow as tf

    a, b = (tf.cast(tf.random.stateless_normal([size, size], seed=[seed, 0]), dtype) for seed in (1, 2))
    multiply = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))  # the sync reads one value
    best = min(call_times(lambda: multiply(a, b).numpy(), calls, warmup=1))
    return 2 * size ** 3 / best / 1e9


def peaks() -> dict[str, float]:
    """The measured matmul peaks (GFLOP/s): float32, bfloat16, and float16 on a GPU."""
    import tensorflow as tf

    dtypes = ["float32", "bfloat16"] + (["float16"] if tf.config.list_physical_devices("GPU") else [])
    return {dtype: matmul_peak(dtype) for dtype in dtypes}


def rate_row(what: str, batch: int, seconds_per_call: float, flops_per_example: int, peak: float, **extra) -> dict:
    """One measured row: examples/s, ms per call, GFLOP per example, GFLOP/s and the fraction of `peak`."""
    examples_per_s = batch / seconds_per_call
    gflops = examples_per_s * flops_per_example / 1e9
    return {"what": what, "batch": batch, "examples_per_s": examples_per_s, "ms_per_call": seconds_per_call * 1000,
            "gflop_per_example": flops_per_example / 1e9, "gflops": gflops, "fraction_of_peak": gflops / peak,
            **extra}


def training_step(config, steps: int = 6, warmup: int = 2, min_seconds: float = 5.0) -> dict:
    """Training seconds per batch of one model (the step fit runs), its input pipeline's alone, and its FLOPs."""
    import tensorflow as tf

    from genre_tf.bench.flops import model_flops
    from genre_tf.data.dataset import make_dataset, split_labels
    from genre_tf.data.demo import open_prepared
    from genre_tf.nets.network import feature_caches, precision_policy
    from genre_tf.train.training import build_for_training

    prepared = open_prepared(config.data)
    caches = feature_caches(config, prepared) if config.feature_cache else {}
    with precision_policy(config):
        model = build_for_training(config, prepared, split_labels(prepared, "train")["labels"], caches)
    dataset = make_dataset(prepared, "train", config.batch_size, training=True, input_names=list(model.input_names),
                           image_size=config.poster.image_size, feature_caches=caches, seed=0).repeat()
    batches = iter(dataset)
    step = model.make_train_function()  # what fit runs each step, reading from the prefetching iterator
    train_seconds = _seconds_per_call(lambda: float(step(batches)["loss"]), steps, warmup, min_seconds)
    pipeline = iter(dataset)  # a fresh iterator, so the prefetch buffer filled during training does not count
    pipeline_seconds = _seconds_per_call(lambda: tf.nest.map_structure(lambda t: t.numpy(), next(pipeline)),
                                         steps, 1, min_seconds)
    return {"train_seconds": train_seconds, "pipeline_seconds": pipeline_seconds,
            "flops": model_flops(model, config.text.seq_length).train_step}


def _seconds_per_call(function, calls: int, warmup: int, min_seconds: float) -> float:
    """Mean seconds per call over at least `calls` calls and at least `min_seconds`."""
    for _ in range(warmup):
        function()
    count, started = 0, time.perf_counter()
    while count < calls or time.perf_counter() - started < min_seconds:
        function()
        count += 1
    return (time.perf_counter() - started) / count


# (label, extra options); feature caches on and off for each. Late fusion trains no joint step: its cost is its
# branches' (the text and poster rows) plus seconds of logistic regressions, so the joint rows are concat's.
SPEED_MODELS = [
    ("poster", ["model.kind=poster"]),
    ("text_frozen", ["model.kind=text_frozen"]),
    ("text_finetuned", ["model.kind=text_finetuned"]),
    ("integrated concat (frozen text, demo preset)", ["model.kind=integrated", "model.fusion=concat"]),
    ("integrated concat (fine-tuned text)", ["model.kind=integrated", "model.fusion=concat",
                                             "model.fine_tune_text=true"]),
]


def training_rows(data: str, overrides: Sequence[str], peak: dict[str, float]) -> list[dict]:
    """A row per model and feature-cache setting: training and input-pipeline examples/s, against the peak.

    On a GPU the models train in mixed float16 with XLA (each can be overridden), against the float16 peak.
    """
    import tensorflow as tf

    from genre_tf.config import load_config

    if tf.config.list_physical_devices("GPU"):
        overrides = ["mixed_precision=true", "xla=true", *overrides]
    rows = []
    for label, extra in SPEED_MODELS:
        for cached in (True, False):
            config = load_config(overrides=[f"data={data}", *extra, f"feature_cache={str(cached).lower()}",
                                            *overrides])
            print(f"speed: training {label}, feature caches {'on' if cached else 'off'}", flush=True)
            measured = training_step(config)
            dtype = "float16" if config.mixed_precision else "float32"
            rows.append(rate_row(f"training {label}", config.batch_size, measured["train_seconds"],
                                 measured["flops"], peak[dtype], feature_cache=cached, dtype=dtype,
                                 pipeline_examples_per_s=config.batch_size / measured["pipeline_seconds"]))
    return rows


ROUNDS = 3  # serving paths are timed in turns, this many times each

# How exports served before 2026-12-07 first, then each saving added in turn: (label, export precision, chunk_rows).
SERVING_PATHS = [("padded to the request's longest plot (before)", "", 0),
                 ("plots padded in chunks of 8", "", 8),
                 ("chunks of 8, encoders in bfloat16", "bfloat16", 8)]


def serving_rows(run_dir: str, peak: dict[str, float], movies: int = 128, calls: int = 40) -> dict:
    """Each SERVING_PATHS export of the run, loaded in process, on its dataset's first `movies` real test movies:
    batches of 32 (movies/s) and batch 1 on the median-length plot with its poster (p50, p95), against the peak;
    and the share of padding each path encodes over every plot of the dataset."""
    from genre_tf import run_dir as runs
    from genre_tf.data.dataset import raw_examples
    from genre_tf.nets.network import open_run_dataset
    from genre_tf.bench.flops import model_flops

    config, prepared = runs.load_config(run_dir), open_run_dataset(run_dir)
    plots, posters = raw_examples(prepared, "test", limit=movies)
    base, rows, padding, stages = tempfile.mkdtemp(prefix="genre_tf_serving_bench_"), [], {}, {}
    try:
        paths = [(label, precision or config.text.precision, chunk, *loaded_export(run_dir, base, precision, chunk))
                 for label, precision, chunk in SERVING_PATHS]  # every export loaded first, then timed in turns
        lengths = token_lengths(paths[0][3].text_encoder, plots)
        median = median_movie(lengths)
        times = {label: {"batch": [], "one": []} for label, *_ in paths}
        for _ in range(ROUNDS):  # round after round, so a burst of load elsewhere falls on every path alike
            for label, _, chunk_rows, parts, serve in paths:
                measured = _time_served(serve, plots, posters, median, max(calls // ROUNDS, 3))
                times[label]["batch"].append(measured["batch"])
                times[label]["one"] += measured["one"]
                stages[label] = {name: min(seconds, stages.get(label, {}).get(name, seconds))
                                 for name, seconds in _time_stages(parts, chunk_rows, plots, posters).items()}
        for label, dtype, chunk_rows, parts, _ in paths:
            padded, alone = padded_lengths(lengths, 32, chunk_rows), padded_lengths(lengths[median:median + 1], 1, 0)
            top = peak["bfloat16" if dtype == "bfloat16" else "float32"]  # held against the faster peak it can use
            one = times[label]["one"]
            rows.append(rate_row(f"serving: {label}", 32, min(times[label]["batch"]),
                                 float(np.mean([served_flops(parts, int(n)) for n in padded])), top, path=label,
                                 tokens=float(np.mean(padded)), dtype=dtype))
            rows.append(rate_row(f"serving: {label}", 1, float(np.median(one)), served_flops(parts, int(alone[0])),
                                 top, path=label, dtype=dtype, p95_ms=float(np.percentile(one, 95) * 1000),
                                 tokens=float(alone[0])))
            if parts.text_encoder is not None:  # the text encoder's own share of the peak, at the lengths it ran
                stages[label]["text_fraction_of_peak"] = float(np.mean(
                    [model_flops(parts.text_encoder, int(n)).forward for n in padded])) * 32 / (
                    stages[label]["text encoder"] * top * 1e9)
        if paths[0][3].text_encoder is not None:  # every plot, in split order (a random order)
            every = token_lengths(paths[0][3].text_encoder, [movie["plot"] for movie in prepared.movies()])
            shuffled = every[np.random.default_rng(0).permutation(len(every))]
            padding = {"plots": len(every), "median_tokens": float(np.median(every)),
                       "padded_to_128": padding_fraction(every, np.full(len(every), 128)),
                       **{label: padding_fraction(shuffled, padded_lengths(shuffled, 32, chunk))
                          for label, _, chunk in SERVING_PATHS[:2]},
                       "feature caching (sorted by length, batches of 32)": padding_fraction(
                           np.sort(every), padded_lengths(np.sort(every), 32, 0))}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"rows": rows, "padding": padding, "stages": stages}


def caching_rows(run_dir: str, peak: dict[str, float], movies: int = 256) -> list[dict]:
    """Feature caching as features.py runs it (plots shortest first, batches of 32) for the first `movies` test
    movies of the run's dataset, in float32 and in bfloat16: movies/s, and the time projected for every movie."""
    import tensorflow as tf

    from genre_tf import run_dir as runs
    from genre_tf.bench.flops import model_flops
    from genre_tf.config import uses_poster, uses_text
    from genre_tf.data.dataset import split_plots, split_posters
    from genre_tf.nets.encoders import build_poster_encoder, build_text_encoder, for_inference
    from genre_tf.nets.network import open_run_dataset

    config, prepared = runs.load_config(run_dir), open_run_dataset(run_dir)
    count = sum(1 for _ in prepared.movies())
    plots = sorted(split_plots(prepared, "test")[:movies], key=len)
    images = split_posters(prepared, "test", config.poster.image_size)[:movies] if uses_poster(config.model) else []
    rows = []
    for precision in PRECISIONS:
        stages = []
        if uses_text(config.model):
            text = build_text_encoder(dataclasses.replace(config.text, precision=precision))
            padded = padded_lengths(token_lengths(text, plots), 32, 0)  # sorted: each batch to its own longest
            stages.append(("plot embeddings", text, [tf.constant(plots[i:i + 32]) for i in range(0, len(plots), 32)],
                           float(np.mean([model_flops(text, int(n)).forward for n in padded]))))
        if len(images):
            poster = for_inference(build_poster_encoder(dataclasses.replace(config.poster, precision=precision)))
            stages.append(("poster features", poster, [images[i:i + 32] for i in range(0, len(images), 32)],
                           model_flops(poster, 0).forward))
        for name, model, batches, flops in stages:
            run = tf.function(lambda x, model=model: model(x, training=False))
            seconds = min(call_times(lambda run=run, batches=batches: [run(b).numpy() for b in batches], 2, 1))
            rows.append(rate_row(f"caching {name}", 32, seconds / len(batches), int(flops), peak[precision],
                                 dtype=precision, projected_s=seconds / sum(len(b) for b in batches) * count))
    return rows


def runs_in_turns(run_dirs: Sequence[str], peak: dict[str, float], movies: int = 128,
                  calls: int = 40) -> list[dict]:
    """Several runs (the default against the same model over a distilled student, say) exported as served today,
    loaded together and timed in turns on the first run's real test movies: batch 32 and batch 1 (its median-length
    plot with its poster), the text encoder alone at batch 32 with its GFLOP a plot, and plot-embedding caching
    (plots sorted by length, batches of 32). The runs' ratios come from the same minutes."""
    from genre_tf.bench.flops import model_flops
    from genre_tf.data.dataset import raw_examples
    from genre_tf.nets.encoders import CHUNK_ROWS
    from genre_tf.nets.network import open_run_dataset

    plots, posters = raw_examples(open_run_dataset(run_dirs[0]), "test", limit=movies)
    base = tempfile.mkdtemp(prefix="genre_tf_turns_bench_")
    try:
        served = [(run_dir, *loaded_export(run_dir, base)) for run_dir in run_dirs]
        lengths = token_lengths(served[0][1].text_encoder, plots)
        median = median_movie(lengths)
        times = {run_dir: {"batch": [], "one": [], "caching": []} for run_dir, *_ in served}
        for _ in range(ROUNDS):
            for run_dir, parts, serve in served:
                measured = _time_served(serve, plots, posters, median, max(calls // ROUNDS, 3))
                times[run_dir]["batch"].append(measured["batch"])
                times[run_dir]["one"] += measured["one"]
                text = _time_stages(parts, CHUNK_ROWS, plots, [])["text encoder"]
                times[run_dir]["text"] = min(text, times[run_dir].get("text", np.inf))
                times[run_dir]["caching"].append(_caching_seconds(parts.text_encoder, plots))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    padded, rows = padded_lengths(lengths, 32, CHUNK_ROWS), []
    for run_dir, parts, _ in served:
        text_flops = float(np.mean([model_flops(parts.text_encoder, int(n)).forward for n in padded]))
        measured = times[run_dir]
        rows.append({"run_dir": run_dir, "text_gflop": text_flops / 1e9, "text_ms": measured["text"] * 1000,
                     "text_fraction_of_peak": text_flops * 32 / (measured["text"] * peak["float32"] * 1e9),
                     "batch_movies_per_s": 32 / min(measured["batch"]),
                     "p50_ms": float(np.median(measured["one"])) * 1000,
                     "p95_ms": float(np.percentile(measured["one"], 95)) * 1000,
                     "caching_plots_per_s": len(plots) / min(measured["caching"])})
    return rows


def _caching_seconds(text_encoder, plots: list[str]) -> float:
    """Seconds to embed the plots as feature caching does: sorted by length, batches of 32, each to its longest."""
    import tensorflow as tf

    ordered = sorted(plots, key=len)
    run = tf.function(lambda batch: text_encoder(batch, training=False))
    batches = [tf.constant(ordered[i:i + 32]) for i in range(0, len(ordered), 32)]
    return min(call_times(lambda: [run(batch).numpy() for batch in batches], 1, warmup=1))


def turns_markdown(rows: list[dict]) -> str:
    """The runs timed in turns, each figure also as a ratio to the first run's."""
    first = rows[0]
    lines = ["| run | text GFLOP a plot | text encoder, ms a batch of 32 | its share of the float32 peak | "
             "batch 32, movies/s | batch 1, p50 ms | p95 ms | caching plots/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| `{row['run_dir']}` | {row['text_gflop']:.2f} | {row['text_ms']:.0f} "
                     f"({first['text_ms'] / row['text_ms']:.2f}x) | {row['text_fraction_of_peak']:.0%} | "
                     f"{row['batch_movies_per_s']:.1f} ({row['batch_movies_per_s'] / first['batch_movies_per_s']:.2f}x)"
                     f" | {row['p50_ms']:.1f} ({first['p50_ms'] / row['p50_ms']:.2f}x) | {row['p95_ms']:.1f} | "
                     f"{row['caching_plots_per_s']:.1f} "
                     f"({row['caching_plots_per_s'] / first['caching_plots_per_s']:.2f}x) |")
    return "\n".join(lines) + "\n"


STAGES = ("text encoder", "poster decoding", "poster encoder")


def _time_stages(parts, chunk_rows: int, plots: list[str], posters: list[bytes]) -> dict[str, float]:
    """Seconds per batch of 32 of each serving stage alone: the text encoder (tokenising included), poster
    decoding and the poster encoder; where the time of a served batch goes."""
    import tensorflow as tf

    from genre_tf.data.images import decode_posters
    from genre_tf.nets.encoders import length_chunked

    plot_batches = [tf.constant(plots[i:i + 32]) for i in range(0, len(plots), 32)]
    poster_batches = [tf.constant(posters[i:i + 32]) for i in range(0, len(posters), 32)]
    stages = {}
    if parts.text_encoder is not None:
        embed = length_chunked(parts.text_encoder, parts.pooling, chunk_rows) if chunk_rows else parts.text_encoder
        stages["text encoder"] = (tf.function(embed), plot_batches)
    if parts.poster_encoder is not None and posters:  # none given: the text encoder's time alone
        decode = tf.function(lambda batch: decode_posters(batch, parts.image_size)[0])
        stages["poster decoding"] = (decode, poster_batches)
        stages["poster encoder"] = (tf.function(lambda images: parts.poster_encoder(images, training=False)),
                                    [decode(batch) for batch in poster_batches])
    return {name: min(call_times(lambda run=run, batches=batches: [run(b).numpy() for b in batches], 1, warmup=1))
            / len(batches) for name, (run, batches) in stages.items()}


def loaded_export(run_dir: str, base: str, precision: str = "", chunk_rows: int | None = None) -> tuple:
    """(the run's serving parts, its SavedModel's serving signature): the run exported under `base` as export does,
    in `precision` (empty: the run's) with plots padded `chunk_rows` at a time (0: to the request's longest; None:
    the export's default)."""
    import tensorflow as tf

    from genre_tf import run_dir as runs
    from genre_tf.nets.encoders import CHUNK_ROWS
    from genre_tf.serve.serving import computing_in, export_run, serving_parts

    chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
    parts = serving_parts(run_dir, computing_in(runs.load_config(run_dir), precision),
                          runs.read_serving_files(run_dir)[0])
    return parts, tf.saved_model.load(export_run(run_dir, base, precision=precision, chunk_rows=chunk_rows)
                                      ).signatures["serving_default"]


def median_movie(lengths: np.ndarray) -> int:
    """The index of the median-length plot (the batch-1 case)."""
    return int(np.argsort(lengths, kind="stable")[len(lengths) // 2])


def _time_served(serve, plots: list[str], posters: list[bytes], one: int, calls: int) -> dict:
    """Seconds per batch of 32 (the faster of 2 passes over the movies), and batch-1 call times on movie `one`."""
    import tensorflow as tf

    batches = [dict(plot=tf.constant(plots[i:i + 32]), poster=tf.constant(posters[i:i + 32]))
               for i in range(0, len(plots), 32)]
    passes = call_times(lambda: [serve(**batch)["probabilities"].numpy() for batch in batches], 2, warmup=1)
    alone = dict(plot=tf.constant(plots[one:one + 1]), poster=tf.constant(posters[one:one + 1]))
    return {"batch": min(passes) / len(batches),
            "one": call_times(lambda: serve(**alone)["probabilities"].numpy(), calls, warmup=3)}


def token_lengths(text_encoder, plots) -> np.ndarray:
    """Each plot's length in tokens as the text encoder packs it ([CLS] and [SEP] included); none without one."""
    import tf_keras as keras

    if text_encoder is None:
        return np.zeros(len(plots), int)
    tokenize = keras.Model(text_encoder.input, text_encoder.get_layer("trim_padding").input)
    masks = [np.asarray(tokenize(np.asarray(plots[i:i + 256], object))["input_mask"])
             for i in range(0, len(plots), 256)]
    return np.concatenate([mask.sum(axis=1) for mask in masks]) if masks else np.zeros(0, int)


def padded_lengths(lengths: np.ndarray, batch: int, chunk_rows: int, seq_length: int = 128) -> np.ndarray:
    """The length each plot is encoded at, in request order: in batches of `batch` padded to their longest
    (chunk_rows=0), or each batch sorted by length in chunks of `chunk_rows` padded to theirs; rounded up to
    TRIM_MULTIPLE tokens as trim_padding rounds, at most seq_length."""
    from genre_tf.nets.encoders import TRIM_MULTIPLE

    lengths, padded = np.asarray(lengths), np.zeros(len(lengths), int)
    for start in range(0, len(lengths), batch):
        part = lengths[start:start + batch]
        order = np.argsort(part, kind="stable") if chunk_rows else np.arange(len(part))
        for first in range(0, len(part), chunk_rows or len(part)):
            chosen = order[first:first + (chunk_rows or len(part))]
            longest = -(-max(int(part[chosen].max()), 1) // TRIM_MULTIPLE) * TRIM_MULTIPLE
            padded[start + chosen] = min(longest, seq_length)
    return padded


def padding_fraction(lengths: np.ndarray, padded: np.ndarray) -> float:
    """The share of encoded tokens that are padding."""
    return 1 - float(np.sum(lengths)) / max(float(np.sum(padded)), 1.0)


def served_flops(parts, tokens: int) -> int:
    """Forward FLOPs per example of what an export computes, the encoders and the head, at `tokens` per plot."""
    from genre_tf.bench.flops import model_flops

    models = [model for model in (parts.text_encoder, parts.poster_encoder, parts.head) if model is not None]
    return sum(model_flops(model, tokens).forward for model in models)


def _poster_network(backbone: str, image_size: int, precision: str):
    """A poster encoder as feature extraction and serving run it (uint8 posters in). ResNet50 has random
    weights: its speed does not depend on them, and its ImageNet file may be absent."""
    from genre_tf.config import PosterEncoderConfig
    from genre_tf.nets.encoders import build_poster_encoder, for_inference

    weights = "imagenet" if backbone == "efficientnet_lite0" else "random"
    return for_inference(build_poster_encoder(PosterEncoderConfig(backbone=backbone, weights=weights,
                                                                  image_size=image_size, precision=precision)))


def _text_network(precision: str):
    """all-MiniLM-L6-v2 as a Keras BERT (token ids in) computing in `precision`."""
    from genre_tf.nets.minilm import load_minilm_encoder

    return load_minilm_encoder(precision)


PRECISIONS = ("float32", "bfloat16")


def encoder_rows(peak: dict[str, float], image_size: int = 224, seq_length: int = 128, calls: int = 9) -> list[dict]:
    """Each encoder alone at batch 1 and 32 in float32 and bfloat16, and a MiniLM fine-tuning step, against the peak."""
    import tensorflow as tf

    from genre_tf.bench.flops import model_flops

    rng, rows = np.random.default_rng(0), []
    networks = [(f"{backbone} features, {image_size} px", lambda precision, backbone=backbone:
                 _poster_network(backbone, image_size, precision)) for backbone in ("efficientnet_lite0", "resnet50")]
    networks.append((f"MiniLM-L6 embedding, {seq_length} tokens", _text_network))
    for label, build in networks:
        for dtype in PRECISIONS:
            network = build(dtype)
            run = tf.function(lambda inputs, network=network: network(inputs, training=False))
            flops = model_flops(network, seq_length).forward
            for batch in (1, 32):
                if "MiniLM" in label:
                    inputs = {name: tf.ones([batch, seq_length], tf.int32)
                              for name in ("input_word_ids", "input_mask", "input_type_ids")}
                else:
                    inputs = tf.constant(rng.integers(0, 256, (batch, image_size, image_size, 3)), tf.uint8)
                seconds = median_seconds(lambda inputs=inputs, run=run: tf.nest.map_structure(
                    lambda t: t.numpy(), run(inputs)), calls)
                rows.append(rate_row(label, batch, seconds, flops, peak[dtype], dtype=dtype))
    rows.append(_fine_tuning_row(peak, seq_length, max(3, calls // 3)))
    return rows


def _fine_tuning_row(peak: dict[str, float], seq_length: int, calls: int) -> dict:
    """One MiniLM fine-tuning step on 32 plots (the TF-Hub encoder, trainable, with a 10-genre sigmoid head)."""
    import tensorflow as tf
    import tf_keras as keras

    from genre_tf.bench.flops import model_flops
    from genre_tf.config import TextEncoderConfig
    from genre_tf.nets.encoders import build_text_encoder

    tuned = build_text_encoder(TextEncoderConfig(model="minilm", seq_length=seq_length), trainable=True)
    model = keras.Model(tuned.input, keras.layers.Dense(10, activation="sigmoid")(tuned.output))
    model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
    plots, labels = tf.constant([" ".join(["story"] * 150)] * 32), np.zeros((32, 10), np.float32)
    seconds = median_seconds(lambda: model.train_on_batch(plots, labels), calls)
    return rate_row(f"MiniLM-L6 fine-tuning step, {seq_length} tokens", 32, seconds,
                    model_flops(model, seq_length).train_step, peak["float32"], dtype="float32")


def speed(data: str = "demo", overrides: Sequence[str] = (), serve_runs: Sequence[str] = (),
          encoders: bool = True, training: bool = True, in_turns: bool = False) -> dict:
    """The matmul peaks, then training, encoder, serving and feature-caching rows measured against them, and peak
    memory; `training=False` leaves the training and encoder rows out (the served runs' rows only). `in_turns`: the
    served runs timed against each other in turns (runs_in_turns) in place of each run's serving paths."""
    print("speed: measuring the matmul peaks", flush=True)
    peak = peaks()
    result = {"peak_gflops": peak, "training": training_rows(data, overrides, peak) if training else [],
              "peak_rss_mib_after_training": peak_rss_mib()}
    if encoders and training:
        print("speed: each encoder alone", flush=True)
        result["encoders"] = encoder_rows(peak)
    result["serving"] = []
    if in_turns:
        print(f"speed: {len(serve_runs)} runs served in turns", flush=True)
        result["turns"] = runs_in_turns(serve_runs, peak)
        serve_runs = []
    for run_dir in serve_runs:
        print(f"speed: serving {run_dir}", flush=True)
        result["serving"].append({"run_dir": run_dir, **serving_rows(run_dir, peak)})
        print(f"speed: caching {run_dir}'s features", flush=True)
        result["serving"][-1]["caching"] = caching_rows(run_dir, peak)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def rows_markdown(rows: list[dict]) -> str:
    """A table of rate rows."""
    lines = ["| what | dtype | batch | examples/s | ms per call | GFLOP per example | GFLOP/s | of the peak |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        what = row["what"] + (f", feature caches {'on' if row['feature_cache'] else 'off'}"
                              if "feature_cache" in row else "")
        lines.append(f"| {what} | {row.get('dtype', 'float32')} | {row['batch']} | {row['examples_per_s']:.1f} | "
                     f"{row['ms_per_call']:.1f} | {row['gflop_per_example']:.3g} | {row['gflops']:.1f} | "
                     f"{row['fraction_of_peak']:.0%} |")
    return "\n".join(lines) + "\n"


def serving_markdown(rows: list[dict], padding: dict, stages: dict | None = None) -> str:
    """The serving paths side by side: movies/s and p50/p95 at batch 1, each as a ratio to the first path's."""
    first = {row["batch"]: row for row in rows[:2]}
    lines = ["| path | dtype | batch | tokens a plot | movies/s | p50 ms | p95 ms | speed-up | GFLOP/s | of the peak |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        p95 = f"{row['p95_ms']:.1f}" if "p95_ms" in row else ""
        speedup = first[row["batch"]]["ms_per_call"] / row["ms_per_call"]
        lines.append(f"| {row.get('path', row['what'])} | {row.get('dtype', 'float32')} | {row['batch']} | "
                     f"{row.get('tokens', 0):.0f} | {row['examples_per_s']:.1f} | {row['ms_per_call']:.1f} | {p95} | "
                     f"{speedup:.1f}x | {row['gflops']:.1f} | {row['fraction_of_peak']:.0%} |")
    if stages:
        lines += ["", "Where a batch of 32 spends its time (each stage alone, ms per batch):", "",
                  "| path | text encoder | its share of the peak | poster decoding | poster encoder |",
                  "| --- | --- | --- | --- | --- |"]
        for path, times in stages.items():
            ms = {name: f"{times[name] * 1000:.0f}" if name in times else "" for name in STAGES}
            share = f"{times['text_fraction_of_peak']:.0%}" if "text_fraction_of_peak" in times else ""
            lines.append(f"| {path} | {ms['text encoder']} | {share} | {ms['poster decoding']} | "
                         f"{ms['poster encoder']} |")
    if padding:
        lines += ["", f"Padding over the dataset's {padding['plots']} plots (median {padding['median_tokens']:.0f} "
                  "tokens): " + "; ".join(f"{name} {share:.0%}" for name, share in padding.items()
                                          if name not in ("plots", "median_tokens")) + " of the tokens encoded."]
    return "\n".join(lines) + "\n"


def speed_markdown(result: dict) -> str:
    """The speed section of a benchmark file."""
    peak = result["peak_gflops"]
    lines = ["Measured matmul peak (" + ", ".join(f"{dtype} {gflops:.0f} GFLOP/s" for dtype, gflops in peak.items())
             + f"; {PEAK_SIZE} x {PEAK_SIZE}, fastest of 5). FLOPs are counted by genre_tf.bench.flops: dense layers, "
             "convolutions and attention, a multiply-add as 2; a training step is 3 forward passes of what it trains."]
    if result["training"]:
        lines += ["", "### Training (batch 32)", "", rows_markdown(result["training"]),
                  "Input pipeline alone: " + ", ".join(
                      f"{row['what'].removeprefix('training ')} ({'cached' if row['feature_cache'] else 'raw'}) "
                      f"{row['pipeline_examples_per_s']:.0f}" for row in result["training"]) + " examples/s."]
    if "encoders" in result:
        lines += ["", "### Encoders alone", "", rows_markdown(result["encoders"])]
    if result.get("turns"):
        lines += ["", "### Runs served in turns (each in its run's precision, plots in chunks of 8; real test "
                  "movies)", "", turns_markdown(result["turns"])]
    for served in result.get("serving", []):
        lines += ["", f"### Serving `{served['run_dir']}` (its SavedModel, loaded in process, real test movies)", "",
                  serving_markdown(served["rows"], served.get("padding", {}), served.get("stages"))]
        if served.get("caching"):
            lines += ["", "Feature caching (what training computes once per movie; the rate projected to every "
                      "movie of the dataset):", "", rows_markdown(served["caching"]),
                      "; ".join(f"{row['what']} in {row['dtype']}: {row['projected_s']:.0f} s"
                                for row in served["caching"]) + "."]
    lines += ["", f"Peak resident memory: {result['peak_rss_mib']:.0f} MiB "
              f"({result['peak_rss_mib_after_training']:.0f} MiB after the training measurements)."]
    return "\n".join(lines) + "\n"
