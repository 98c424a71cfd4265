"""`python -m bench.redis_py_server ARGS`: `python -m rerank.server ARGS`, its Redis clients
redis-py's asyncio client (`bench.redis_py`) instead of ours: the other server of the Redis
client cell (`bench.redis_cost`). Run it with `--workers 1`: the swap is made in this process.
And without metrics, as the cell runs both servers: importing `_app` here imports
prometheus-client before `main` could choose its files.
"""

from __future__ import annotations

from bench.redis_py import RedisPyClient
from rerank.server import _app as app
from rerank.server.__main__ import main

if __name__ == "__main__":
    # `app` builds every Redis client the service uses (the limits' and the cache's).
    app.RedisClient = RedisPyClient  # type: ignore[attr-defined,assignment]
    raise SystemExit(main())
