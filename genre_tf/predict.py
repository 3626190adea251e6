"""`python -m genre_tf.predict`, the command's short name; the code is genre_tf/serve/predict.py."""
import sys

from genre_tf.serve.predict import main

if __name__ == "__main__":
    sys.exit(main())
