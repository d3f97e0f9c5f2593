#!/usr/bin/env python3
"""Serves a GGUF model over llama.cpp's OpenAI-compatible HTTP API (xllamacpp's embedded server).

Started by scripts/lib.sh (start_llama) with PYTHONPATH=.tools/py; runs until SIGTERM/SIGINT, then
exits 0. Endpoints: /health, /v1/models, /v1/chat/completions (SSE with "stream": true), /metrics.

Usage: llama-server.py --model PATH --port N [--ctx 2048] [--threads 2] [--alias NAME]
"""
import argparse
import os
import signal
import sys
import threading


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="path to a .gguf file")
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--ctx", type=int, default=2048, help="context size in tokens")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for generation and batches")
    ap.add_argument("--alias", action="append", default=[],
                    help="model id to report in /v1/models (default: the file name)")
    args = ap.parse_args()
    if not os.path.isfile(args.model):
        print(f"llama-server: no model at {args.model}", file=sys.stderr)
        return 2

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = args.model
    p.hostnames = ["127.0.0.1"]
    p.port = args.port
    p.n_ctx = args.ctx
    p.n_parallel = 1
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.endpoint_metrics = True
    if args.alias:
        p.model_alias = set(args.alias)
    server = xlc.Server(p)  # loads the model and serves on its own threads
    print(f"llama-server: xllamacpp {xlc.__version__} serving {os.path.basename(args.model)} "
          f"on http://127.0.0.1:{args.port} (pid {os.getpid()})", file=sys.stderr, flush=True)

    while not stop.wait(1.0):
        pass
    print("llama-server: stopping", file=sys.stderr, flush=True)
    del server
    # The native server threads have no stop call in the Python API: leave without waiting for them.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
