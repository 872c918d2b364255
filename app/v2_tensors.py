"""KServe V2 / Open Inference Protocol tensors: JSON ``data`` and the binary tensor extension.

Binary requests carry a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
little-endian bytes of every input whose ``parameters.binary_data_size`` is set, in input order.
Outputs go back as binary when the request asks (``parameters.binary_data`` on an output, or
``parameters.binary_data_output`` on the request), as JSON ``data`` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from app.core.repository_format import GraphSpec
from app.errors import BadRequest, InvalidInput, PayloadTooLarge

V2_DTYPES = {"float32": "FP32", "int64": "INT64", "bool": "BOOL"}
NUMPY_OF_V2 = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "BOOL": np.bool_,
}
# Safe casts a client may rely on (tritonclient users often send INT32 ids or FP64 arrays).
CASTS = {("INT32", "INT64"), ("FP64", "FP32")}
# Looked up by dtype object: str(dtype) runs Python code in numpy (~2 us, twice per output).
V2_OF_DTYPE = {np.dtype(name): v2 for name, v2 in V2_DTYPES.items()}
LITTLE_ENDIAN = {v2: np.dtype(t).newbyteorder("<") for v2, t in NUMPY_OF_V2.items()}


def parse_body(body: bytes, header_length: str | None, max_json_bytes: int) -> tuple[dict, bytes]:
    """Split a request into its JSON header and the binary tail."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(
                f"Inference-Header-Content-Length must be an integer; got {header_length!r}"
            ) from None
        if not 0 <= length <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {length} but the body has {len(body)} bytes"
            )
        json_part, binary = body[:length], body[length:]
    if len(json_part) > max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON part of the request is {len(json_part)} bytes; at most {max_json_bytes} "
            "(send large tensors with the binary tensor extension)"
        )
    try:
        header = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequest("request body must be a JSON object")
    return header, binary


@dataclass(frozen=True)
class TensorLimits:
    max_rows: int  # the batch axis
    max_elements: int  # per tensor


def _shape(value: Any, where: str, limits: TensorLimits) -> list[int]:
    """The tensor's shape, checked before anything of that size is built (Python ints: no overflow)."""
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInput(f"{where}.shape must be a list of integers")
    if any(d < 0 for d in value):
        raise InvalidInput(f"{where}.shape must not be negative")
    if value and value[0] > limits.max_rows:
        raise InvalidInput(f"{where}.shape: {value[0]} rows; at most {limits.max_rows} per request")
    if math.prod(value) > limits.max_elements:
        raise InvalidInput(
            f"{where}.shape {value} holds more than the {limits.max_elements} elements allowed per tensor"
        )
    return value


