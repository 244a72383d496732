"""The OIP v2 REST codec, checked against hand-written bodies and Triton's own client.

``tritonclient.http`` builds request bodies the way a real client does
(``InferInput.set_data_from_numpy`` then ``generate_request_body``) and reads our
responses the way a real client does (``InferResult.from_response_body``).
"""

from __future__ import annotations

import json
import pickle
import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from loopline.errors import LooplineError, ProtocolError, ServingError
from loopline.serve import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    Tensor,
    TensorSpec,
    datatype_of,
    encode_infer_response,
    error_body,
    metadata_model,
    metadata_server,
    parse_infer_request,
)

httpclient = pytest.importorskip("tritonclient.http")

# One example array per datatype, with the extremes of each integer range.
EXAMPLES: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255]], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.array([[-(2**31)], [2**31 - 1]], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -65504.0, 1e-4], dtype=np.float16),
    "FP32": np.array([[1.5, -2.25], [3.4e38, 1e-38]], dtype=np.float32),
    "FP64": np.array([1.0 / 3.0, -1e300, 5e-324]),
    "BYTES": np.array([[b"late", b""], ["caf\u00e9".encode(), b"x" * 300]], dtype=object),
}


def body_of(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()  # unlike orjson, writes integers beyond 64 bits


def one_input(**fields: Any) -> bytes:
    tensor = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    tensor.update(fields)
    return body_of({"inputs": [tensor]})


def client_request(
    arrays: dict[str, np.ndarray[Any, Any]],
    *,
    binary: bool,
    outputs: list[Any] | None = None,
    request_id: str = "",
) -> tuple[bytes, int | None]:
    """A request body and its JSON length, as tritonclient writes them."""
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype_of(array))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id
    )
    return body, json_size


def client_result(body: bytes, headers: dict[str, str]) -> Any:
    """Our response body as tritonclient reads it."""
    length = headers.get(HEADER_LENGTH)
    return httpclient.InferResult.from_response_body(
        body, header_length=None if length is None else int(length)
    )


def assert_same(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any], datatype: str) -> None:
    assert got.shape == want.shape
    if datatype == "BYTES":
        assert got.dtype == object
        assert got.ravel().tolist() == want.ravel().tolist()
    else:
        assert got.dtype == DATATYPES[datatype]
        np.testing.assert_array_equal(got, want)


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_travels_from_the_client_and_back(datatype: str, binary: bool) -> None:
    array = EXAMPLES[datatype]
    body, json_size = client_request({"t": array}, binary=binary, request_id="r-7")
    request = parse_infer_request(body, header_length=json_size)
    assert request.id == "r-7"
    tensor = request.input("t")
    assert (tensor.name, tensor.datatype, tensor.shape) == ("t", datatype, array.shape)
    assert_same(tensor.data, array, datatype)

    # No 'outputs' from the client means parameters.binary_data_output = true.
    assert request.binary_output is True
    output = Tensor.from_numpy("out", tensor.data)
    response, headers = encode_infer_response(
        model_name="m", model_version="2", outputs=[output], request=request
    )
    assert headers["content-type"] == "application/octet-stream"
    result = client_result(response, headers)
    assert result.get_response()["id"] == "r-7"
    assert result.get_response()["model_version"] == "2"
    assert_same(result.as_numpy("out"), array, datatype)


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_is_answered_in_json_when_asked(datatype: str) -> None:
    array = EXAMPLES[datatype]
    body, json_size = client_request(
        {"t": array},
        binary=False,
        outputs=[httpclient.InferRequestedOutput("out", binary_data=False)],
    )
    request = parse_infer_request(body, header_length=json_size)
    response, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        outputs=[Tensor.from_numpy("out", array)],
        request=request,
    )
    assert headers == {"content-type": "application/json"}
    document = orjson.loads(response)
    assert "parameters" not in document["outputs"][0]
    got = client_result(response, headers).as_numpy("out")
    if datatype == "BYTES":  # JSON carries text: the client reads it back as str
        want = np.array([b.decode() for b in array.ravel()], dtype=object).reshape(array.shape)
        assert got.ravel().tolist() == want.ravel().tolist()
    else:
        assert_same(got, array, datatype)


