"""Clients for a genre_tf model on TF Serving: the REST JSON body and the gRPC PredictRequest.

    python export/client.py --rest http://localhost:8501 --plot "A detective ..." --poster poster.jpg
    python export/client.py --grpc localhost:8500 --plot "A detective ..." --poster poster.jpg

Needs only numpy (REST) and tensorflow-serving-api (gRPC); not genre_tf.
"""
import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import socket
import stat
import sys
import threading
import unicodedata
import urllib.error
import urllib.parse
from collections.abc import Sequence


MAX_POSTER_BYTES = 20 * 2**20  # genre_tf.limits.MAX_POSTER_BYTES; the client does not import genre_tf
MAX_ANSWER_BYTES = 16 * 2**20  # a reply for one request of 512 movies takes well under 1 MiB
OUTPUTS = ("probabilities", "predicted", "genres", "inputs_used")  # genre_tf's serving outputs
MAX_GENRES = 1_000  # probabilities in one movie's answer; genre_tf's vocabularies hold tens


class BadAnswer(ValueError):
    """The server answered, but not with genre_tf's outputs."""


class RequestTimedOut(TimeoutError):
    """The whole request took longer than --timeout (a slow or trickling server)."""


def rest_body(plots: Sequence[str], posters: Sequence[bytes | None], signature: str = "serving_default") -> str:
    """TF Serving's row-format JSON: {"instances": [{"plot": ..., "poster": {"b64": ...}}]}.

    A missing poster is sent as empty bytes; the model then predicts from the plot.
    """
    instances = [{"plot": plot, "poster": {"b64": base64.b64encode(poster or b"").decode("ascii")}}
                 for plot, poster in zip(plots, posters, strict=True)]
    return json.dumps({"signature_name": signature, "instances": instances})


def decode_rest_body(body: str) -> dict[str, list]:
    """What TF Serving does with a row-format body: {"b64": ...} becomes bytes, rows become columns."""
    instances = json.loads(body)["instances"]

    def value(item):
        return base64.b64decode(item["b64"]) if isinstance(item, dict) and "b64" in item else item
    return {name: [value(row[name]) for row in instances] for name in instances[0]}


def printable(text: str, lines: bool = False) -> str:
    """The text without control or format characters (a server's terminal escapes); newlines kept when `lines`."""
    return "".join(c for c in text if (lines and c == "\n") or unicodedata.category(c) not in ("Cc", "Cf"))


