"""Open Inference Protocol tensors on the wire (REST): JSON tensors and the **binary tensor data
extension** of KServe and Triton, decoded from an untrusted body and encoded for an answer.

A request body is one JSON object, optionally followed by binary tensor data. Then the HTTP
header ``Inference-Header-Content-Length`` gives the JSON's length in bytes, and each input
whose ``parameters.binary_data_size`` is set takes that many of the bytes that follow, in input
order: little-endian, row-major, no padding; a BYTES element is a 4-byte little-endian length
and then its bytes. An answer is built the same way for the outputs asked as binary (the
output's ``parameters.binary_data``, else the request's ``parameters.binary_data_output``).

Nothing is allocated from a size the request only declares: the body was read under a byte
limit (:func:`.inputs.read_body`), and every declared size, shape and length is checked
against the bytes actually received before a tensor is made, so a body that lies about its
sizes is a 400, never a large allocation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import prod

import numpy as np

from .inputs import HTTPFail

HEADER = "Inference-Header-Content-Length"
NUMERIC = {"FP32": np.dtype("<f4")}
"""Numeric datatypes this server reads and writes, with their wire layout."""
BYTES = "BYTES"
MAX_DIMS = 8
MAX_TENSORS = 256
"""Inputs or outputs of one request (a fan-out's outputs are tasks: as many as /v1 allows)."""


@dataclass(frozen=True)
class InputTensor:
    """One decoded input: an array for a numeric datatype, one ``bytes`` per element for BYTES
    (a JSON BYTES element arrives as text and is given here UTF-8 encoded; ``binary`` says which
    form it came in)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]
    binary: bool


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[OutputRequest] | None
    """The outputs asked for, or ``None``: every output of the model."""
    binary_output: bool
    """``parameters.binary_data_output``: the default form of outputs not listed."""


@dataclass(frozen=True)
class OutputTensor:
    name: str
    data: np.ndarray
    binary: bool


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request's JSON head and its inputs, every size checked against ``body``."""
    head, rest = _split(body, header_length)
    doc = _json(head)
    params = _params(doc, "the request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise HTTPFail(400, "'id' must be a string")
    inputs, used = [], 0
    for spec in _items(doc, "inputs", required=True):
        tensor, used = _input(spec, rest, used)
        inputs.append(tensor)
    if used != len(rest):
        raise HTTPFail(400, f"the inputs' binary_data_size add up to {used} bytes, but "
                            f"{len(rest)} bytes follow the JSON header")
    if len({t.name for t in inputs}) != len(inputs):
        raise HTTPFail(400, "an input is named twice")
    outputs = None
    if "outputs" in doc:
        outputs = [_output(spec, _flag(params, "binary_data_output"))
                   for spec in _items(doc, "outputs", required=False)]
    return InferRequest(request_id, inputs, outputs, _flag(params, "binary_data_output"))


def encode_response(head: dict, outputs: list[OutputTensor]) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers: JSON alone, or JSON then the binary outputs in order."""
    entries, chunks = [], []
    for out in outputs:
        datatype = next(k for k, v in NUMERIC.items() if v == out.data.dtype.newbyteorder("<"))
        entry = {"name": out.name, "datatype": datatype, "shape": list(out.data.shape)}
        if out.binary:
            raw = np.ascontiguousarray(out.data, dtype=NUMERIC[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = out.data.reshape(-1).tolist()
        entries.append(entry)
    text = json.dumps({**head, "outputs": entries}, separators=(",", ":")).encode()
    if not chunks:
        return text, {"content-type": "application/json"}
    return text + b"".join(chunks), {HEADER: str(len(text)),
                                     "content-type": "application/octet-stream"}


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isdigit() or not 0 < int(text) <= len(body):
        raise HTTPFail(400, f"{HEADER} must be the JSON header's length in bytes, 1.."
                            f"{len(body)} for this body; got '{header_length[:40]}'")
    n = int(text)
    return body[:n], memoryview(body)[n:]


def _json(head: bytes) -> dict:
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HTTPFail(400, "the inference request is not valid JSON") from None
    if not isinstance(doc, dict):
        raise HTTPFail(400, "the inference request must be a JSON object")
    return doc


def _params(spec: dict, what: str) -> dict:
    params = spec.get("parameters", {})
    if not isinstance(params, dict):
        raise HTTPFail(400, f"'parameters' of {what} must be an object")
    return params


def _flag(params: dict, key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise HTTPFail(400, f"parameter '{key}' must be true or false")
    return value


def _items(doc: dict, key: str, required: bool) -> list[dict]:
    items = doc.get(key)
    if items is None and not required:
        return []
    if (not isinstance(items, list) or not (1 if required else 0) <= len(items) <= MAX_TENSORS
            or not all(isinstance(i, dict) for i in items)):
        raise HTTPFail(400, f"'{key}' must be a list of 1..{MAX_TENSORS} tensor objects")
    return items


def _name(spec: dict, what: str) -> str:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise HTTPFail(400, f"every {what} needs a 'name'")
    return name


def _shape(spec: dict, name: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise HTTPFail(400, f"input '{name}': 'shape' must be a list of at most {MAX_DIMS} "
                            "non-negative integers")
    return tuple(shape)


def _input(spec: dict, rest: memoryview, used: int) -> tuple[InputTensor, int]:
    """One input, and where the next input's binary data starts."""
    name = _name(spec, "input")
    datatype, shape = spec.get("datatype"), _shape(spec, name)
    if datatype not in NUMERIC and datatype != BYTES:
        raise HTTPFail(400, f"input '{name}': datatype {datatype!r} is not one this server "
                            f"takes ({', '.join([*NUMERIC, BYTES])})")
    size = _params(spec, f"input '{name}'").get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise HTTPFail(400, f"input '{name}' has neither 'data' nor binary_data_size")
        return InputTensor(name, datatype, shape, _json_data(spec["data"], datatype, shape,
                                                             name), False), used
    if type(size) is not int or size < 0 or used + size > len(rest):
        raise HTTPFail(400, f"input '{name}': binary_data_size {size!r} is more than the "
                            f"{len(rest) - used} bytes left in the body")
    chunk = rest[used:used + size]
    data = _bytes_elements(chunk, shape, name) if datatype == BYTES else \
        _numeric(chunk, NUMERIC[datatype], shape, name)
    return InputTensor(name, datatype, shape, data, True), used + size


def _numeric(chunk: memoryview, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    if prod(shape) * dtype.itemsize != len(chunk):
        raise HTTPFail(400, f"input '{name}': shape {list(shape)} needs {prod(shape)} elements "
                            f"of {dtype.itemsize} bytes, but binary_data_size is {len(chunk)}")
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _bytes_elements(chunk: memoryview, shape: tuple[int, ...], name: str) -> list[bytes]:
    """BYTES elements: 4-byte little-endian length, then the bytes; exactly ``prod(shape)``."""
    count = prod(shape)
    if count > len(chunk) // 4:  # every element takes 4 bytes at least: bounds the loop
        raise HTTPFail(400, f"input '{name}': shape {list(shape)} needs {count} BYTES elements, "
                            f"more than {len(chunk)} bytes can hold")
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(chunk):
            raise HTTPFail(400, f"input '{name}': BYTES data ends inside an element's length")
        n = int.from_bytes(chunk[pos:pos + 4], "little")
        if pos + 4 + n > len(chunk):
            raise HTTPFail(400, f"input '{name}': a BYTES element of {n} bytes runs past "
                                "binary_data_size")
        out.append(bytes(chunk[pos + 4:pos + 4 + n]))
        pos += 4 + n
    if pos != len(chunk):
        raise HTTPFail(400, f"input '{name}': {len(chunk) - pos} bytes are left after its "
                            f"{count} BYTES elements")
    return out


def _json_data(data: object, datatype: str, shape: tuple[int, ...], name: str
               ) -> np.ndarray | list[bytes]:
    """JSON tensor data, flat or nested row-major, with exactly ``prod(shape)`` elements."""
    flat = _flatten(data, name)
    if len(flat) != prod(shape):
        raise HTTPFail(400, f"input '{name}': shape {list(shape)} has {prod(shape)} elements, "
                            f"'data' holds {len(flat)}")
    if datatype == BYTES:
        if not all(isinstance(v, str) for v in flat):
            raise HTTPFail(400, f"input '{name}': BYTES elements in JSON are strings")
        return [v.encode() for v in flat]
    if not all(type(v) in (int, float) for v in flat):
        raise HTTPFail(400, f"input '{name}': {datatype} elements must be numbers")
    return np.asarray(flat, dtype=NUMERIC[datatype]).reshape(shape)


def _flatten(data: object, name: str) -> list:
    """Row-major elements of nested lists, walked with a stack of (list, next index): linear
    in the elements, whatever the nesting (a list of a million empty lists included)."""
    if not isinstance(data, list):
        raise HTTPFail(400, f"input '{name}': 'data' must be a list")
    flat, stack = [], [(data, 0)]
    while stack:
        items, pos = stack.pop()
        while pos < len(items):
            v, pos = items[pos], pos + 1
            if isinstance(v, list):
                if len(stack) + 1 >= MAX_DIMS:
                    raise HTTPFail(400, f"input '{name}': 'data' is nested deeper than "
                                        f"{MAX_DIMS}")
                stack += [(items, pos), (v, 0)]
                break
            flat.append(v)
    return flat


def _output(spec: dict, default_binary: bool) -> OutputRequest:
    name = _name(spec, "output")
    params = _params(spec, f"output '{name}'")
    return OutputRequest(name, _flag(params, "binary_data") if "binary_data" in params
                         else default_binary)