def test_nested_and_flat_data_give_the_same_array() -> None:
    flat = parse_infer_request(
        one_input(shape=[2, 3], datatype="INT32", data=[1, 2, 3, 4, 5, 6])
    ).input("x")
    nested = parse_infer_request(
        one_input(shape=[2, 3], datatype="INT32", data=[[1, 2, 3], [4, 5, 6]])
    ).input("x")
    deep = parse_infer_request(
        one_input(shape=[1, 2, 3], datatype="INT32", data=[[[1, 2, 3], [4, 5, 6]]])
    ).input("x")
    np.testing.assert_array_equal(flat.data, nested.data)
    np.testing.assert_array_equal(flat.data, deep.data.reshape(2, 3))
    assert flat.data.shape == nested.data.shape == (2, 3)
    assert flat.data.dtype == np.int32


def test_empty_tensors_and_scalars() -> None:
    request = parse_infer_request(
        body_of(
            {
                "inputs": [
                    {"name": "e", "shape": [0, 3], "datatype": "FP32", "data": []},
                    {"name": "s", "shape": [], "datatype": "INT64", "data": [7]},
                ]
            }
        )
    )
    assert request.input("e").data.shape == (0, 3)
    assert request.input("s").data.shape == ()
    assert request.input("s").data.item() == 7


def test_numbers_in_float_tensors_and_null_as_nan() -> None:
    tensor = parse_infer_request(one_input(shape=[3], datatype="FP64", data=[1, 2.5, None])).input(
        "x"
    )
    assert tensor.data[:2].tolist() == [1.0, 2.5]
    assert np.isnan(tensor.data[2])
    single = parse_infer_request(one_input(shape=[1], datatype="FP32", data=[None])).input("x")
    assert np.isnan(single.data[0])


def test_json_strings_become_utf8_bytes() -> None:
    tensor = parse_infer_request(
        one_input(shape=[2], datatype="BYTES", data=["caf\u00e9", "\U0001f600"])
    ).input("x")
    assert tensor.data.dtype == object
    assert tensor.data.tolist() == ["caf\u00e9".encode(), "\U0001f600".encode()]


def test_binary_inputs_mixed_with_json_inputs_keep_their_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([b"one", b"two"], dtype=object)
    c = np.array([1, 2, 3], dtype=np.int16)
    inputs = []
    for name, array, binary in [("a", a, True), ("c", c, False), ("b", b, True)]:
        tensor = httpclient.InferInput(name, list(array.shape), datatype_of(array))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)
    request = parse_infer_request(body, header_length=json_size)
    assert [t.name for t in request.inputs] == ["a", "c", "b"]
    assert_same(request.input("a").data, a, "FP32")
    assert_same(request.input("b").data, b, "BYTES")
    assert_same(request.input("c").data, c, "INT16")
    assert request.input("a").parameters == {"binary_data_size": 24}


