"""The ingest benchmark's floor: a FastAPI endpoint on the receiver's route that reads the body and
writes nothing, served the same way (``python -m bench.bare_endpoint --port P``)."""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/callbacks/{scan_id:path}/{token}")
async def callback(scan_id: str, token: str, request: Request) -> dict:
    await request.body()
    return {"status": "stored"}


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")
