"""`python -m genre_tf.batch_predict`, the command's short name; the code is genre_tf/serve/batch_predict.py."""
import sys

from genre_tf.serve.batch_predict import main

if __name__ == "__main__":
    sys.exit(main())