def test_binary_bool_is_one_byte_per_element() -> None:
    header = body_of(
        {
            "inputs": [
                {
                    "name": "b",
                    "shape": [2, 2],
                    "datatype": "BOOL",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    )
    request = parse_infer_request(header + bytes([1, 0, 0, 1]), header_length=len(header))
    assert request.input("b").data.tolist() == [[True, False], [False, True]]


# -- requests that are wrong --------------------------------------------------------------


def problem(body: bytes, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(body, **kwargs)
    assert info.value.status == 400
    return info.value


def test_shape_and_data_count_must_agree() -> None:
    error = problem(one_input(shape=[2, 3], data=[1, 2, 3, 4, 5]))
    assert str(error) == "Input 'x': shape [2, 3] holds 6 elements but data has 5."
    assert error.input == "x"  # type: ignore[attr-defined]
    nested = problem(one_input(shape=[2, 2], data=[[1, 2], [3]]))
    assert "holds 4 elements but data has 3" in str(nested)


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT32", [1, 1.5], "INT32 data must be integers; element 1 is 1.5"),
        ("INT32", [1.0], "INT32 data must be integers; element 0 is 1.0"),
        ("INT64", [True, 2], "INT64 data must be integers; element 0 is true"),
        ("UINT8", ["3"], 'UINT8 data must be integers; element 0 is "3"'),
        ("FP32", [1.0, "2"], 'FP32 data must be numbers (or null); element 1 is "2"'),
        ("FP64", [False], "FP64 data must be numbers (or null); element 0 is false"),
        ("BOOL", [1, 0], "BOOL data must be true or false; element 0 is 1"),
        ("BOOL", [True, None], "BOOL data must be true or false; element 1 is null"),
        ("BYTES", ["a", 1], "BYTES data must be strings; element 1 is 1"),
        ("BYTES", [None], "BYTES data must be strings; element 0 is null"),
        ("FP32", [{"a": 1}, 2.0], 'element 0 is {"a":1}'),
        ("FP32", [[1.0], 2.0], "element 0 is [1.0]"),
        ("FP32", [1.0, [2.0]], "element 1 is [2.0]"),
    ],
)
def test_values_must_match_the_datatype(datatype: str, data: list[Any], expected: str) -> None:
    error = problem(one_input(shape=[2] if len(data) == 2 else [1], datatype=datatype, data=data))
    assert expected in str(error)


def test_a_64_bit_overflow_is_explained() -> None:
    error = problem(one_input(shape=[1], datatype="UINT64", data=[2**64]))
    assert "beyond 64 bits" in str(error)


@pytest.mark.parametrize(
    ("datatype", "value", "bounds"),
    [
        ("UINT8", 256, "(0 to 255)"),
        ("UINT8", -1, "(0 to 255)"),
        ("INT8", -129, "(-128 to 127)"),
        ("INT16", 32768, "(-32768 to 32767)"),
        ("UINT64", -1, "(0 to 18446744073709551615)"),
        ("INT64", 2**63, "(-9223372036854775808 to 9223372036854775807)"),
        ("FP16", 65520.0, "(largest magnitude 65504)"),
        ("FP16", -70000, "(largest magnitude 65504)"),
        ("FP32", 1e39, "(largest magnitude 3.40282e+38)"),
    ],
)
@pytest.mark.parametrize("count", [1, 3])
def test_values_must_fit_the_datatype(datatype: str, value: Any, bounds: str, count: int) -> None:
    data = [value] if count == 1 else [0, value, 0]
    error = problem(one_input(shape=[count], datatype=datatype, data=data))
    assert f"is out of range for {datatype} {bounds}" in str(error)


def test_an_overflowing_float_is_found_among_nulls() -> None:
    error = problem(one_input(shape=[3], datatype="FP32", data=[None, 1e39, 1.0]))
    assert "1e+39 is out of range for FP32" in str(error)


def test_numbers_beyond_float64_are_not_json() -> None:
    body = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1, 1'
    body += b"0" * 400 + b"]}]}"
    assert "not valid JSON: number is infinity" in str(problem(body))


def test_the_largest_floats_that_round_to_finite_values_are_taken() -> None:
    request = parse_infer_request(one_input(shape=[2], datatype="FP16", data=[65519.0, -65504]))
    assert request.input("x").data.tolist() == [65504.0, -65504.0]


def test_unknown_datatype_lists_the_known_ones() -> None:
    error = problem(one_input(datatype="FP8"))
    assert str(error).startswith("Input 'x': unknown datatype \"FP8\". Use one of BOOL, UINT8,")
    assert "BYTES" in str(error)
    assert "unknown datatype [1]" in str(problem(one_input(datatype=[1])))


@pytest.mark.parametrize(
    "body",
    [b'{"inputs": [', b'{"inputs": [{"data": [NaN]}]}', b"", b'{"inputs": [Infinity]}'],
)
def test_malformed_json_is_reported_with_its_position(body: bytes) -> None:
    error = problem(body)
    assert str(error).startswith("The request body is not valid JSON: ")
    assert "(char " in str(error)


def test_trailing_bytes_without_the_header_suggest_it() -> None:
    error = problem(one_input() + b"\x00\x01")
    assert "Inference-Header-Content-Length" in str(error)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[1, 2]", "must be a JSON object with an 'inputs' array. Got an array."),
        (b"{}", "needs an 'inputs' array"),
        (b'{"inputs": {}}', "Got an object."),
        (b'{"inputs": [3]}', "Input 0 must be a JSON object"),
        (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', "needs a 'name'"),
        (b'{"inputs": [{"name": "x", "shape": [1], "data": [1]}]}', "unknown datatype null"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}', "'shape' must be"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', "has no 'data'"),
        (one_input(data=3), "'data' must be an array"),
        (one_input(shape=[-1]), "Got [-1]"),
        (one_input(shape=[2.0]), "Got [2.0]"),
        (one_input(shape=[True, 2]), "Got [true,2]"),
        (one_input(shape="2"), 'Got "2"'),
        (one_input(parameters=[]), "Input 'x': 'parameters' must be a JSON object"),
        (b'{"id": 5, "inputs": []}', "'id' must be a string. Got 5."),
        (b'{"parameters": 1, "inputs": []}', "The request's 'parameters' must be a JSON object"),
        (
            b'{"parameters": {"binary_data_output": 1}, "inputs": []}',
            "binary_data_output must be true or false",
        ),
        (b'{"inputs": [], "outputs": {}}', "'outputs' must be an array"),
        (b'{"inputs": [], "outputs": [{}]}', "Requested output 0 must be an object"),
        (b'{"inputs": [], "outputs": ["y"]}', "Requested output 0 must be an object"),
        (b'{"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]}', "requested twice"),
        (
            b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}',
            "parameters.binary_data must be true or false",
        ),
    ],
)
def test_missing_and_mistyped_fields(body: bytes, expected: str) -> None:
    assert expected in str(problem(body))


