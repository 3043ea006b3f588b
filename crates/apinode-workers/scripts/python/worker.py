# apinode Python worker: loads one user code file, then answers calls from the node.
#
# Protocol (docs/workers.md): frames of a 4-byte big-endian length then that many bytes of UTF-8
# JSON, node -> worker on stdin, worker -> node on stdout. The first frame is the `init` message;
# the worker answers it with `{"ready": ...}` or `{"error": ...}`, then answers each call frame
# with exactly one `{"ok": ...}` or `{"error": ...}` frame. EOF on stdin ends the worker.
#
# User code never sees the protocol's file descriptors: the real stdout is duplicated for the
# frames and fd 1 / sys.stdout point at stderr, so `print` (and C code writing to fd 1) ends up
# in the node's log instead of corrupting a frame. Stdin is replaced by /dev/null.

import faulthandler
import json
import math
import os
import struct
import sys
import traceback
import types

MAX_FRAME = 1 << 30


def _take_protocol_fds():
    proto_in = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull, "r")
    sys.stdout = sys.stderr
    return proto_in, proto_out


def read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        raise ValueError("frame of %d bytes is larger than the limit" % length)
    body = stream.read(length)
    if len(body) < length:
        return None
    return json.loads(body)


def write_frame(stream, message):
    body = encode(message)
    stream.write(struct.pack(">I", len(body)) + body)
    stream.flush()


def _to_plain(value):
    """numpy / pandas scalars and arrays, dates and sets as plain JSON-able Python values."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            return item()
        except Exception:
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def _finite(value):
    """The value with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return _finite(_to_plain(value))


def encode(message):
    try:
        text = json.dumps(message, allow_nan=False, default=_to_plain, ensure_ascii=False,
                          separators=(",", ":"))
    except ValueError:
        # Out-of-range floats: the slow path, only for replies that hold NaN or infinity.
        text = json.dumps(_finite(message), allow_nan=False, ensure_ascii=False,
                          separators=(",", ":"))
    # "replace": a lone surrogate in a string must not make the whole reply unreadable.
    return text.encode("utf-8", "replace")


def _user_frames(tb):
    """The traceback without this script's own frames, so it starts in user code."""
    here = os.path.abspath(__file__)
    start = tb
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == here:
        tb = tb.tb_next
    return tb if tb is not None else start


def error_reply(exc):
    status = getattr(exc, "http_status_code", None)
    tb = _user_frames(exc.__traceback__)
    return {
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
            "http_status": status if isinstance(status, int) else None,
        }
    }


class UserCodeError(Exception):
    """A problem with what the user code defines or returns, reported like a user exception."""


def load_module(code_file, folders):
    """Runs the user's file as module `user_code`, with `folders` defined before its first line."""
    code_dir = os.path.dirname(os.path.abspath(code_file))
    # Like `python file.py`: the file's own directory first, so sibling modules import.
    sys.path[0] = code_dir
    module = types.ModuleType("user_code")
    module.__file__ = code_file
    module.folders = folders
    sys.modules["user_code"] = module
    with open(code_file, "rb") as f:
        source = f.read()
    exec(compile(source, code_file, "exec"), module.__dict__)
    return module


def find_predictor_class(module, wanted):
    if wanted:
        cls = getattr(module, wanted, None)
        if not isinstance(cls, type):
            raise UserCodeError("%s defines no class `%s`" % (module.__file__, wanted))
        return cls
    from dataiku.apinode.predict.predictor import Predictor

    own = [v for v in vars(module).values()
           if isinstance(v, type) and v.__module__ == "user_code"]
    subclasses = [c for c in own if issubclass(c, Predictor)]
    candidates = subclasses or [c for c in own if callable(getattr(c, "predict", None))]
    if len(candidates) != 1:
        names = ", ".join(c.__name__ for c in candidates) or "none"
        raise UserCodeError(
            "%s must define exactly one predictor class (a ClassificationPredictor or "
            "RegressionPredictor subclass, or a class with a `predict` method); found: %s"
            % (module.__file__, names))
    return candidates[0]


class FunctionTarget:
    def __init__(self, module, name):
        self.function = getattr(module, name, None)
        if not callable(self.function):
            raise UserCodeError("%s defines no function `%s`" % (module.__file__, name))

    def call(self, message):
        args = message.get("args")
        if not isinstance(args, dict):
            raise UserCodeError("the request body must be a JSON object")
        return self.function(**args)


