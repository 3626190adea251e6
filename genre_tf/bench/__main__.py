"""`python -m genre_tf.bench`: Table 3, speed and scale (genre_tf/bench/table3.py)."""
import sys

from genre_tf.bench.table3 import main

sys.exit(main())