def test_an_input_is_sent_once() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    error = problem(body_of({"inputs": [tensor, tensor]}))
    assert "Input 'x' is sent twice" in str(error)


def test_the_element_limit_counts_the_whole_request() -> None:
    tensor = {"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}
    body = body_of({"inputs": [tensor, {**tensor, "name": "y"}]})
    assert len(parse_infer_request(body, max_elements=6).inputs) == 2
    error = problem(body, max_elements=5)
    assert "Input 'y': shape [3] takes the request to 6 elements" in str(error)
    assert "at most 5" in str(error)
    huge = one_input(shape=[10**9, 10**9], data=[])
    assert "at most 10000000" in str(problem(huge))


def binary_request(sizes: list[int], payload: bytes, datatype: str = "UINT8") -> tuple[bytes, int]:
    header = body_of(
        {
            "inputs": [
                {
                    "name": f"in{i}",
                    "shape": [size],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": size},
                }
                for i, size in enumerate(sizes)
            ]
        }
    )
    return header + payload, len(header)


def test_binary_sizes_must_add_up_to_the_body() -> None:
    body, length = binary_request([2, 3], b"\x01" * 5)
    request = parse_infer_request(body, header_length=length)
    assert request.input("in1").data.tolist() == [1, 1, 1]
    short = problem(body[:-1], header_length=length)
    assert "add up to 5 bytes, but the body has 4 bytes after its" in str(short)
    long = problem(body + b"\x00", header_length=length)
    assert "add up to 5 bytes, but the body has 6 bytes" in str(long)
    no_binary = problem(one_input() + b"\x00", header_length=len(one_input()))
    assert "add up to 0 bytes, but the body has 1 bytes" in str(no_binary)


def test_the_header_length_must_fit_in_the_body() -> None:
    body = one_input()
    error = problem(body, header_length=len(body) + 1)
    assert f"header is {len(body) + 1}, but the body has {len(body)} bytes" in str(error)
    assert "header is -1" in str(problem(body, header_length=-1))


def test_a_header_length_that_cuts_the_json_is_not_json() -> None:
    body = one_input()
    assert "not valid JSON" in str(problem(body, header_length=len(body) - 3))


def test_binary_data_needs_the_header() -> None:
    body, length = binary_request([1], b"\x01")
    assert "has no Inference-Header-Content-Length header" in str(problem(body[:length]))
    assert "Inference-Header-Content-Length header." in str(problem(body))


def test_binary_size_must_match_the_shape() -> None:
    header = body_of(
        {
            "inputs": [
                {
                    "name": "f",
                    "shape": [2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    )
    error = problem(header + b"\x00" * 4, header_length=len(header))
    assert str(error) == ("Input 'f': shape [2] of FP32 takes 8 bytes, but binary_data_size is 4.")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x01\x00\x00\x00a\x01\x00", "holds 1 elements, but shape [2] holds 2"),
        (b"\x01\x00\x00\x00a\x05\x00\x00\x00bc", "element 1 says it has 5 bytes, but only 2"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00bz", "ends at byte 10, but binary_data_size is 11"),
    ],
)
def test_binary_bytes_elements_must_fit(payload: bytes, expected: str) -> None:
    header = body_of(
        {
            "inputs": [
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
    )
    assert expected in str(problem(header + payload, header_length=len(header)))


def test_binary_bool_bytes_are_0_or_1() -> None:
    body, length = binary_request([3], b"\x01\x00\x02", datatype="BOOL")
    assert "byte 2 is 2" in str(problem(body, header_length=length))


def test_binary_and_json_data_are_not_both_sent() -> None:
    error = problem(one_input(parameters={"binary_data_size": 8}))
    assert "has both 'data' and parameters.binary_data_size" in str(error)
    negative = body_of(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": -4},
                }
            ]
        }
    )
    error = problem(negative, header_length=len(negative))
    assert "binary_data_size must be a byte count" in str(error)


def test_a_missing_input_names_those_sent() -> None:
    request = parse_infer_request(one_input())
    with pytest.raises(ProtocolError, match=r"no input 'y'; it has 'x'\.") as info:
        request.input("y")
    assert info.value.status == 400


# -- requested outputs and responses ------------------------------------------------------


def request_with_outputs(outputs: Any, **parameters: Any) -> InferRequest:
    document: dict[str, Any] = {"id": "q", "inputs": [], "outputs": outputs}
    if parameters:
        document["parameters"] = parameters
    return parse_infer_request(body_of(document))


SCORE = Tensor.from_numpy("score", np.array([0.25, 0.75]))
LABEL = Tensor.from_numpy("label", np.array([b"on time", b"late"], dtype=object))


def test_requested_outputs_choose_which_and_how() -> None:
    request = request_with_outputs(
        [{"name": "label", "parameters": {"binary_data": True}}, {"name": "score"}]
    )
    assert [(o.name, o.binary) for o in request.outputs] == [("label", True), ("score", False)]
    body, headers = encode_infer_response(
        model_name="m", model_version="3", outputs=[SCORE, LABEL], request=request
    )
    length = int(headers[HEADER_LENGTH])
    document = orjson.loads(body[:length])
    assert [o["name"] for o in document["outputs"]] == ["label", "score"]
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 19}
    assert document["outputs"][1]["data"] == [0.25, 0.75]
    assert body[length:] == b"\x07\x00\x00\x00on time\x04\x00\x00\x00late"
    result = client_result(body, headers)
    assert result.as_numpy("label").tolist() == [b"on time", b"late"]
    assert result.as_numpy("score").tolist() == [0.25, 0.75]


def test_binary_data_output_is_the_default_each_output_can_override() -> None:
    request = request_with_outputs(
        [{"name": "score"}, {"name": "label", "parameters": {"binary_data": False}}],
        binary_data_output=True,
    )
    assert [(o.name, o.binary) for o in request.outputs] == [("score", True), ("label", False)]


def test_an_unknown_requested_output_lists_the_models_outputs() -> None:
    request = request_with_outputs([{"name": "proba"}])
    with pytest.raises(ProtocolError) as info:
        encode_infer_response(
            model_name="m", model_version=None, outputs=[SCORE, LABEL], request=request
        )
    assert info.value.status == 400
    assert str(info.value) == (
        "Output 'proba' is requested, but model 'm' has outputs 'score', 'label'. Ask for "
        "one of those, or leave 'outputs' out to get them all."
    )


def test_non_utf8_bytes_cannot_go_in_json() -> None:
    raw = Tensor.from_numpy("blob", np.array([b"\xff\xfe"], dtype=object))
    with pytest.raises(ProtocolError) as info:
        encode_infer_response(model_name="m", model_version=None, outputs=[raw])
    assert info.value.status == 400
    assert "not UTF-8" in str(info.value)
    assert '"binary_data": true' in str(info.value)
    request = request_with_outputs([{"name": "blob", "parameters": {"binary_data": True}}])
    body, headers = encode_infer_response(
        model_name="m", model_version=None, outputs=[raw], request=request
    )
    assert client_result(body, headers).as_numpy("blob").tolist() == [b"\xff\xfe"]


def test_response_fields() -> None:
    body, headers = encode_infer_response(
        model_name="m", model_version=None, outputs=[SCORE], parameters={"latency_us": 12}
    )
    assert headers == {"content-type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "m",
        "parameters": {"latency_us": 12},
        "outputs": [{"name": "score", "datatype": "FP64", "shape": [2], "data": [0.25, 0.75]}],
    }
    request = parse_infer_request(b'{"id": "abc", "inputs": []}')
    echoed, _ = encode_infer_response(
        model_name="m", model_version="1", outputs=[], request=request
    )
    assert orjson.loads(echoed)["id"] == "abc"
    chosen, _ = encode_infer_response(
        model_name="m", model_version="1", outputs=[], request=request, id="mine"
    )
    assert orjson.loads(chosen)["id"] == "mine"


def test_output_parameters_are_kept_beside_binary_data_size() -> None:
    tagged = Tensor.from_numpy("t", np.array([1], dtype=np.int8), parameters={"unit": "s"})
    request = request_with_outputs([], binary_data_output=True)
    body, headers = encode_infer_response(
        model_name="m", model_version=None, outputs=[tagged], request=request
    )
    document = orjson.loads(body[: int(headers[HEADER_LENGTH])])
    assert document["outputs"][0]["parameters"] == {"unit": "s", "binary_data_size": 1}


def test_nan_goes_as_null_in_json_and_exactly_in_binary() -> None:
    values = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    body, headers = encode_infer_response(
        model_name="m", model_version=None, outputs=[Tensor.from_numpy("v", values)]
    )
    assert orjson.loads(body)["outputs"][0]["data"] == [1.0, None, None]
    request = request_with_outputs([], binary_data_output=True)
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        outputs=[Tensor.from_numpy("v", values)],
        request=request,
    )
    np.testing.assert_array_equal(client_result(body, headers).as_numpy("v"), values)


def test_outputs_are_cast_to_their_declared_datatype() -> None:
    declared = Tensor("p", "FP32", (2,), np.array([0.5, 1.5]))
    body, _ = encode_infer_response(model_name="m", model_version=None, outputs=[declared])
    assert orjson.loads(body)["outputs"][0] == {
        "name": "p",
        "datatype": "FP32",
        "shape": [2],
        "data": [0.5, 1.5],
    }
    strings = Tensor.from_numpy("s", np.array(["a", "b\u00e9"]))
    body, _ = encode_infer_response(model_name="m", model_version=None, outputs=[strings])
    assert orjson.loads(body)["outputs"][0]["data"] == ["a", "b\u00e9"]


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (Tensor("p", "FP32", (3,), np.zeros(2)), "shape [3] holds 3 elements but its data has 2"),
        (Tensor("p", "FP8", (1,), np.zeros(1)), "datatype 'FP8'"),
        (Tensor("p", "FP32", (1,), np.array(["x"])), "declared FP32 but holds <U1"),
        (Tensor("p", "BYTES", (1,), np.array([3], dtype=object)), "holds a int"),
    ],
)
def test_outputs_that_cannot_be_written_are_server_errors(tensor: Tensor, expected: str) -> None:
    for binary in (False, True):
        request = request_with_outputs([], binary_data_output=binary)
        with pytest.raises(ProtocolError, match=re.escape(expected)) as info:
            encode_infer_response(
                model_name="m", model_version=None, outputs=[tensor], request=request
            )
        assert info.value.status == 500


