"""Cache keys: what a step's output depends on, hashed.

The key covers the step's name, its code, its declared ``version``, its parameters and
the content hashes of its inputs. A parameter that reads external data (``Files``,
``Query``) contributes the fingerprint of that data, not just its description, so a
changed file or table is never answered from the cache.

Examples
--------
>>> from loopline.pipeline.step import step
>>> @step
... def double(x: int = 1) -> int:
...     return 2 * x
>>> a = cache_key(double, {"x": 1}, {})
>>> a == cache_key(double, {"x": 1}, {}), a == cache_key(double, {"x": 2}, {})
(True, False)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import orjson

from loopline.pipeline.step import Step
from loopline.types import Fingerprinted

__all__ = ["cache_key", "fingerprint_params"]

_FORMAT = "loopline-cache-1"


def fingerprint_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as hashed: external data by its fingerprint, the rest as JSON."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, Fingerprinted):
            out[name] = {"fingerprint": value.fingerprint(), "of": value.to_param()}
        else:
            out[name] = value
    return out


def cache_key(step: Step, params: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """Hash of the step's code, version, parameters and input content hashes.

    ``params`` are the step's parameter values (fingerprinted here); ``inputs`` maps
    argument names to the content hashes of the upstream outputs.
    """
    document = {
        "format": _FORMAT,
        "step": step.name,
        "code": step.code_hash,
        "version": step.version,
        "params": fingerprint_params(params),
        "inputs": dict(inputs),
    }
    try:
        payload = orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        # Values orjson refuses (integers beyond 64 bits, custom objects): the standard
        # library's encoder, with repr standing in for what JSON cannot hold.
        payload = json.dumps(document, sort_keys=True, default=repr).encode()
    return hashlib.sha256(payload).hexdigest()
