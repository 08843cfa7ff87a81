"""Reference GGUF files for tests/format_gguf.rs, written and read back by gguf-py.

    python gguf_reference.py OUT_DIR

writes OUT_DIR/*.gguf with gguf-py's GGUFWriter, reads each back with
GGUFReader, and writes OUT_DIR/manifest.json:

    {
      "quant_sizes": {NAME: [id, block_size, type_size]},   # gguf-py's table
      "files": {FILE: {
        "keys": [KEY],                                      # GGUFReader's order
        "alignment", "data_offset",                         # GGUFReader's
        "written": {KEY: VALUE},                            # what the writer was given
        "fields": {KEY: {"types": [ids], "leaves": [...]}}, # GGUFReader's fields
        "tensors": [{"name", "type", "dims", "n_bytes", "data_offset", "hex"}]
      }}
    }

A VALUE is {"type": NAME, "value": V}; an array's V is {"elem": NAME,
"items": [...]} whose items are bare values, or such objects for nested
arrays. Strings are hex of their bytes (they need not be UTF-8). "dims" is
GGUFReader's `shape`, which is GGUF's ne order (innermost first). "leaves"
is every leaf value of the field in order, from GGUFReader's parts (strings as
hex), so nested arrays come out flattened, as GGUFReader sees them.
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as Q, GGUFValueType as V

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)


def f32(x):
    """x rounded to the nearest float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def bare(value, vtype):
    if vtype == V.STRING:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return raw.hex()
    if vtype == V.ARRAY:
        return array(value, None)
    if vtype == V.FLOAT32:
        return f32(value)
    if vtype == V.BOOL:
        return bool(value)
    return value


def array(items, sub_type):
    # The element type, as GGUFWriter._pack_val picks it.
    elem = sub_type if sub_type is not None else V.get_type(items[0])
    return {"elem": elem.name, "items": [bare(i, elem) for i in items]}


def canonical(value, vtype, sub_type=None):
    if vtype == V.ARRAY:
        return {"type": "ARRAY", "value": array(value, sub_type)}
    return {"type": vtype.name, "value": bare(value, vtype)}


# Every value type, scalars and arrays, nested arrays included.
METADATA = [
    ("test.u8", 200, V.UINT8, None),
    ("test.i8", -100, V.INT8, None),
    ("test.u16", 60000, V.UINT16, None),
    ("test.i16", -30000, V.INT16, None),
    ("test.u32", 4_000_000_000, V.UINT32, None),
    ("test.i32", -2_000_000_000, V.INT32, None),
    ("test.f32", 1.5, V.FLOAT32, None),
    ("test.bool", True, V.BOOL, None),
    ("test.bool_false", False, V.BOOL, None),
    ("test.string", "héllo wörld ✓", V.STRING, None),
    ("test.u64", 2**63 + 5, V.UINT64, None),
    ("test.i64", -(2**62) - 7, V.INT64, None),
    ("test.f64", 3.141592653589793, V.FLOAT64, None),
    ("test.array.u8", [0, 1, 255], V.ARRAY, V.UINT8),
    ("test.array.i8", [-128, 0, 127], V.ARRAY, V.INT8),
    ("test.array.u16", [0, 65535], V.ARRAY, V.UINT16),
    ("test.array.i16", [-32768, 32767], V.ARRAY, V.INT16),
    ("test.array.u32", [1, 4294967295], V.ARRAY, V.UINT32),
    ("test.array.i32", [-5, 6, -2147483648], V.ARRAY, V.INT32),
    ("test.array.f32", [0.1, -2.5, 1e30], V.ARRAY, V.FLOAT32),
    ("test.array.bool", [True, False, True], V.ARRAY, V.BOOL),
    ("test.array.string", ["a", "", "ünïcode"], V.ARRAY, V.STRING),
    ("test.array.raw_bytes", [b"\xff\xfe", b"ok"], V.ARRAY, V.STRING),
    ("test.array.u64", [0, 2**64 - 1], V.ARRAY, V.UINT64),
    ("test.array.i64", [-(2**63), 2**63 - 1], V.ARRAY, V.INT64),
    ("test.array.f64", [1e-300, -0.0, 2.5], V.ARRAY, V.FLOAT64),
    ("test.array.nested", [[1, 2], [3]], V.ARRAY, V.ARRAY),
    ("test.array.nested3", [[["a"]], [["b", "c"], ["d"]]], V.ARRAY, V.ARRAY),
    ("test.array.nested_floats", [[0.5], [1.25, 2.0]], V.ARRAY, V.ARRAY),
]

rng = np.random.default_rng(7)