def decode_inputs(
    header: dict, binary: bytes, graph: GraphSpec, limits: TensorLimits
) -> dict[str, np.ndarray]:
    """The request's inputs as arrays of the graph's dtypes, checked against its specs."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    specs = {spec.name: spec for spec in graph.inputs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise InvalidInput(f"{where} must be an object")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"{where}.name must be a string")
        if name not in specs:
            raise InvalidInput(f"{where}: unknown input {name!r}; the model takes {sorted(specs)}")
        if name in feeds:
            raise InvalidInput(f"{where}: input {name!r} given twice")
        where = f"input {name!r}"
        spec = specs[name]
        shape = _shape(tensor.get("shape"), where, limits)
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"{where}.datatype must be a string such as FP32 or INT64")
        expected = V2_DTYPES[spec.dtype]
        if datatype != expected and (datatype, expected) not in CASTS:
            raise InvalidInput(f"{where}: datatype {datatype!r}; the model takes {expected}")
        dtype = LITTLE_ENDIAN[datatype]
        count = math.prod(shape)
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"{where}.parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"{where}: binary_data_size {size!r} runs past the end of the body")
            if size != count * dtype.itemsize:
                raise InvalidInput(f"{where}: {size} bytes do not hold shape {shape} of {datatype}")
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            if "data" not in tensor:
                raise InvalidInput(f"{where}: no data (and no binary_data_size)")
            data = tensor["data"]
            if not isinstance(data, list):
                raise InvalidInput(f"{where}: data must be a list of {datatype} values")
            # JSON numbers are doubles: read FP32 data as float64 first, so that a value beyond float32's
            # range is named as such instead of becoming an infinity in the cast.
            wide = np.float64 if dtype == np.float32 else dtype
            try:
                array = np.asarray(data, dtype=wide)
            except (ValueError, TypeError, OverflowError):
                raise InvalidInput(f"{where}: data is not a list of {datatype} values") from None
            if wide is np.float64 and dtype == np.float32 and array.size:
                if np.isfinite(array).all() and np.abs(array).max() > np.finfo(np.float32).max:
                    raise InvalidInput(f"{where}: a value overflows {datatype}")
                array = array.astype(np.float32)
            if array.size != count:
                raise InvalidInput(f"{where}: {array.size} values do not fill shape {shape}")
            array = array.reshape(shape)
        if len(shape) != len(spec.shape) or any(
            d >= 0 and s != d for s, d in zip(shape, spec.shape, strict=True)
        ):
            raise InvalidInput(f"{where}: shape {shape} does not match the model's {spec.shape} (-1 = any)")
        if shape[0] == 0:
            raise InvalidInput(f"{where}: batch size is 0")
        array = array.astype(NUMPY_OF_V2[expected], copy=False)
        if spec.dtype == "float32" and not np.isfinite(array).all():
            raise InvalidInput(f"{where}: contains NaN or infinity")
        feeds[name] = array
    missing = set(specs) - set(feeds)
    if missing:
        raise InvalidInput(f"missing inputs {sorted(missing)}")
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    batch = {a.shape[0] for a in feeds.values()}
    if len(batch) > 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(batch)}")
    return feeds


def check_token_inputs(feeds: dict[str, np.ndarray], vocab_size: int, max_length: int) -> None:
    """Text graphs index embedding tables: an id outside the vocabulary, a row longer than the model's
    positions, a length outside the row or a mask that is not 0/1 would fail inside onnxruntime (or
    worse, silently read the wrong row); a long row also costs memory quadratic in its length."""
    width = None
    for name, array in feeds.items():
        if array.dtype != np.int64 or array.ndim != 2:
            continue
        if array.shape[1] > max_length:
            raise InvalidInput(
                f"input {name!r}: {array.shape[1]} tokens per row; the model accepts at most {max_length}"
            )
        if name in ("attention_mask", "position_ids"):
            continue
        width = array.shape[1]
        if array.size and (array.min() < 0 or array.max() >= vocab_size):
            raise InvalidInput(
                f"input {name!r}: token ids must be in [0, {vocab_size}); got {array.min()}..{array.max()}"
            )
    mask = feeds.get("attention_mask")
    if mask is not None and not np.isin(mask, (0, 1)).all():
        raise InvalidInput("input 'attention_mask' must hold only 0 and 1")
    lengths = feeds.get("lengths")
    if lengths is not None and width is not None and (lengths.min() < 1 or lengths.max() > width):
        raise InvalidInput(f"input 'lengths' must be in [1, {width}] (the token rows' width)")


def requested_outputs(header: dict, graph: GraphSpec) -> list[tuple[str, bool]]:
    """(output name, as binary) in response order."""
    params = header.get("parameters") or {}
    all_binary = bool(isinstance(params, dict) and params.get("binary_data_output", False))
    outputs = header.get("outputs")
    names = [o.name for o in graph.outputs]
    if outputs is None:
        return [(name, all_binary) for name in names]
    if not isinstance(outputs, list):
        raise InvalidInput("outputs must be a list")
    chosen = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or out.get("name") not in names:
            raise InvalidInput(f"outputs[{i}]: unknown output; the model gives {names}")
        out_params = out.get("parameters") or {}
        binary = out_params.get("binary_data", all_binary) if isinstance(out_params, dict) else all_binary
        chosen.append((out["name"], bool(binary)))
    return chosen


def encode_response(
    model: str, version: int, request_id: Any, results: dict[str, np.ndarray], chosen: list[tuple[str, bool]]
) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header's length."""
    outputs, blobs = [], []
    for name, binary in chosen:
        array = results[name]
        datatype = V2_OF_DTYPE.get(array.dtype) or V2_DTYPES.get(array.dtype.name)  # any byte order
        if datatype is None:  # graphs here give float32/int64/bool; anything else as FP32
            array, datatype = array.astype(np.float32), "FP32"
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = array.astype(LITTLE_ENDIAN[datatype], copy=False).tobytes()  # C order, any strides
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.flatten().tolist()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": outputs}
    if request_id is not None:
        body["id"] = request_id
    head = orjson.dumps(body)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
