"""Stage 5, benchmarks: Table 3 over seeds, speed and scale figures, FLOP counts. May use every stage.

    python -m genre_tf.bench quick|all|speed|scale ...
"""
