"""Run train.py as N MultiWorkerMirroredStrategy workers on this machine (127.0.0.1), one process each.

    python -m genre_tf.train.multiworker --workers 2 model.kind=poster run_dir=runs/two-workers

Each process gets a TF_CONFIG naming the whole cluster and its own index; worker 0 is the chief and
owns the run directory. On real machines, start train.py distribute=multi_worker on each host with
TF_CONFIG listing the hosts instead. batch_size stays per replica: the global batch is
batch_size x workers, and each replica computes the soft-F1 loss over its own batch_size examples.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from genre_tf.config import CommandLine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, holding train.py


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def tf_configs(count: int) -> list[str]:
    """One TF_CONFIG per worker of a local cluster."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(count)]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            for index in range(count)]


def run_workers(overrides: Sequence[str], workers: int = 2, timeout: float = 1800) -> list[int]:
    """Start the workers, stream the chief's output, wait for all; returns their exit codes."""
    processes = []
    for index, tf_config in enumerate(tf_configs(workers)):
        env = dict(os.environ, TF_CONFIG=tf_config, TF_CPP_MIN_LOG_LEVEL="2")
        command = [sys.executable, os.path.join(ROOT, "train.py"), "distribute=multi_worker", *overrides]
        processes.append(subprocess.Popen(command, env=env, stdout=None if index == 0 else subprocess.PIPE,
                                          stderr=subprocess.STDOUT if index else None, text=True))
    codes = []
    for index, process in enumerate(processes):
        output, _ = process.communicate(timeout=timeout)
        if process.returncode and output:
            print(f"--- worker {index} output ---\n{output[-4000:]}", file=sys.stderr)
        codes.append(process.returncode)
    return codes


def main(argv=None) -> int:
    parser = CommandLine(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="train.py options")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    codes = run_workers(args.overrides, args.workers)
    print(f"worker exit codes: {codes}")
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main())