def post_rest(url: str, body: str, model_name: str = "genre_tf", timeout: float = 30.0, movies: int = 1) -> dict:
    """POST the body (of `movies` movies) to http://HOST:8501/v1/models/<model_name>:predict; returns the reply.

    `timeout` bounds the whole request, not each socket read: a server that trickles its answer a byte at a
    time is cut off when the time is up (TimeoutError). An answer that is not well-formed HTTP is a BadAnswer.
    """
    parts = urllib.parse.urlsplit(f"{url.rstrip('/')}/v1/models/{model_name}:predict")
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    expired = threading.Event()

    def expire():  # unblocks whatever read or write is waiting on the socket
        expired.set()
        with contextlib.suppress(OSError, AttributeError):
            connection.sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        connection.connect()
        if expired.is_set():
            raise TimeoutError
        connection.request("POST", parts.path, body=body.encode("utf-8"), headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        answer = reply.read(MAX_ANSWER_BYTES + 1)
    except (OSError, http.client.HTTPException, ValueError) as error:
        if expired.is_set():
            raise RequestTimedOut(f"no complete answer within --timeout {timeout:g} s") from None
        if isinstance(error, OSError):
            raise
        detail = printable(" ".join(str(error).split()))[:100]  # the server's bytes, on one line
        raise BadAnswer(f"the answer is not valid HTTP ({type(error).__name__}: {detail})") from None
    finally:
        timer.cancel()
        connection.close()
    if expired.is_set():
        raise RequestTimedOut(f"no complete answer within --timeout {timeout:g} s")
    if reply.status != 200:
        raise urllib.error.HTTPError(url, reply.status, reply.reason, reply.headers, io.BytesIO(answer))
    return parse_answer(answer, movies)


def parse_answer(body: bytes, movies: int = 1) -> dict:
    """A REST reply checked to be genre_tf's for `movies` movies: {"predictions": [{probabilities, predicted,
    genres, inputs_used}]} with probabilities in [0, 1]; its text is made printable."""
    if len(body) > MAX_ANSWER_BYTES:
        raise BadAnswer(f"the answer is larger than {MAX_ANSWER_BYTES} bytes; is this TF Serving?")
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # RecursionError: JSON nested too deep
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:100]
        raise BadAnswer(f"the answer is not JSON ({reason}): {body[:60]!r}") from None
    rows = answer.get("predictions") if isinstance(answer, dict) else None
    if not (isinstance(rows, list) and rows and all(isinstance(row, dict) and set(OUTPUTS) <= set(row)
                                                      for row in rows)):
        raise BadAnswer(f"the answer is JSON but not genre_tf's outputs ({', '.join(OUTPUTS)} per movie): "
                        f"{json.dumps(answer)[:100]}")
    if len(rows) != movies:  # what is printed is bounded by what was sent
        raise BadAnswer(f"the answer holds {len(rows)} movies for the {movies} sent")
    for number, row in enumerate(rows, 1):
        problem = row_problem(row)
        if problem:
            raise BadAnswer(f"the answer's movie {number} {problem}")
        row["genres"], row["inputs_used"] = printable(row["genres"]), printable(row["inputs_used"])
    return answer


def row_problem(row: dict) -> str | None:
    """What makes one movie's REST answer not genre_tf's, or None: probabilities, predicted and the two texts."""
    probabilities, predicted = row["probabilities"], row["predicted"]
    if not (isinstance(probabilities, list) and 0 < len(probabilities) <= MAX_GENRES):
        return f"has no list of 1 to {MAX_GENRES} probabilities"
    for value in probabilities:  # NaN and infinities fail the comparison; JSON's true is no probability
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            return f"has the probability {printable(str(value))[:20]}, not a number in [0, 1]"
    if not (isinstance(predicted, list) and len(predicted) == len(probabilities)
            and all(isinstance(value, bool) for value in predicted)):
        return "has no true or false in 'predicted' for each probability"
    if not all(isinstance(row[name], str) for name in ("genres", "inputs_used")):
        return "has 'genres' or 'inputs_used' that are not text"
    return None


def grpc_request(plots: Sequence[str], posters: Sequence[bytes | None], model_name: str = "genre_tf",
                 signature: str = "serving_default"):
    """A tensorflow_serving PredictRequest with string tensors `plot` and `poster`."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import model_pb2, predict_pb2

    def strings(values):
        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))])
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=list(values))

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    request.inputs["plot"].CopyFrom(strings([plot.encode("utf-8") for plot in plots]))
    request.inputs["poster"].CopyFrom(strings([poster or b"" for poster in posters]))
    return request


def send_grpc(target: str, request, timeout: float = 30.0, movies: int = 1):
    """Send a PredictRequest of `movies` movies to HOST:8500; returns the PredictResponse, checked (BadAnswer),
    or raises ConnectionError when the call fails."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]) as channel:
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout)
        except grpc.RpcError as error:
            raise ConnectionError(printable(f"gRPC {error.code().name}: {error.details()}")) from None
    check_grpc_answer(response, movies)
    return response