def raw(qtype, rows, blocks):
    """Random raw blocks of a quantized type: rows × blocks blocks."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return rng.integers(0, 256, size=(rows, blocks * type_size), dtype=np.uint8)


def tensors(big):
    t = []
    t.append(("token_embd.weight", rng.standard_normal((8, 64)).astype(np.float16), None))
    t.append(("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32), None))
    t.append(("blk.0.attn_q.weight", raw(Q.Q4_0, 4, 2), Q.Q4_0))
    t.append(("blk.0.attn_k.weight", raw(Q.Q8_0, 4, 2), Q.Q8_0))
    t.append(("blk.0.ffn_up.weight", raw(Q.Q4_K, 2, 1), Q.Q4_K))
    t.append(("blk.0.ffn_down.weight", raw(Q.Q6_K, 2, 1), Q.Q6_K))
    # BF16 has no numpy dtype: raw bytes, two per element.
    t.append(("blk.1.attn_q.weight", raw(Q.BF16, 4, 64), Q.BF16))
    t.append(("blk.1.ints.i8", rng.integers(-128, 128, (3, 5), dtype=np.int8), None))
    t.append(("blk.1.ints.i16", rng.integers(-30000, 30000, (5,), dtype=np.int16), None))
    t.append(("blk.1.ints.i32", rng.integers(-(2**31), 2**31, (2, 3), dtype=np.int32), None))
    t.append(("blk.1.ints.i64", rng.integers(-(2**62), 2**62, (7,), dtype=np.int64), None))
    t.append(("blk.1.ffn_norm.weight", rng.standard_normal((3, 3)).astype(np.float64), None))
    # Every block-quantized type gguf-py knows, one or two blocks each; but not
    # Q8_1 while gguf-py gives it 40-byte blocks: ggml's block_q8_1 is 36
    # bytes (two halves and 32 quants), which gguf-py only fixed in
    # ggml-org/llama.cpp#29036.
    for q in Q:
        block, size = gguf.GGML_QUANT_SIZES[q]
        if q == Q.Q8_1 and size == 40:
            continue
        if block > 1:
            t.append((f"blk.2.quant.{q.name.lower()}", raw(q, 2, 1 + (q.value % 2)), q))
    t.append(("blk.3.conv.weight", rng.standard_normal((2, 3, 4, 5)).astype(np.float32), None))
    t.append(("blk.3.empty", np.zeros((0, 4), dtype=np.float32), None))
    if big:
        t.append(("blk.4.big.weight", rng.standard_normal((300, 256)).astype(np.float32), None))
    t.append(("output_norm.weight", rng.standard_normal(64).astype(np.float32), None))
    t.append(("output.weight", raw(Q.Q5_K, 8, 1), Q.Q5_K))
    return t


def write(name, alignment, big):
    path = OUT / name
    w = GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    written = {"general.architecture": canonical("llama", V.STRING)}
    if alignment is not None:
        written["general.alignment"] = canonical(alignment, V.UINT32)
    for key, value, vtype, sub in METADATA:
        w.add_key_value(key, value, vtype, sub_type=sub)
        written[key] = canonical(value, vtype, sub)
    if big:
        # A vocabulary large enough that the metadata outgrows a first 64 KiB read.
        tokens = [f"token-{i:06d}-{'x' * (i % 17)}" for i in range(20000)]
        w.add_key_value("tokenizer.ggml.tokens", tokens, V.ARRAY, sub_type=V.STRING)
        written["tokenizer.ggml.tokens"] = canonical(tokens, V.ARRAY, V.STRING)
    for tname, data, qtype in tensors(big):
        w.add_tensor(tname, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, written


def leaves(field):
    out = []
    leaf_type = V(field.types[-1])
    for idx in field.data:
        part = field.parts[idx]
        if leaf_type == V.STRING:
            out.append(part.tobytes().hex())
        else:
            out.extend(part.tolist())
    return out


def manifest(path, written):
    r = GGUFReader(str(path))
    fields = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        fields[key] = {"types": [int(t) for t in field.types], "leaves": leaves(field)}
    ts = []
    for t in r.tensors:
        data = t.data.tobytes()
        assert len(data) == t.n_bytes, t.name
        ts.append({
            "name": t.name,
            "type": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "n_bytes": int(t.n_bytes),
            "data_offset": int(t.data_offset),
            "hex": data.hex(),
            "sha256": hashlib.sha256(data).hexdigest(),
        })
    return {
        "keys": list(fields),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "written": written,
        "fields": fields,
        "tensors": ts,
    }


files = {}
for name, alignment, big in [
    ("v3-default-align.gguf", None, False),
    ("v3-align64.gguf", 64, False),
    ("v3-align4096.gguf", 4096, True),
]:
    path, written = write(name, alignment, big)
    files[name] = manifest(path, written)

quant_sizes = {
    q.name: [int(q.value), int(gguf.GGML_QUANT_SIZES[q][0]), int(gguf.GGML_QUANT_SIZES[q][1])]
    for q in Q
}
with open(OUT / "manifest.json", "w") as f:
    json.dump({"quant_sizes": quant_sizes, "files": files}, f)
