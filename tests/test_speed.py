"""The speed benchmark's arithmetic: FLOPs of the models it times, rates against the peak, the report."""
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


def test_the_report_states_the_batch_1_ratio():
    peak = {"float32": 100.0, "bfloat16": 200.0}
    training = [rate_row("training poster", 32, 0.1, 10**6, 100.0, feature_cache=True, pipeline_examples_per_s=900.0)]
    serving = [rate_row("serving integrated", 1, 0.030, 10**9, 100.0, p95_ms=40.0, tokens=48),
               rate_row("serving integrated", 32, 0.480, 10**9, 100.0, p95_ms=500.0, tokens=64)]
    served = [{"run_dir": "runs/x", "rows": serving}]
    text = speed_markdown({"peak_gflops": peak, "training": training, "serving": served,
                           "peak_rss_mib": 1000.0, "peak_rss_mib_after_training": 900.0})
    assert "float32 100 GFLOP/s, bfloat16 200 GFLOP/s" in text
    assert "| serving integrated | float32 | 1 | 33.3 | 30.0 | 1 | 33.3 | 33% |" in text
    assert "Per example at batch 32: 15.0 ms, so batch 1 takes 2.0x" in text
    assert "poster (cached) 900 examples/s" in text and "48 tokens at batch 1 and 64 at batch 32" in text


def test_served_flops_count_the_trimmed_plot_length(tiny_hub_bert):
    import tensorflow as tf

    from genre_tf.bench.speed import encoded_tokens, served_flops
    from genre_tf.config import TextEncoderConfig
    from genre_tf.nets.encoders import build_text_encoder
    from genre_tf.serve.serving import ServingParts

    encoder, preprocessor = tiny_hub_bert
    text = build_text_encoder(TextEncoderConfig(encoder=encoder, preprocessor=preprocessor, seq_length=128))
    assert encoded_tokens(text, tf.constant(["a short plot"])) == 16
    assert encoded_tokens(text, tf.constant(["a short plot", " ".join(["word"] * 40)])) == 48  # 42 tokens
    parts = ServingParts("text_frozen", ["a"], None, head=None, text_encoder=text, poster_encoder=None,
                         text_mean=None, poster_mean=None, image_size=32, seq_length=128)
    per_layer = 2 * 16 * (4 * 8 * 8 + 2 * 8 * 16) + 2 * 2 * 16 * 16 * 8
    assert served_flops(parts, 16) == 2 * per_layer + 2 * 8 * 8