class PredictorTarget:
    def __init__(self, module, class_name, data_folder):
        import pandas  # noqa: F401 (fail at warm-up, not on the first call, when it is missing)

        cls = find_predictor_class(module, class_name)
        self.predictor = cls(data_folder)

    def call(self, message):
        import pandas as pd

        records = message.get("records")
        if not isinstance(records, list):
            raise UserCodeError("`records` must be a list of feature objects")
        if not records:
            return {"predictions": [], "classes": None, "probas": None, "custom_keys": None}
        frame = pd.DataFrame.from_records(records)
        return split_prediction(self.predictor.predict(frame), len(records))


def _is_missing(value):
    """None, NaN, NaT and pd.NA: Dataiku's "not predicted"."""
    import pandas as pd

    if value is None:
        return True
    try:
        missing = pd.isna(value)
    except Exception:
        return False
    # Of a scalar, pd.isna gives a (numpy) bool; of a list-like value, an array: not missing.
    return bool(missing) if getattr(missing, "ndim", 0) == 0 else False


def split_prediction(result, rows):
    """Dataiku's return shapes -> per-row lists: predictions, probas by class, custom keys."""
    import pandas as pd

    probas = custom_keys = None
    if isinstance(result, tuple):
        if len(result) == 3:
            predictions, probas, custom_keys = result
        elif len(result) == 2:
            predictions, second = result
            if isinstance(second, pd.DataFrame):
                probas = second
            else:
                custom_keys = second
        elif len(result) == 1:
            (predictions,) = result
        else:
            raise UserCodeError("predict returned a tuple of %d elements; expected "
                                "series, (series, probas_df) or (series, probas_df, custom_keys)"
                                % len(result))
    else:
        predictions = result
    values = list(predictions)
    if len(values) != rows:
        raise UserCodeError("predict returned %d predictions for %d rows" % (len(values), rows))
    out = {"predictions": [None if _is_missing(v) else _to_plain_scalar(v) for v in values],
           "classes": None, "probas": None, "custom_keys": None}
    if probas is not None:
        if not isinstance(probas, pd.DataFrame):
            raise UserCodeError("the probabilities must be a pandas DataFrame with one column "
                                "per class, not %s" % type(probas).__name__)
        if len(probas) != rows:
            raise UserCodeError("predict returned %d rows of probabilities for %d rows"
                                % (len(probas), rows))
        out["classes"] = [str(c) for c in probas.columns]
        matrix = probas.to_numpy(dtype=float, na_value=float("nan")).tolist()
        out["probas"] = [[p if math.isfinite(p) else None for p in row] for row in matrix]
    if custom_keys is not None:
        custom_keys = list(custom_keys)
        if len(custom_keys) != rows:
            raise UserCodeError("predict returned %d custom keys for %d rows"
                                % (len(custom_keys), rows))
        for keys in custom_keys:
            if keys is not None and not isinstance(keys, dict):
                raise UserCodeError("each custom key entry must be a dict or None, not %s"
                                    % type(keys).__name__)
        out["custom_keys"] = custom_keys
    return out


def _to_plain_scalar(value):
    if isinstance(value, (str, int, float, bool)):
        return value
    return _to_plain(value)


def main():
    proto_in, proto_out = _take_protocol_fds()
    faulthandler.enable()
    # The shipped `dataiku` shim goes last: a real `dataiku` package in the environment wins.
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim"))

    init = read_frame(proto_in)
    if init is None:
        return
    try:
        module = load_module(init["code_file"], init.get("folders") or [])
        if init["kind"] == "function":
            target = FunctionTarget(module, init["entry"])
        else:
            target = PredictorTarget(module, init.get("entry"), init.get("data_folder"))
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit at import, ...
        write_frame(proto_out, error_reply(exc))
        return
    write_frame(proto_out, {"ready": {"pid": os.getpid(), "version": sys.version.split()[0]}})

    while True:
        message = read_frame(proto_in)
        if message is None:
            return
        try:
            reply = {"ok": target.call(message)}
        except Exception as exc:
            # SystemExit and KeyboardInterrupt are not caught: the worker ends, and the node
            # answers the call as a dead worker and starts a new one.
            write_frame(proto_out, error_reply(exc))
            continue
        try:
            body = encode(reply)
        except Exception as exc:
            write_frame(proto_out, error_reply(
                TypeError("the return value is not JSON-serializable: %s" % exc)))
            continue
        proto_out.write(struct.pack(">I", len(body)) + body)
        proto_out.flush()


if __name__ == "__main__":
    main()
