"""`python -m genre_tf.prepare`, the command's short name; the code is genre_tf/data/prepare.py."""
import sys

from genre_tf.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
