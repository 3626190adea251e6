"""Speed against the limit: examples/s, GFLOP/s and the fraction of this machine's own matmul peak.

FLOPs come from genre_tf.bench.flops (the models' own shapes); the peak is a large tf.matmul measured in
the same run, so a figure reads as "this step runs at N% of what this machine's matmuls reach".
"""
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


def serving_rows(run_dir: str, peak: dict[str, float], calls: int = 40) -> list[dict]:
    """serving_default of the run's export, loaded in process: batch 1 (p50, p95) and batch 32, against the peak."""
    import tensorflow as tf

    from genre_tf import run_dir as runs
    from genre_tf.data.dataset import raw_examples
    from genre_tf.nets.network import open_run_dataset
    from genre_tf.serve.serving import export_run, serving_parts

    config = runs.load_config(run_dir)
    plots, posters = raw_examples(open_run_dataset(run_dir), "test", limit=32)
    parts = serving_parts(run_dir, config, runs.read_serving_files(run_dir)[0])
    precisions = {f"{branch} {precision}" for branch, precision, used in (
        ("text", config.text.precision, parts.text_encoder), ("poster", config.poster.precision, parts.poster_encoder))
        if used is not None}
    dtype = ", ".join(sorted(precisions))
    top = "bfloat16" if "bfloat16" in dtype else "float32"  # held against the faster peak it can use
    base = tempfile.mkdtemp(prefix="genre_tf_serving_bench_")
    try:
        serve = tf.saved_model.load(export_run(run_dir, base)).signatures["serving_default"]
        rows = []
        for batch in (1, 32):
            inputs = dict(plot=tf.constant((plots * 32)[:batch]), poster=tf.constant((posters * 32)[:batch]))
            times = call_times(lambda inputs=inputs: serve(**inputs)["probabilities"].numpy(),
                               calls if batch == 1 else max(5, calls // 8), warmup=3)
            tokens = encoded_tokens(parts.text_encoder, inputs["plot"])
            rows.append(rate_row(f"serving {config.model.kind} (plot + poster bytes)", batch,
                                 float(np.median(times)), served_flops(parts, tokens), peak[top],
                                 p95_ms=float(np.percentile(times, 95) * 1000), tokens=tokens, dtype=dtype))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def encoded_tokens(text_encoder, plots) -> int:
    """How many tokens per plot the text encoder runs on for this batch (padding trimmed to the longest plot)."""
    import tf_keras as keras

    if text_encoder is None:
        return 0
    return int(keras.Model(text_encoder.input, text_encoder.get_layer("trim_padding").output)(plots)
               ["input_word_ids"].shape[1])


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
          encoders: bool = True) -> dict:
    """The matmul peaks, then training, encoder and serving rows measured against them, and peak memory."""
    print("speed: measuring the matmul peaks", flush=True)
    peak = peaks()
    result = {"peak_gflops": peak, "training": training_rows(data, overrides, peak),
              "peak_rss_mib_after_training": peak_rss_mib()}
    if encoders:
        print("speed: each encoder alone", flush=True)
        result["encoders"] = encoder_rows(peak)
    result["serving"] = []
    for run_dir in serve_runs:
        print(f"speed: serving {run_dir}", flush=True)
        result["serving"].append({"run_dir": run_dir, "rows": serving_rows(run_dir, peak)})
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


def speed_markdown(result: dict) -> str:
    """The speed section of a benchmark file."""
    peak = result["peak_gflops"]
    lines = ["Measured matmul peak (" + ", ".join(f"{dtype} {gflops:.0f} GFLOP/s" for dtype, gflops in peak.items())
             + f"; {PEAK_SIZE} x {PEAK_SIZE}, fastest of 5). FLOPs are counted by genre_tf.bench.flops: dense layers, "
             "convolutions and attention, a multiply-add as 2; a training step is 3 forward passes of what it trains.",
             "", "### Training (batch 32)", "", rows_markdown(result["training"]),
             "Input pipeline alone: " + ", ".join(
                 f"{row['what'].removeprefix('training ')} ({'cached' if row['feature_cache'] else 'raw'}) "
                 f"{row['pipeline_examples_per_s']:.0f}" for row in result["training"]) + " examples/s."]
    if "encoders" in result:
        lines += ["", "### Encoders alone", "", rows_markdown(result["encoders"])]
    for served in result.get("serving", []):
        one, batch = served["rows"]
        lines += ["", f"### Serving `{served['run_dir']}` (its SavedModel, loaded in process)", "",
                  rows_markdown(served["rows"]),
                  f"Plots run at {one['tokens']} tokens at batch 1 and {batch['tokens']} at batch 32 (padding "
                  "trimmed to the longest plot, rounded up to 16). "
                  f"Batch 1: p50 {one['ms_per_call']:.1f} ms, p95 {one['p95_ms']:.1f} ms. Per example at batch 32: "
                  f"{batch['ms_per_call'] / 32:.1f} ms, so batch 1 takes "
                  f"{one['ms_per_call'] / (batch['ms_per_call'] / 32):.1f}x the per-example time of batch 32."]
    lines += ["", f"Peak resident memory: {result['peak_rss_mib']:.0f} MiB "
              f"({result['peak_rss_mib_after_training']:.0f} MiB after the training measurements)."]
    return "\n".join(lines) + "\n"
