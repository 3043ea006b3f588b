"""The FastAPI side of `cargo xtask bench python` (benches/http/python.rs): the same `add` as
apinode's `python-function` endpoint, as a POST route on the same path, taking the same JSON
body (its keys become keyword arguments, as apinode does) and answering `{"response": ...}`.

Written as a user wanting speed would: an `async def` route (a plain `def` would run in
Starlette's thread pool), the body taken as a dict (no model to validate), served by
`uvicorn --http httptools --loop uvloop --log-level warning --no-access-log`.
"""

from typing import Any

from fastapi import Body, FastAPI

from functions import add

app = FastAPI()


@app.post("/public/api/v1/bench/add/run")
async def run(args: dict[str, Any] = Body()):
    return {"response": add(**args)}
