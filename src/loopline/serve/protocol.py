"""The Open Inference Protocol v2 over REST: request bodies in, response bodies out.

The Open Inference Protocol ("OIP", KServe's V2 and Triton's predict protocol v2) sends
tensors as JSON: an inference request is ``{"id", "parameters", "inputs", "outputs"}``,
each input ``{"name", "shape", "datatype", "data"}`` with ``data`` a flat or nested
(row-major) array. This module turns such a body into numpy arrays and model outputs back
into a response body, with no HTTP framework: the ASGI app passes it bytes and headers.

The binary tensor data extension is supported both ways. A request may carry an input's
values as raw bytes after the JSON header: the ``Inference-Header-Content-Length`` header
gives the JSON's length and the input's ``parameters.binary_data_size`` its byte count,
the binary parts following one another in input order. Values are little-endian and
row-major; a BOOL is one byte (0 or 1); a BYTES element is a 4-byte little-endian length
and then that many bytes. A client asks for binary outputs with ``"binary_data": true``
in a requested output's parameters, or ``"binary_data_output": true`` in the request's
parameters for every output; such outputs carry ``parameters.binary_data_size`` and their
bytes follow the response's JSON.

Beyond the letter of the protocol:

- ``null`` in a floating-point input's JSON ``data`` is read as NaN (JSON has no NaN) and a
  NaN or infinity in a floating-point output is written as ``null``; binary data keeps
  them exactly.
- Nested ``data`` is flattened whatever its nesting; only the element count is checked
  against the shape.
- Inputs sent as binary data are read-only numpy views of the request body (no copy).

Every problem with a request raises ``ProtocolError`` with ``status=400`` and a message
naming the tensor, what was wrong and what to send instead; a model output that cannot be
written (an unsupported dtype, a shape that does not match its data) raises it with
``status=500``.

Examples
--------
>>> import orjson
>>> body = orjson.dumps({"id": "r1", "inputs": [
...     {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}]})
>>> request = parse_infer_request(body)
>>> request.input("x").data
array([[1. , 2. ],
       [3. , 4.5]], dtype=float32)
>>> y = request.input("x").data.sum(axis=1)
>>> body, headers = encode_infer_response(model_name="m", model_version="1", request=request,
...                                       outputs=[Tensor.from_numpy("y", y)])
>>> orjson.loads(body)
{'model_name': 'm', 'model_version': '1', 'id': 'r1',
 'outputs': [{'name': 'y', 'datatype': 'FP32', 'shape': [2], 'data': [3.0, 7.5]}]}
>>> headers
{'content-type': 'application/json'}
"""

from __future__ import annotations

import importlib.metadata
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from itertools import chain
from types import MappingProxyType
from typing import Any, NoReturn, cast

import numpy as np
import numpy.typing as npt
import orjson

from loopline.errors import ProtocolError

__all__ = [
    "BINARY_CONTENT_TYPE",
    "DATATYPES",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "JSON_CONTENT_TYPE",
    "InferRequest",
    "RequestedOutput",
    "Tensor",
    "TensorSpec",
    "datatype_of",
    "decodes_as_itself",
    "encode_infer_response",
    "error_body",
    "metadata_model",
    "metadata_server",
    "parse_infer_request",
]

HEADER_LENGTH = "inference-header-content-length"
"""The header (lower-cased, as ASGI spells headers) giving the JSON part's byte length."""
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
EXTENSIONS = ("binary_tensor_data",)
"""The protocol extensions this codec implements, as server metadata lists them."""

DATATYPES: Mapping[str, np.dtype[Any] | None] = MappingProxyType(
    {
        "BOOL": np.dtype("?"),
        "UINT8": np.dtype("<u1"),
        "UINT16": np.dtype("<u2"),
        "UINT32": np.dtype("<u4"),
        "UINT64": np.dtype("<u8"),
        "INT8": np.dtype("<i1"),
        "INT16": np.dtype("<i2"),
        "INT32": np.dtype("<i4"),
        "INT64": np.dtype("<i8"),
        "FP16": np.dtype("<f2"),
        "FP32": np.dtype("<f4"),
        "FP64": np.dtype("<f8"),
        "BYTES": None,
    }
)
"""Each OIP datatype and the numpy dtype of its arrays (little-endian, as the wire is).

BYTES tensors are ``dtype=object`` arrays holding ``bytes``."""

