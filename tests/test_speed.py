"""The speed benchmark's arithmetic: FLOPs of the models it times, rates against the peak, the report."""
import numpy as np
import pytest

import genre_tf  # noqa: F401  selects tf-keras

from genre_tf.bench.speed import matmul_peak, rate_row, speed_markdown, training_step

TINY_BERT = 2 * (2 * 128 * (4 * 8 * 8 + 2 * 8 * 16) + 2 * 2 * 128 * 128 * 8) + 2 * 8 * 8  # see conftest's tiny BERT
TEXT_HEAD = 2 * (8 * 16 + 16 * 8 + 8 * 4)  # text_units [16, 8], 4 genres


def test_fine_tuning_step_flops_count_the_tf_hub_encoder(make_tiny_config, tmp_path):
    measured = training_step(make_tiny_config("text_finetuned", run_dir=tmp_path), steps=1, warmup=1,
                             min_seconds=0)
    assert measured["flops"] == 3 * (TINY_BERT + TEXT_HEAD)
    assert measured["train_seconds"] > 0 and measured["pipeline_seconds"] > 0


def test_a_head_over_cached_features_counts_only_the_head(make_tiny_config, tmp_path):
    config = make_tiny_config("integrated", "model.fine_tune_text=false", "model.fusion=concat", run_dir=tmp_path)
    fused = 2 * ((8 + 1280) * 8 + 8 * 4)  # the text head's 8 and Lite0's 1280 features into 8 units, then 4 genres
    head = 2 * (8 * 16 + 16 * 8) + fused
    assert training_step(config, steps=1, warmup=1, min_seconds=0)["flops"] == 3 * head


def test_rates_against_the_peak():
    row = rate_row("x", batch=32, seconds_per_call=0.5, flops_per_example=2_000_000_000, peak=256.0)
    assert row["examples_per_s"] == 64 and row["gflops"] == 128 and row["fraction_of_peak"] == 0.5
    assert row["ms_per_call"] == 500 and row["gflop_per_example"] == 2


def test_the_matmul_peak_is_a_rate_in_gflops():
    assert matmul_peak("float32", size=256, calls=2) > 0.1  # any CPU multiplies 256^3 in well under 0.3 s


def test_the_report_puts_each_serving_path_beside_the_first():
    peak = {"float32": 100.0, "bfloat16": 200.0}
    training = [rate_row("training poster", 32, 0.1, 10**6, 100.0, feature_cache=True, pipeline_examples_per_s=900.0)]
    serving = [rate_row("serving", 32, 0.480, 10**9, 100.0, path="before", tokens=128),
               rate_row("serving", 1, 0.030, 10**9, 100.0, path="before", p95_ms=40.0, tokens=80),
               rate_row("serving", 32, 0.120, 10**9, 200.0, path="chunks", tokens=70, dtype="bfloat16"),
               rate_row("serving", 1, 0.020, 10**9, 200.0, path="chunks", p95_ms=25.0, tokens=80, dtype="bfloat16")]
    padding = {"plots": 10, "median_tokens": 65.0, "before": 0.46, "chunks": 0.09}
    served = [{"run_dir": "runs/x", "rows": serving, "padding": padding}]
    text = speed_markdown({"peak_gflops": peak, "training": training, "serving": served,
                           "peak_rss_mib": 1000.0, "peak_rss_mib_after_training": 900.0})
    assert "float32 100 GFLOP/s, bfloat16 200 GFLOP/s" in text
    assert "| before | float32 | 32 | 128 | 66.7 | 480.0 |  | 1.0x | 66.7 | 67% |" in text
    assert "| chunks | bfloat16 | 32 | 70 | 266.7 | 120.0 |  | 4.0x | 266.7 | 133% |" in text
    assert "| chunks | bfloat16 | 1 | 80 | 50.0 | 20.0 | 25.0 | 1.5x | 50.0 | 25% |" in text
    assert "10 plots (median 65 tokens): before 46%; chunks 9% of the tokens encoded" in text
    assert "poster (cached) 900 examples/s" in text


def test_padded_lengths_follow_the_batch_or_its_chunks():
    from genre_tf.bench.speed import padded_lengths, padding_fraction

    lengths = np.array([10, 100, 20, 30, 120, 5])
    assert padded_lengths(lengths, 32, 0).tolist() == [128] * 6  # the request's longest, 120 -> 128
    assert padded_lengths(lengths, 3, 0).tolist() == [112, 112, 112, 128, 128, 128]
    # sorted within each request of 32 (5, 10, 20 | 30, 100, 120), then padded chunk by chunk, in request order
    assert padded_lengths(lengths, 32, 3).tolist() == [32, 128, 32, 128, 128, 32]
    assert padding_fraction(lengths, padded_lengths(lengths, 32, 0)) == pytest.approx(1 - 285 / 768)


