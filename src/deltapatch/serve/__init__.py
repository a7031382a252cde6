"""``deltapatch serve``: many Δ-patches of one frozen backbone behind one HTTP API, with dynamic
batching (one routed forward per batch) and fan-out. Needs the ``serve`` extra (FastAPI,
uvicorn, prometheus-client, python-multipart); :mod:`.client` needs only the standard library.
See docs/SERVING.md."""
