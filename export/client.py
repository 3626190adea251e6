"""Clients for a genre_tf model on TF Serving: the REST JSON body and the gRPC PredictRequest.

    python export/client.py --rest http://localhost:8501 --plot "A detective ..." --poster poster.jpg
    python export/client.py --grpc localhost:8500 --plot "A detective ..." --poster poster.jpg

Needs only numpy (REST) and tensorflow-serving-api (gRPC); not genre_tf.
"""
import argparse
import base64
import json
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path


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


def post_rest(url: str, body: str, model_name: str = "genre_tf", timeout: float = 30.0) -> dict:
    """POST the body to http://HOST:8501/v1/models/<model_name>:predict; returns the parsed reply."""
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/models/{model_name}:predict", data=body.encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


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


def send_grpc(target: str, request, timeout: float = 30.0):
    """Send a PredictRequest to HOST:8500; returns the PredictResponse."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--rest", help="http://HOST:8501")
    target.add_argument("--grpc", help="HOST:8500")
    parser.add_argument("--model-name", default="genre_tf")
    parser.add_argument("--plot", required=True)
    parser.add_argument("--poster", default="", help="an image file (optional)")
    args = parser.parse_args(argv)
    poster = Path(args.poster).read_bytes() if args.poster else b""
    if args.rest:
        print(json.dumps(post_rest(args.rest, rest_body([args.plot], [poster]), args.model_name), indent=1))
    else:
        print(send_grpc(args.grpc, grpc_request([args.plot], [poster], args.model_name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