def test_datatype_of() -> None:
    for datatype, array in EXAMPLES.items():
        assert datatype_of(array) == datatype
    assert datatype_of(np.array(["a"])) == "BYTES"
    assert datatype_of(np.array([b"a"])) == "BYTES"
    assert datatype_of(np.zeros(1, dtype=">i4")) == "INT32"
    for unsupported in (np.complex128, "datetime64[s]", np.longdouble):
        if np.dtype(unsupported).itemsize == 8 and np.dtype(unsupported).kind == "f":
            continue  # long double is float64 on some platforms
        with pytest.raises(ProtocolError, match="no Open Inference Protocol datatype") as info:
            datatype_of(np.zeros(1, dtype=unsupported))
        assert info.value.status == 500


def test_error_body() -> None:
    assert orjson.loads(error_body('bad "x"')) == {"error": 'bad "x"'}


def test_metadata() -> None:
    assert metadata_server(version="9") == {
        "name": "loopline",
        "version": "9",
        "extensions": ["binary_tensor_data"],
    }
    assert isinstance(metadata_server()["version"], str)
    assert metadata_model(
        "m",
        platform="lightgbm",
        inputs=[TensorSpec("a", "FP64", (None,)), TensorSpec("b", "BYTES", (-1, 2))],
        outputs=[TensorSpec("y", "FP32", (-1,))],
    ) == {
        "name": "m",
        "platform": "lightgbm",
        "inputs": [
            {"name": "a", "datatype": "FP64", "shape": [-1]},
            {"name": "b", "datatype": "BYTES", "shape": [-1, 2]},
        ],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    }
    with pytest.raises(ProtocolError, match="datatype 'float'"):
        TensorSpec("a", "float", (1,))
    with pytest.raises(ProtocolError, match=r"shape \[-2\]"):
        TensorSpec("a", "FP32", (-2,))


