"""The function both servers of `cargo xtask bench python` serve: apinode as a
`python-function` endpoint, FastAPI as a POST route (fastapi_app.py)."""


def add(a, b):
    return a + b