_OBJECT = np.dtype(object)
_FP64 = np.dtype("<f8")
_DATATYPE_LIST = ", ".join(DATATYPES)
_INT_RANGES = {
    name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for name, dtype in DATATYPES.items()
    if dtype is not None and dtype.kind in "iu"
}
# A float64 rounds to a finite value of a narrower float iff its magnitude is below the
# narrower type's largest finite value plus half a unit in its last place.
_FLOAT_LIMITS = {
    name: float(np.finfo(dtype).max) + 2.0 ** (np.finfo(dtype).maxexp - 2 - np.finfo(dtype).nmant)
    for name, dtype in DATATYPES.items()
    if dtype is not None and dtype.kind == "f" and dtype.itemsize < 8
}
_BY_KIND = {
    (dtype.kind, dtype.itemsize): name for name, dtype in DATATYPES.items() if dtype is not None
}
_NONE = type(None)
_LIST = {list}
_INTS = frozenset({int})
_NUMBERS = frozenset({int, float, _NONE})
# Each element category stands for itself by the Python type JSON gives its values
# (floats stand for every number); with the dtype and the exclusive (floats) or inclusive
# (integers) bounds of the values.
_FLOAT, _INT = float, int
_CATEGORY_NAMES = {
    float: "numbers (or null)",
    int: "integers",
    bool: "true or false",
    str: "strings",
}
_JSON_CHECKS: dict[str, tuple[type, np.dtype[Any] | None, Any, Any]] = {
    **{name: (int, DATATYPES[name], low, high) for name, (low, high) in _INT_RANGES.items()},
    **{name: (float, DATATYPES[name], -limit, limit) for name, limit in _FLOAT_LIMITS.items()},
    "FP64": (float, DATATYPES["FP64"], -math.inf, math.inf),
    "BOOL": (bool, DATATYPES["BOOL"], None, None),
    "BYTES": (str, None, None, None),
}
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_FP64_MAX = sys.float_info.max
_U32 = struct.Struct("<I")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_new_object = object.__new__


def decodes_as_itself(datatype: str, value: Any) -> bool:
    """Whether a one-element JSON tensor of ``datatype`` holding ``value`` decodes to a
    value equal to ``value`` itself (``None`` for FP64 decodes to NaN, a missing value).

    True for a number or null as FP64, an integer in range for an integer datatype, a
    boolean as BOOL and text as BYTES; False for FP32 and FP16 (which round), and for
    anything the decoder would refuse. A server can read such a request's values without
    building tensors, and the model sees what it would have.

    Examples
    --------
    >>> decodes_as_itself("INT8", 7), decodes_as_itself("INT8", 300)
    (True, False)
    >>> decodes_as_itself("FP64", None), decodes_as_itself("FP32", 0.1)
    (True, False)
    """
    checks = _JSON_CHECKS.get(datatype) if datatype not in _FLOAT_LIMITS else None
    if checks is None:
        return False
    category, _, low, high = checks
    kind = type(value)
    if category is _FLOAT:
        if kind is int:
            return bool(-_FP64_MAX <= value <= _FP64_MAX)
        return value is None or (kind is float and bool(low < value < high))
    if category is _INT:
        return kind is int and bool(low <= value <= high)
    return kind is category