def test_protocol_error_is_a_serving_error_with_a_status() -> None:
    error = ProtocolError("bad", input="x")
    assert isinstance(error, ServingError)
    assert isinstance(error, LooplineError)
    assert isinstance(error, ValueError)
    assert error.status == 400
    again = pickle.loads(pickle.dumps(ProtocolError("worse", status=500, output="y")))
    assert (again.status, again.output, str(again)) == (500, "y", "worse")  # type: ignore[attr-defined]


# -- properties ---------------------------------------------------------------------------

NUMERIC = [name for name, dtype in DATATYPES.items() if dtype is not None]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, *, json: bool) -> tuple[str, np.ndarray[Any, Any]]:
    """A datatype and an array of it; for JSON, values JSON can carry (finite, text)."""
    datatype = draw(st.sampled_from(list(DATATYPES)))
    shape = draw(SHAPES)
    if datatype == "BYTES":
        elements = st.text(max_size=8).map(str.encode) if json else st.binary(max_size=8)
        return datatype, draw(hnp.arrays(object, shape, elements=elements))
    dtype = DATATYPES[datatype]
    assert dtype is not None
    elements = None
    if dtype.kind == "f":
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=not json, allow_infinity=not json)
    return datatype, draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=150, deadline=None)
@given(st.lists(tensors(json=True), min_size=1, max_size=4), st.booleans())
def test_property_client_requests_parse_to_equal_arrays(
    drawn: list[tuple[str, np.ndarray[Any, Any]]], binary: bool
) -> None:
    arrays = {f"in{i}": array for i, (_, array) in enumerate(drawn)}
    body, json_size = client_request(arrays, binary=binary)
    request = parse_infer_request(body, header_length=json_size)
    assert [t.name for t in request.inputs] == list(arrays)
    for (datatype, array), tensor in zip(drawn, request.inputs, strict=True):
        assert tensor.datatype == datatype
        assert tensor.shape == array.shape
        assert_same(tensor.data, array, datatype)


