"""The HTTP anchors, on CodeSherpa's stack: an empty endpoint and bare workers.

``POST /echo`` returns ``{}``; ``POST /bare/{worker}`` runs a cell in a bare worker
process (``bench/bare_worker.py``).

Served exactly as ``codesherpa serve`` serves the service (``service/cli.py``): FastAPI
under ``uvicorn.run`` with one worker, log level info, no access log (the service's
default), same logging setup.  What the service costs beyond this is the price of its
routes and its sandbox.

    python -m bench.anchor_app --port 8001
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from fastapi import FastAPI

from bench import bare_worker

app = FastAPI(title="empty endpoint")


@app.post("/echo")
async def echo() -> dict[str, str]:
    return {}


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.anchor_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # Forked before uvicorn starts its event loop, as a zygote's workers would be.
    front = bare_worker.BareWorkerFront(app, bare_worker.start_workers())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # As ``codesherpa serve`` runs by default: a line per request would cost the anchor
    # a share of its round trip the service does not pay.
    uvicorn.run(
        front, host=args.host, port=args.port, workers=1, log_level="info", access_log=False
    )


if __name__ == "__main__":
    main()