# -- tensors ------------------------------------------------------------------------------


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The OIP datatype for a numpy array.

    Parameters
    ----------
    array
        Any numpy array. Object, ``bytes_`` (``S``) and ``str_`` (``U``) arrays are BYTES.

    Returns
    -------
    str
        One of the keys of ``DATATYPES``.

    Raises
    ------
    ProtocolError
        With ``status=500`` for a dtype the protocol has no datatype for (complex,
        datetime, structured, ``float128``).

    Examples
    --------
    >>> datatype_of(np.zeros(3, dtype=np.float32)), datatype_of(np.array([b"a", b"bc"]))
    ('FP32', 'BYTES')
    >>> datatype_of(np.zeros(2, dtype=np.complex64))
    Traceback (most recent call last):
    ...
    loopline.errors.ProtocolError: Arrays of dtype complex64 have no Open Inference ...
    """
    dtype = array.dtype
    kind = dtype.kind
    if kind in "OSU":
        return "BYTES"
    name = _BY_KIND.get((kind, dtype.itemsize))
    if name is None:
        raise ProtocolError(
            f"Arrays of dtype {dtype} have no Open Inference Protocol datatype. Convert "
            "the array to bool, an 8- to 64-bit integer, float16/32/64, or bytes.",
            status=500,
        )
    return name


@dataclass(frozen=True, eq=False)
class Tensor:
    """One named input or output tensor.

    Parameters
    ----------
    name
        The tensor's name.
    datatype
        Its OIP datatype, a key of ``DATATYPES``.
    shape
        Its shape.
    data
        The values, already shaped as ``shape``, with the dtype ``DATATYPES`` gives (BYTES:
        an object array of ``bytes``). For an output, any array that converts to that
        dtype will do (str elements are written as UTF-8).
    parameters
        The tensor's ``parameters`` object (for a request input, as the client sent it).

    Examples
    --------
    >>> t = Tensor.from_numpy("score", np.array([[0.25], [0.75]]))
    >>> t.datatype, t.shape
    ('FP64', (2, 1))
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: npt.NDArray[Any]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_numpy(
        cls, name: str, array: npt.NDArray[Any], *, parameters: Mapping[str, Any] | None = None
    ) -> Tensor:
        """A tensor for ``array`` with the datatype ``datatype_of`` gives and its shape."""
        return cls(
            name,
            datatype_of(array),
            array.shape,
            array,
            _EMPTY if parameters is None else parameters,
        )


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for by name.

    Parameters
    ----------
    name
        The output's name.
    binary
        Whether it is to be sent as binary data: its ``binary_data`` parameter, or when it
        has none, the request's ``binary_data_output``.
    parameters
        Its ``parameters`` object as the client sent it.
    """

    name: str
    binary: bool
    parameters: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class InferRequest:
    """A parsed inference request.

    Parameters
    ----------
    id
        The client's request id, echoed in the response; None when it sent none.
    inputs
        The input tensors, in the order sent.
    outputs
        The outputs asked for, in order; empty for every output of the model.
    parameters
        The request's ``parameters`` object.
    binary_output
        The request's ``parameters.binary_data_output``: every output as binary data,
        unless a requested output says otherwise.

    Examples
    --------
    >>> request = parse_infer_request(
    ...     b'{"inputs": [{"name": "a", "shape": [1], "datatype": "INT8", "data": [7]}]}')
    >>> request.input("a").data
    array([7], dtype=int8)
    >>> request.input("b")
    Traceback (most recent call last):
    ...
    loopline.errors.ProtocolError: The request has no input 'b'; it has 'a'.
    """

    id: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...]
    parameters: Mapping[str, Any]
    binary_output: bool

    @cached_property
    def _by_name(self) -> dict[str, Tensor]:
        return {tensor.name: tensor for tensor in self.inputs}

    def input(self, name: str) -> Tensor:
        """The input called ``name``; ``ProtocolError`` (400) naming the inputs sent if none."""
        tensor = self._by_name.get(name)
        if tensor is None:
            sent = ", ".join(repr(tensor.name) for tensor in self.inputs) or "no inputs"
            raise ProtocolError(f"The request has no input {name!r}; it has {sent}.", input=name)
        return tensor


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a model takes or returns, as model metadata describes it.

    Parameters
    ----------
    name
        The tensor's name.
    datatype
        Its OIP datatype, a key of ``DATATYPES``.
    shape
        Its shape; -1 (or None) for a dimension of any size, such as the batch.
    """

    name: str
    datatype: str
    shape: tuple[int | None, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ProtocolError(
                f"Tensor {self.name!r} has datatype {self.datatype!r}; use one of "
                f"{_DATATYPE_LIST}.",
                status=500,
            )
        if not all(d is None or (_is_int(d) and d >= -1) for d in self.shape):
            raise ProtocolError(
                f"Tensor {self.name!r} has shape {list(self.shape)}; each dimension must be "
                "a size (0 or more), or -1 or None for any size.",
                status=500,
            )

    def to_json(self) -> dict[str, Any]:
        """``{"name", "datatype", "shape"}`` with -1 for each variable dimension."""
        return {
            "name": self.name,
            "datatype": self.datatype,
            "shape": [-1 if d is None else int(d) for d in self.shape],
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


# -- requests -----------------------------------------------------------------------------


def parse_infer_request(
    body: bytes,
    *,
    header_length: int | None = None,
    max_elements: int = 10_000_000,
) -> InferRequest:
    """Parse an inference request body (JSON, optionally followed by binary tensor data).

    Parameters
    ----------
    body
        The HTTP request body.
    header_length
        The ``Inference-Header-Content-Length`` header's value: the byte length of the
        JSON at the start of the body, the rest being binary tensor data. None when the
        request has no such header, and the whole body is JSON.
    max_elements
        The most tensor elements (summed over the inputs) a request may hold.

    Returns
    -------
    InferRequest
        Its inputs' ``data`` shaped as sent, with the dtypes of ``DATATYPES``.

    Raises
    ------
    ProtocolError
        With ``status=400`` for anything the body gets wrong: not JSON, a missing or
        mistyped field, an unknown datatype, data whose count does not match the shape or
        whose values do not fit the datatype, binary sizes that do not add up.

    Examples
    --------
    >>> request = parse_infer_request(
    ...     b'{"inputs": [{"name": "n", "shape": [2], "datatype": "UINT8", "data": [1, 300]}]}')
    Traceback (most recent call last):
    ...
    loopline.errors.ProtocolError: Input 'n': 300 is out of range for UINT8 (0 to 255).

    With binary data after the JSON header:

    >>> header = b'{"inputs": [{"name": "b", "shape": [3], "datatype": "BOOL", '
    >>> header += b'"parameters": {"binary_data_size": 3}}]}'
    >>> parse_infer_request(header + bytes([1, 0, 1]), header_length=len(header)).inputs[0].data
    array([ True, False,  True])
    """
    body_length = len(body)
    if header_length is None:
        header: bytes | memoryview = body
    else:
        if header_length < 0 or header_length > body_length:
            raise ProtocolError(
                f"The Inference-Header-Content-Length header is {header_length}, but the "
                f"body has {body_length} bytes. Set it to the byte length of the JSON at the start "
                "of the body."
            )
        header = memoryview(body)[:header_length]
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        hint = (
            " If the body carries binary tensor data, send the JSON's byte length in the "
            "Inference-Header-Content-Length header."
            if header_length is None and _is_json(body[: exc.pos])
            else ""
        )
        raise ProtocolError(f"The request body is not valid JSON: {exc}.{hint}") from None
    if type(document) is not dict:
        raise ProtocolError(
            f"The inference request must be a JSON object with an 'inputs' array. "
            f"Got {_json_kind(document)}."
        )

    request_id = document.get("id")
    if request_id is not None and type(request_id) is not str:
        raise ProtocolError(f"The request's 'id' must be a string. Got {_show(request_id)}.")
    parameters = _object(document.get("parameters"), "The request's 'parameters'")
    binary_output = parameters.get("binary_data_output", False)
    if type(binary_output) is not bool:
        raise ProtocolError(
            "The request's parameters.binary_data_output must be true or false. "
            f"Got {_show(binary_output)}."
        )

    raw_inputs = document.get("inputs")
    if type(raw_inputs) is not list:
        raise ProtocolError(
            "The inference request needs an 'inputs' array, such as "
            '{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", '
            '"data": [1.0, 2.0, 3.0]}]}. '
            + ("It has none." if raw_inputs is None else f"Got {_json_kind(raw_inputs)}.")
        )
    tensors: list[Tensor | None] = []
    pending: list[tuple[int, str, str, list[int], int, int, Mapping[str, Any]]] = []
    names: set[str] = set()
    elements = 0
    for position, raw in enumerate(raw_inputs):
        if type(raw) is not dict:
            raise ProtocolError(
                f"Input {position} must be a JSON object with 'name', 'shape', 'datatype' "
                f"and 'data'. Got {_json_kind(raw)}."
            )
        name = raw.get("name")
        if type(name) is not str or not name:
            raise ProtocolError(f"Input {position} needs a 'name' string. Got {_show(name)}.")
        if name in names:
            raise ProtocolError(f"Input {name!r} is sent twice; send each input once.", input=name)
        names.add(name)
        datatype = raw.get("datatype")
        if type(datatype) is not str or datatype not in DATATYPES:
            raise ProtocolError(
                f"Input {name!r}: unknown datatype {_show(datatype)}. Use one of {_DATATYPE_LIST}.",
                input=name,
            )
        shape = raw.get("shape")
        if type(shape) is not list:
            _bad_shape(name, shape)
        count = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:
                _bad_shape(name, shape)
            count *= dim
        elements += count
        if elements > max_elements:
            raise ProtocolError(
                f"Input {name!r}: shape {shape} takes the request to {elements} elements; "
                f"this server takes at most {max_elements} per request. Split the request.",
                input=name,
            )
        raw_parameters = raw.get("parameters")
        input_parameters = (
            _EMPTY
            if raw_parameters is None
            else _object(raw_parameters, f"Input {name!r}: 'parameters'", name)
        )
        data = raw.get("data")
        binary_size = input_parameters.get("binary_data_size")
        if binary_size is None:
            if data is None:
                raise ProtocolError(
                    f"Input {name!r} has no 'data'. Send its values in 'data', or as binary "
                    "data after the JSON with parameters.binary_data_size.",
                    input=name,
                )
            array = _from_json(name, datatype, shape, count, data)
            tensors.append(_tensor(name, datatype, tuple(shape), array, input_parameters))
            continue
        if data is not None:
            raise ProtocolError(
                f"Input {name!r} has both 'data' and parameters.binary_data_size; send its "
                "values one way.",
                input=name,
            )
        if type(binary_size) is not int or binary_size < 0:
            raise ProtocolError(
                f"Input {name!r}: parameters.binary_data_size must be a byte count (an "
                f"integer, 0 or more). Got {_show(binary_size)}.",
                input=name,
            )
        if header_length is None:
            raise ProtocolError(
                f"Input {name!r} is sent as binary data (binary_data_size), but the request "
                "has no Inference-Header-Content-Length header. Send the JSON's byte length "
                "in it.",
                input=name,
            )
        pending.append((len(tensors), name, datatype, shape, count, binary_size, input_parameters))
        tensors.append(None)

    if header_length is not None:
        binary_total = body_length - header_length
        claimed = sum(item[5] for item in pending)
        if claimed != binary_total:
            raise ProtocolError(
                f"The inputs' binary_data_size values add up to {claimed} bytes, but the "
                f"body has {binary_total} bytes after its {header_length}-byte JSON header. "
                "Give each binary input the byte length of its data, and send the inputs' "
                "data in the order of 'inputs'."
            )
        view = memoryview(body)
        offset = header_length
        for index, name, datatype, shape, count, binary_size, input_parameters in pending:
            chunk = view[offset : offset + binary_size]
            offset += binary_size
            array = _from_binary(name, datatype, shape, count, chunk)
            tensors[index] = _tensor(name, datatype, tuple(shape), array, input_parameters)

    return InferRequest(
        request_id,
        cast("tuple[Tensor, ...]", tuple(tensors)),  # every None was replaced above
        _requested_outputs(document.get("outputs"), binary_output),
        parameters,
        binary_output,
    )


def _is_json(text: bytes) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _bad_shape(name: str, shape: Any) -> NoReturn:
    raise ProtocolError(
        f"Input {name!r}: 'shape' must be an array of sizes (integers, 0 or more), such as "
        f"[1, 3]. Got {_show(shape)}.",
        input=name,
    )


def _tensor(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    data: npt.NDArray[Any],
    parameters: Mapping[str, Any],
) -> Tensor:
    # The frozen dataclass's __init__ sets each field through object.__setattr__, about a
    # microsecond per tensor on the request path; filling __dict__ takes half of that.
    tensor: Tensor = _new_object(Tensor)
    tensor.__dict__.update(
        name=name, datatype=datatype, shape=shape, data=data, parameters=parameters
    )
    return tensor


def _requested_outputs(raw_outputs: Any, binary_output: bool) -> tuple[RequestedOutput, ...]:
    if raw_outputs is None:
        return ()
    if type(raw_outputs) is not list:
        raise ProtocolError(
            "The request's 'outputs' must be an array such as "
            f'[{{"name": "y", "parameters": {{"binary_data": true}}}}]. Got '
            f"{_json_kind(raw_outputs)}."
        )
    outputs = []
    names: set[str] = set()
    for position, raw in enumerate(raw_outputs):
        name = raw.get("name") if type(raw) is dict else None
        if type(name) is not str or not name:
            raise ProtocolError(
                f"Requested output {position} must be an object with a 'name' string, such "
                f'as {{"name": "y"}}. Got {_show(raw)}.'
            )
        if name in names:
            raise ProtocolError(f"Output {name!r} is requested twice; ask once.", output=name)
        names.add(name)
        output_parameters = _object(
            raw.get("parameters"), f"Requested output {name!r}: 'parameters'", output=name
        )
        binary = output_parameters.get("binary_data", binary_output)
        if type(binary) is not bool:
            raise ProtocolError(
                f"Requested output {name!r}: parameters.binary_data must be true or false. "
                f"Got {_show(binary)}.",
                output=name,
            )
        outputs.append(RequestedOutput(name, binary, output_parameters))
    return tuple(outputs)


def _from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> Any:
    if type(data) is not list:
        raise ProtocolError(
            f"Input {name!r}: 'data' must be an array of the values, flat or nested in "
            f"row-major order. Got {_json_kind(data)}.",
            input=name,
        )
    values = _flatten(data) if data and type(data[0]) is list else data
    if len(values) != count:
        raise ProtocolError(
            f"Input {name!r}: shape {shape} holds {count} elements but data has {len(values)}.",
            input=name,
        )
    category, dtype, low, high = _JSON_CHECKS[datatype]
    # One element is the common case (a row of scalar features): check it as a scalar;
    # otherwise by the set of element types and the extremes, both computed in C.
    if count == 1:
        value = values[0]
        kind = type(value)
        if category is _FLOAT:
            if kind is float or kind is int:
                if not low < value < high:
                    _out_of_range(name, datatype, value)
            elif value is not None:
                _bad_element(name, datatype, values, category)
        elif category is _INT:
            if kind is not int:
                _bad_element(name, datatype, values, category)
            if not low <= value <= high:
                _out_of_range(name, datatype, value)
        elif kind is not category:  # bool or str
            _bad_element(name, datatype, values, category)
    elif count:
        kinds = set(map(type, values))
        if category is _FLOAT:
            if not kinds <= _NUMBERS:
                _bad_element(name, datatype, values, category)
            if _NONE in kinds:
                if high != math.inf:
                    wide = np.array(values, dtype=_FP64)
                    too_big = np.abs(wide) >= high
                    if too_big.any():
                        _out_of_range(name, datatype, wide[too_big][0].item())
            else:
                smallest, largest = min(values), max(values)
                if smallest <= low or largest >= high:
                    _out_of_range(name, datatype, smallest if smallest <= low else largest)
        elif category is _INT:
            if not kinds <= _INTS:
                _bad_element(name, datatype, values, category)
            smallest, largest = min(values), max(values)
            if smallest < low or largest > high:
                _out_of_range(name, datatype, smallest if smallest < low else largest)
        elif len(kinds) != 1 or category not in kinds:
            _bad_element(name, datatype, values, category)
    if dtype is None:  # BYTES
        array = np.empty(count, dtype=_OBJECT)
        array[:] = [value.encode() for value in values]
    else:
        try:
            array = np.array(values, dtype=dtype)
        except OverflowError:  # an integer beyond a float's range (floats can reach inf)
            _out_of_range(name, datatype, next(v for v in values if type(v) is int))
    if len(shape) != 1:
        array = array.reshape(shape)
    return array


def _flatten(data: list[Any]) -> list[Any]:
    # One level at a time, in C; a list left among the values (uneven nesting) is then
    # reported as a wrong element.
    while data and type(data[0]) is list:
        if len(data) == 1:  # a single row, the common case
            data = data[0]
        elif set(map(type, data)) == _LIST:
            data = list(chain.from_iterable(data))
        else:
            break
    return data


def _bad_element(name: str, datatype: str, values: list[Any], category: type) -> NoReturn:
    what = _CATEGORY_NAMES[category]
    for position, value in enumerate(values):
        kind = type(value)
        if kind is category or (category is _FLOAT and (kind is int or value is None)):
            continue
        note = (
            " (a number with a fraction or an exponent, or one beyond 64 bits)"
            if kind is float and category is _INT
            else ""
        )
        raise ProtocolError(
            f"Input {name!r}: {datatype} data must be {what}; element {position} is "
            f"{_show(value)}{note}.",
            input=name,
        )
    raise AssertionError("unreachable: some element has a wrong type")  # pragma: no cover


def _out_of_range(name: str, datatype: str, value: Any) -> NoReturn:
    if datatype in _INT_RANGES:
        lowest, highest = _INT_RANGES[datatype]
        bounds = f"{lowest} to {highest}"
    else:
        bounds = f"largest magnitude {float(np.finfo(DATATYPES[datatype]).max):g}"
    raise ProtocolError(
        f"Input {name!r}: {_show(value)} is out of range for {datatype} ({bounds}).",
        input=name,
    )


def _from_binary(name: str, datatype: str, shape: list[int], count: int, chunk: memoryview) -> Any:
    dtype = DATATYPES[datatype]
    if dtype is None:
        return _bytes_elements(name, shape, count, chunk).reshape(shape)
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise ProtocolError(
            f"Input {name!r}: shape {shape} of {datatype} takes {expected} bytes, but "
            f"binary_data_size is {len(chunk)}.",
            input=name,
        )
    if dtype.kind == "b":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if count and raw.max() > 1:
            position = int(np.argmax(raw > 1))
            raise ProtocolError(
                f"Input {name!r}: binary BOOL data must be bytes 0 or 1; byte {position} is "
                f"{int(raw[position])}.",
                input=name,
            )
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _bytes_elements(name: str, shape: list[int], count: int, chunk: memoryview) -> Any:
    array = np.empty(count, dtype=_OBJECT)
    end = len(chunk)
    offset = 0
    for position in range(count):
        if offset + 4 > end:
            raise ProtocolError(
                f"Input {name!r}: the binary BYTES data holds {position} elements, but shape "
                f"{shape} holds {count}. Each element is a 4-byte little-endian length "
                "followed by that many bytes.",
                input=name,
            )
        (length,) = _U32.unpack_from(chunk, offset)
        offset += 4
        if offset + length > end:
            raise ProtocolError(
                f"Input {name!r}: binary BYTES element {position} says it has {length} bytes, "
                f"but only {end - offset} are left in binary_data_size. Each element is a "
                "4-byte little-endian length followed by that many bytes.",
                input=name,
            )
        array[position] = bytes(chunk[offset : offset + length])
        offset += length
    if offset != end:
        raise ProtocolError(
            f"Input {name!r}: the binary BYTES data of shape {shape} ({count} elements) ends "
            f"at byte {offset}, but binary_data_size is {end}.",
            input=name,
        )
    return array


def _object(value: Any, what: str, input: str | None = None, output: str | None = None) -> Any:
    if value is None:
        return {}
    if type(value) is not dict:
        message = f"{what} must be a JSON object. Got {_json_kind(value)}."
        if input is not None:
            raise ProtocolError(message, input=input)
        if output is not None:
            raise ProtocolError(message, output=output)
        raise ProtocolError(message)
    return value


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def _show(value: Any) -> str:
    """A value as the client wrote it (JSON), cut short."""
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):  # pragma: no cover - values come from JSON
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- responses ----------------------------------------------------------------------------


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | None,
    outputs: Sequence[Tensor],
    request: InferRequest | None = None,
    id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Write an inference response body, honoring what the request asked of its outputs.

    Parameters
    ----------
    model_name, model_version
        The model that answered (the version is left out when None).
    outputs
        Every output the model produced.
    request
        The request answered: its ``outputs`` pick which outputs to send and in what
        order, and with its ``binary_output``, which go as binary data. None sends every
        output as JSON.
    id
        The response id; by default the request's id (none when it had none).
    parameters
        The response's ``parameters`` object, if any.

    Returns
    -------
    tuple[bytes, dict[str, str]]
        The body and the headers to send with it (lower-cased names): ``content-type``
        (``application/json``, or ``application/octet-stream`` when binary data follows
        the JSON) and, with binary data, ``inference-header-content-length``.

    Raises
    ------
    ProtocolError
        With ``status=400`` when the request asks for an output the model does not have,
        or for a BYTES output in JSON whose bytes are not UTF-8; with ``status=500`` when
        an output's data does not match its datatype or shape.

    Examples
    --------
    >>> request = parse_infer_request(orjson.dumps({
    ...     "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [2.0]}],
    ...     "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}))
    >>> outputs = [Tensor.from_numpy("score", np.array([0.9])),
    ...            Tensor.from_numpy("label", np.array([b"late"], dtype=object))]
    >>> body, headers = encode_infer_response(model_name="m", model_version=None,
    ...                                       outputs=outputs, request=request)
    >>> headers["content-type"]
    'application/octet-stream'
    >>> json_length = int(headers["inference-header-content-length"])
    >>> orjson.loads(body[:json_length])
    {'model_name': 'm', 'outputs': [{'name': 'label', 'datatype': 'BYTES', 'shape': [1],
                                     'parameters': {'binary_data_size': 8}}]}
    >>> body[json_length:]
    b'\\x04\\x00\\x00\\x00late'
    """
    chosen: list[tuple[Tensor, bool]]
    if request is not None and request.outputs:
        available = {tensor.name: tensor for tensor in outputs}
        chosen = []
        for wanted in request.outputs:
            tensor = available.get(wanted.name)
            if tensor is None:
                has = ", ".join(repr(name) for name in available) or "none"
                raise ProtocolError(
                    f"Output {wanted.name!r} is requested, but model {model_name!r} has "
                    f"outputs {has}. Ask for one of those, or leave 'outputs' out to get "
                    "them all.",
                    output=wanted.name,
                )
            chosen.append((tensor, wanted.binary))
    else:
        binary = request is not None and request.binary_output
        chosen = [(tensor, binary) for tensor in outputs]

    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = model_version
    response_id = id if id is not None else None if request is None else request.id
    if response_id is not None:
        document["id"] = response_id
    if parameters:
        document["parameters"] = dict(parameters)
    entries = []
    blobs = []
    for tensor, binary in chosen:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary:
            blob = _to_binary(tensor)
            entry["parameters"] = {**tensor.parameters, "binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            if tensor.parameters:
                entry["parameters"] = dict(tensor.parameters)
            entry["data"] = _to_json_data(tensor)
        entries.append(entry)
    document["outputs"] = entries
    try:
        header = orjson.dumps(document, option=_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise ProtocolError(
            f"The response for model {model_name!r} cannot be written as JSON: {exc}. Give "
            "outputs and parameters plain JSON values.",
            status=500,
        ) from exc
    if not blobs:
        return header, {"content-type": JSON_CONTENT_TYPE}
    return b"".join([header, *blobs]), {
        "content-type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(header)),
    }


def _checked(tensor: Tensor) -> tuple[np.dtype[Any] | None, npt.NDArray[Any]]:
    if tensor.datatype not in DATATYPES:
        raise ProtocolError(
            f"Output {tensor.name!r} has datatype {tensor.datatype!r}; use one of "
            f"{_DATATYPE_LIST}.",
            status=500,
            output=tensor.name,
        )
    dtype = DATATYPES[tensor.datatype]
    data = np.asarray(tensor.data)
    if data.size != math.prod(tensor.shape):
        raise ProtocolError(
            f"Output {tensor.name!r}: shape {list(tensor.shape)} holds "
            f"{math.prod(tensor.shape)} elements but its data has {data.size}.",
            status=500,
            output=tensor.name,
        )
    if dtype is not None and data.dtype != dtype:
        if data.dtype.kind in "OSUcmMV":
            raise ProtocolError(
                f"Output {tensor.name!r} is declared {tensor.datatype} but holds {data.dtype} "
                "values.",
                status=500,
                output=tensor.name,
            )
        data = data.astype(dtype)
    return dtype, data


def _to_json_data(tensor: Tensor) -> Any:
    dtype, data = _checked(tensor)
    if dtype is not None:
        return np.ascontiguousarray(data).reshape(-1)
    strings = []
    for value in data.reshape(-1).tolist():
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise ProtocolError(
                    f"Output {tensor.name!r} holds bytes that are not UTF-8 text, which JSON "
                    "cannot carry. Ask for it as binary data: "
                    f'"outputs": [{{"name": "{tensor.name}", "parameters": '
                    '{"binary_data": true}}], or "parameters": {"binary_data_output": true}.',
                    output=tensor.name,
                ) from None
        elif not isinstance(value, str):
            raise _not_bytes(tensor, value)
        strings.append(value)
    return strings


def _to_binary(tensor: Tensor) -> bytes:
    dtype, data = _checked(tensor)
    if dtype is not None:
        return np.ascontiguousarray(data).tobytes()
    parts = []
    for value in data.reshape(-1).tolist():
        if isinstance(value, str):
            value = value.encode()
        elif not isinstance(value, bytes):
            raise _not_bytes(tensor, value)
        parts.append(_U32.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def _not_bytes(tensor: Tensor, value: object) -> ProtocolError:
    return ProtocolError(
        f"Output {tensor.name!r} is BYTES but holds a {type(value).__name__}; BYTES "
        "elements must be bytes or str.",
        status=500,
        output=tensor.name,
    )


def error_body(message: str) -> bytes:
    """The JSON body of an error response: ``{"error": message}``.

    Examples
    --------
    >>> error_body("The request has no input 'b'; it has 'a'.")
    b'{"error":"The request has no input \\'b\\'; it has \\'a\\'."}'
    """
    return orjson.dumps({"error": message})


# -- metadata -----------------------------------------------------------------------------


def metadata_server(
    *,
    name: str = "loopline",
    version: str | None = None,
    extensions: Sequence[str] = EXTENSIONS,
) -> dict[str, Any]:
    """The server metadata object (``GET /v2``).

    Parameters
    ----------
    name
        The server's name.
    version
        Its version; by default the installed loopline's.
    extensions
        The protocol extensions it supports; by default those of this codec.

    Examples
    --------
    >>> metadata_server(version="1.0")
    {'name': 'loopline', 'version': '1.0', 'extensions': ['binary_tensor_data']}
    """
    return {
        "name": name,
        "version": _installed_version() if version is None else version,
        "extensions": list(extensions),
    }


@cache
def _installed_version() -> str:
    try:
        return importlib.metadata.version("loopline")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "0+unknown"


def metadata_model(
    name: str,
    *,
    versions: Sequence[str] = (),
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The model metadata object (``GET /v2/models/{name}[/versions/{version}]``).

    Parameters
    ----------
    name
        The model's name.
    versions
        Its versions that can be asked for (left out when empty).
    platform
        The framework that runs it, such as ``"lightgbm"``.
    inputs, outputs
        The tensors it takes and returns.

    Examples
    --------
    >>> metadata_model("flights", versions=["3"], platform="lightgbm",
    ...                inputs=[TensorSpec("distance", "FP64", (None, 1))],
    ...                outputs=[TensorSpec("delayed", "FP64", (-1,))])
    {'name': 'flights', 'versions': ['3'], 'platform': 'lightgbm',
     'inputs': [{'name': 'distance', 'datatype': 'FP64', 'shape': [-1, 1]}],
     'outputs': [{'name': 'delayed', 'datatype': 'FP64', 'shape': [-1]}]}
    """
    document: dict[str, Any] = {"name": name}
    if versions:
        document["versions"] = list(versions)
    document["platform"] = platform
    document["inputs"] = [spec.to_json() for spec in inputs]
    document["outputs"] = [spec.to_json() for spec in outputs]
    return document