def check_grpc_answer(response, movies: int) -> None:
    """BadAnswer unless the PredictResponse holds genre_tf's outputs for `movies` movies, probabilities in [0, 1]."""
    missing = [name for name in OUTPUTS if name not in response.outputs]
    if missing:
        raise BadAnswer(f"the answer lacks genre_tf's outputs {missing}; it has {sorted(response.outputs)[:10]}")
    import numpy as np

    tensor = response.outputs["probabilities"]
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    # a float tensor comes packed (tensor_content) or as a list (float_val), as its writer chose
    values = np.frombuffer(tensor.tensor_content, "<f4") if tensor.tensor_content else np.array(tensor.float_val)
    if len(shape) != 2 or shape[0] != movies or not 0 < shape[1] <= MAX_GENRES or values.size != movies * shape[1]:
        raise BadAnswer(f"the answer's probabilities have the shape {shape[:4]}, not [{movies}, genres]")
    if not ((values >= 0) & (values <= 1)).all():  # NaN fails the comparison
        raise BadAnswer("the answer holds a probability that is not a number in [0, 1]")


def request_once(args, poster: bytes) -> str:
    """Send one movie to the server the arguments name; returns the reply, printable."""
    if args.rest:
        body = rest_body([args.plot], [poster])
        return json.dumps(post_rest(args.rest, body, args.model_name, args.timeout, movies=1), indent=1)
    return str(send_grpc(args.grpc, grpc_request([args.plot], [poster], args.model_name), args.timeout, movies=1))


def failure_message(error: OSError, target: str) -> str:
    """One line saying why a request failed: the server's own error, or that it cannot be reached."""
    if isinstance(error, urllib.error.HTTPError):
        body = error.read(4096).decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError, RecursionError):  # TF Serving answers {"error": "..."}
            body = json.loads(body).get("error", body)
        return f"TF Serving at {target} answered HTTP {error.code}: {printable(' '.join(str(body).split()))[:300]}"
    if isinstance(error, RequestTimedOut):
        return f"TF Serving at {target} sent {error}"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    return f"no answer from TF Serving at {target}: {reason}; is the server running there?"


def read_poster(path: str) -> bytes:
    """A poster file's bytes: a regular file of at most MAX_POSTER_BYTES (a FIFO or /dev/zero is refused)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    with open(path, "rb") as handle:
        data = handle.read(MAX_POSTER_BYTES + 1)
    if len(data) > MAX_POSTER_BYTES:
        raise ValueError(f"larger than {MAX_POSTER_BYTES} bytes, the limit genre_tf applies to posters")
    return data


def timeout_seconds(text: str) -> float:
    """argparse type for --timeout: a finite number of seconds above 0 (inf would wait forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"must be above 0 and under a day (86400 s), got {text!r}")
    return value


def rest_url_problem(url: str) -> str | None:
    """Why --rest is not http(s)://HOST[:PORT] with a port of 1 to 65535, or None when it is."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as error:
        return f"--rest {url!r} is not a URL: {error}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--rest takes http://HOST:PORT, got {url!r}"
    if port == 0:
        return f"--rest {url!r}: the port must be 1 to 65535"
    return None


class CommandLine(argparse.ArgumentParser):
    """argparse whose usage errors are one line, exit 2 (genre_tf.config's, which this standalone client does not
    import)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def main(argv=None) -> int:
    parser = CommandLine(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--rest", help="http://HOST:8501")
    target.add_argument("--grpc", help="HOST:8500")
    parser.add_argument("--model-name", default="genre_tf")
    parser.add_argument("--plot", required=True)
    parser.add_argument("--poster", default="", help="an image file (optional)")
    parser.add_argument("--timeout", type=timeout_seconds, default=30.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    problem = rest_url_problem(args.rest) if args.rest else None
    if problem:
        parser.error(problem)
    try:
        poster = read_poster(args.poster) if args.poster else b""
    except (OSError, ValueError) as error:
        print(f"error: cannot read the poster {args.poster}: {getattr(error, 'strerror', None) or error}",
              file=sys.stderr)
        return 2
    try:
        print(printable(request_once(args, poster), lines=True))  # what the server said reaches no terminal raw
    except OSError as error:  # URLError, refused, reset, timed out, and send_grpc's ConnectionError
        print(f"error: {printable(failure_message(error, args.rest or args.grpc))}", file=sys.stderr)
        return 1
    except BadAnswer as error:
        print(f"error: {args.rest or args.grpc} answered, but {printable(str(error))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