def test_served_flops_count_the_trimmed_plot_length(tiny_hub_bert):
    from genre_tf.bench.speed import padded_lengths, served_flops, token_lengths
    from genre_tf.config import TextEncoderConfig
    from genre_tf.nets.encoders import build_text_encoder
    from genre_tf.serve.serving import ServingParts

    encoder, preprocessor = tiny_hub_bert
    text = build_text_encoder(TextEncoderConfig(encoder=encoder, preprocessor=preprocessor, seq_length=128))
    lengths = token_lengths(text, ["a short plot", " ".join(["word"] * 40)])
    assert lengths.tolist() == [5, 42]  # [CLS] and [SEP] included
    assert padded_lengths(lengths, 32, 0).tolist() == [48, 48] and padded_lengths(lengths, 32, 1).tolist() == [16, 48]
    parts = ServingParts("text_frozen", ["a"], None, head=None, text_encoder=text, poster_encoder=None,
                         text_mean=None, poster_mean=None, image_size=32, seq_length=128)
    per_layer = 2 * 16 * (4 * 8 * 8 + 2 * 8 * 16) + 2 * 2 * 16 * 16 * 8
    assert served_flops(parts, 16) == 2 * per_layer + 2 * 8 * 8


@pytest.mark.slow
def test_serving_paths_and_feature_caching_are_timed_on_the_runs_test_movies(make_tiny_config, tmp_path):
    from genre_tf.bench.speed import SERVING_PATHS, caching_rows, serving_markdown, serving_rows
    from genre_tf.train.training import train

    run_dir = train(make_tiny_config("integrated", "epochs=1", "model.fusion=late", run_dir=tmp_path / "run"))
    peak = {"float32": 100.0, "bfloat16": 200.0}
    served = serving_rows(run_dir, peak, movies=40, calls=3)
    assert [(row["path"], row["batch"]) for row in served["rows"]] == [
        (label, batch) for label, _, _ in SERVING_PATHS for batch in (32, 1)]
    before, chunked = served["rows"][0], served["rows"][2]
    # the generated plots are 20 words: 32 tokens either way, so chunks change no FLOP count here
    assert chunked["tokens"] == before["tokens"] == 32 and chunked["gflop_per_example"] == before["gflop_per_example"]
    assert served["padding"]["plots"] == 120  # small_prepared: every movie of the dataset
    assert 0 < served["padding"]["plots padded in chunks of 8"] <= served["padding"][SERVING_PATHS[0][0]] < 1
    assert set(served["stages"][SERVING_PATHS[0][0]]) == {"text encoder", "poster decoding", "poster encoder",
                                                           "text_fraction_of_peak"}
    assert "| plots padded in chunks of 8 | float32 | 32 |" in serving_markdown(served["rows"], served["padding"],
                                                                                 served["stages"])
    caching = caching_rows(run_dir, peak, movies=20)
    assert [(row["what"], row["dtype"]) for row in caching] == [
        (what, dtype) for dtype in ("float32", "bfloat16") for what in ("caching plot embeddings",
                                                                         "caching poster features")]
    assert all(row["projected_s"] > 0 for row in caching)


@pytest.mark.slow
def test_runs_served_in_turns_hold_a_smaller_text_encoder_against_the_first(make_tiny_config, tiny_hub_bert,
                                                                             tmp_path):
    import os

    import tf_keras as keras

    from genre_tf.bench.speed import runs_in_turns, turns_markdown
    from genre_tf.nets.bert import BertShape, build_bert_encoder, save_hub_encoder
    from genre_tf.train.training import train

    encoder, _ = tiny_hub_bert
    keras.utils.set_random_seed(4)
    with open(os.path.join(os.path.dirname(encoder), "vocab.txt"), encoding="utf-8") as handle:
        vocab_size = len(handle.read().split())
    one_layer = build_bert_encoder(BertShape(vocab_size=vocab_size, hidden_size=8, num_layers=1, num_heads=2,
                                             intermediate_size=16, max_positions=128))
    save_hub_encoder(one_layer, str(tmp_path / "student"))
    runs = [train(make_tiny_config("integrated", "epochs=1", "model.fusion=late", *extra, run_dir=tmp_path / name))
            for name, extra in (("teacher", ()), ("student", (f"text.encoder={tmp_path / 'student'}",)))]
    rows = runs_in_turns(runs, {"float32": 100.0, "bfloat16": 200.0}, movies=40, calls=3)
    assert [row["run_dir"] for row in rows] == runs
    # the generated plots are 20 words (32 tokens): one layer's work instead of two, and the same pooler
    layer, pooler = 2 * 32 * (4 * 8 * 8 + 2 * 8 * 16) + 2 * 2 * 32 * 32 * 8, 2 * 8 * 8
    assert [round(row["text_gflop"] * 1e9) for row in rows] == [2 * layer + pooler, layer + pooler]
    assert all(row["batch_movies_per_s"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0 and row["caching_plots_per_s"] > 0
               for row in rows)
    table = turns_markdown(rows)
    first, second = table.splitlines()[2:4]
    assert first.startswith(f"| `{runs[0]}` | 0.00 |") and first.count("(1.00x)") == 4  # the first run against itself
    assert second.startswith(f"| `{runs[1]}` |") and second.count("x)") == 4
