"""Reference safetensors files for tests/format_safetensors.rs.

    python safetensors_reference.py write OUT_DIR
        Writes, with the reference writer (the `safetensors` package):
          dtypes.safetensors   every numpy dtype, shapes from scalars and empty
                               tensors to 4-D (safetensors.numpy.save_file)
          raw.safetensors      BF16, F8_*, F4 from raw bytes (safetensors.serialize_file)
          sharded/             three shards + model.safetensors.index.json, in
                               the Hugging Face layout, one block split across
                               two shards
        then describes each model (see `describe`).

    python safetensors_reference.py describe MODEL OUT_DIR
        Describes one existing safetensors file (read with safe_open).

A description is OUT_DIR/NAME.manifest.json, a list of
{"name", "dtype", "shape", "at", "len"}, where `at`/`len` locate the tensor's
bytes, as Python reads them, in OUT_DIR/NAME.blob.
"""

import json
import os
import sys

import numpy as np
from safetensors import TensorSpec, deserialize, safe_open, serialize_file
from safetensors.numpy import save_file

NUMPY_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
    "U64": np.uint64,
    "BOOL": np.bool_,
    "C64": np.complex64,
}
SHAPES = [(), (0,), (3, 0), (1,), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)]


def values(rng, dtype, shape):
    """Random values covering the dtype's whole bit patterns."""
    n = int(np.prod(shape, dtype=np.int64))
    if dtype is np.bool_:
        return rng.integers(0, 2, size=n).astype(np.bool_).reshape(shape)
    raw = rng.integers(0, 256, size=n * np.dtype(dtype).itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


class Manifest:
    def __init__(self, out_dir, name):
        self.out_dir, self.name = out_dir, name
        self.entries, self.blob = [], bytearray()

    def add(self, name, dtype, shape, data):
        self.entries.append(
            {"name": name, "dtype": dtype, "shape": list(shape), "at": len(self.blob), "len": len(data)}
        )
        self.blob += data

    def add_file(self, path):
        """Every tensor of `path`, as the reference reader returns it."""
        with open(path, "rb") as f:
            tensors = deserialize(f.read())
        with safe_open(path, framework="numpy") as f:
            keys = set(f.keys())
            assert keys == {name for name, _ in tensors}
            for name, t in tensors:
                if t["dtype"] in NUMPY_DTYPES:
                    # Two ways of reading agree.
                    assert f.get_tensor(name).tobytes() == bytes(t["data"]), name
                self.add(name, t["dtype"], t["shape"], bytes(t["data"]))

    def write(self):
        base = os.path.join(self.out_dir, self.name)
        with open(base + ".blob", "wb") as f:
            f.write(self.blob)
        with open(base + ".manifest.json", "w") as f:
            json.dump(self.entries, f)


def write_dtypes(out_dir, rng):
    tensors = {}
    for i, (code, dtype) in enumerate(NUMPY_DTYPES.items()):
        for j, shape in enumerate(SHAPES):
            # Block names, so that layers hold many dtypes and shapes.
            tensors[f"model.layers.{j}.{code.lower()}_{i}"] = values(rng, dtype, shape)
    tensors["lm_head.weight"] = values(rng, np.float32, (16, 8))
    tensors["model.embed_tokens.weight"] = values(rng, np.float16, (32, 8))
    path = os.path.join(out_dir, "dtypes.safetensors")
    save_file(tensors, path, metadata={"format": "np", "note": "hyperion test"})
    m = Manifest(out_dir, "dtypes")
    m.add_file(path)
    m.write()


def write_raw(out_dir, rng):
    specs, keep = {}, []
    # (safetensors dtype, serializer name, bytes per element, shape)
    cases = [
        ("BF16", "bfloat16", 2, (4, 6)),
        ("BF16", "bfloat16", 2, ()),
        ("F8_E4M3", "float8_e4m3fn", 1, (5, 3)),
        ("F8_E5M2", "float8_e5m2", 1, (9,)),
        ("F8_E8M0", "float8_e8m0fnu", 1, (2, 2)),
        ("F8_E4M3FNUZ", "float8_e4m3fnuz", 1, (3,)),
        ("F8_E5M2FNUZ", "float8_e5m2fnuz", 1, (1, 1, 3)),
        ("C64", "complex64", 8, (2,)),
    ]
    for i, (code, name, size, shape) in enumerate(cases):
        n = int(np.prod(shape, dtype=np.int64))
        data = rng.integers(0, 256, size=n * size, dtype=np.uint8)
        keep.append(data)
        specs[f"decoder.layers.{i % 3}.{code.lower()}_{i}"] = TensorSpec(
            dtype=name, shape=list(shape), data_ptr=data.ctypes.data, data_len=data.nbytes
        )
    # F4: the serializer takes the storage shape (bytes) and doubles the last dimension.
    data = rng.integers(0, 256, size=6, dtype=np.uint8)
    keep.append(data)
    specs["transformer.layers.0.f4"] = TensorSpec(
        dtype="float4_e2m1fn_x2", shape=[2, 3], data_ptr=data.ctypes.data, data_len=data.nbytes
    )
    path = os.path.join(out_dir, "raw.safetensors")
    serialize_file(specs, path)
    m = Manifest(out_dir, "raw")
    m.add_file(path)
    m.write()


def write_sharded(out_dir, rng):
    shard_dir = os.path.join(out_dir, "sharded")
    os.makedirs(shard_dir, exist_ok=True)
    names = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
             "model-00003-of-00003.safetensors"]
    shards = [{}, {}, {}]
    shards[0]["model.embed_tokens.weight"] = values(rng, np.float16, (64, 16))
    for layer in range(4):
        for part, shape in [("self_attn.q_proj.weight", (16, 16)), ("mlp.up_proj.weight", (32, 16)),
                            ("input_layernorm.weight", (16,))]:
            # Layer 1 straddles shards 1 and 2; layers 2-3 are in shard 2 or 3.
            shard = 0 if layer == 0 else 1 if layer == 2 else 2 if layer == 3 else (0 if part.startswith("self") else 1)
            shards[shard][f"model.layers.{layer}.{part}"] = values(rng, np.float32, shape)
    shards[2]["model.norm.weight"] = values(rng, np.float32, (16,))
    shards[2]["lm_head.weight"] = values(rng, np.float16, (64, 16))
    weight_map, total = {}, 0
    m = Manifest(out_dir, "sharded")
    for name, tensors in zip(names, shards):
        path = os.path.join(shard_dir, name)
        save_file(tensors, path, metadata={"format": "pt"})
        for t in tensors:
            weight_map[t] = name
            total += tensors[t].nbytes
        m.add_file(path)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    m.write()


def describe(model, out_dir):
    m = Manifest(out_dir, os.path.basename(model).split(".")[0])
    with safe_open(model, framework="numpy") as f:
        for name in f.keys():
            s = f.get_slice(name)
            array = f.get_tensor(name)
            assert list(array.shape) == list(s.get_shape())
            m.add(name, s.get_dtype(), s.get_shape(), np.ascontiguousarray(array).tobytes())
    m.write()


def main():
    if sys.argv[1] == "write":
        out_dir = sys.argv[2]
        rng = np.random.default_rng(20240607)
        write_dtypes(out_dir, rng)
        write_raw(out_dir, rng)
        write_sharded(out_dir, rng)
    elif sys.argv[1] == "describe":
        describe(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