@settings(max_examples=100, deadline=None)
@given(tensors(json=False))
def test_property_binary_requests_keep_nan_and_infinity(
    drawn: tuple[str, np.ndarray[Any, Any]],
) -> None:
    datatype, array = drawn
    body, json_size = client_request({"t": array}, binary=True)
    tensor = parse_infer_request(body, header_length=json_size).input("t")
    if datatype == "BYTES":
        assert_same(tensor.data, array, datatype)
    else:
        assert tensor.data.dtype == DATATYPES[datatype]
        np.testing.assert_array_equal(tensor.data, array)  # NaN equals NaN here


@settings(max_examples=150, deadline=None)
@given(st.lists(tensors(json=True), min_size=1, max_size=4), st.booleans())
def test_property_responses_decode_to_equal_arrays(
    drawn: list[tuple[str, np.ndarray[Any, Any]]], binary: bool
) -> None:
    outputs = [Tensor.from_numpy(f"out{i}", array) for i, (_, array) in enumerate(drawn)]
    request = request_with_outputs([], binary_data_output=binary)
    body, headers = encode_infer_response(
        model_name="m", model_version="1", outputs=outputs, request=request
    )
    result = client_result(body, headers)
    for (datatype, array), output in zip(drawn, outputs, strict=True):
        got = result.as_numpy(output.name)
        if datatype == "BYTES" and not binary:  # the client reads JSON text back as str
            assert got.shape == array.shape
            assert got.ravel().tolist() == [b.decode() for b in array.ravel()]
        else:
            assert_same(got, array, datatype)
