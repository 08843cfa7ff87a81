"""share_page_cache: arrays that are the page cache's own pages (a private
mapping of the file, under a read lease), for load_file (the default) and
open. What must hold: the bytes are the file's, warm and cold; writes stay
in the process; an array stays valid, with the same bytes, when another
process truncates the file under it (the truncation waits for the lease,
whose break copies the shared pages out first); and nothing crashes.
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.numpy
import safetensors.torch
import torch

import hyperion

from conftest import MIB, drop_cache, write_blocks


def file_mappings(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process's mappings of `path`."""
    target = str(path.resolve())
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == target:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                out.append((lo, hi))
    return out


def address(array) -> int:
    if isinstance(array, torch.Tensor):
        return array.data_ptr()
    return array.__array_interface__["data"][0]


def in_file_mapping(array, path: Path) -> bool:
    a = address(array)
    return any(lo <= a < hi for lo, hi in file_mappings(path))


def warm(path: Path) -> None:
    path.read_bytes()


def truncate_from_another_process(path: Path, size: int) -> None:
    """Truncates `path` in a child process: it waits for the read lease."""
    subprocess.run(
        [sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))", str(path), str(size)],
        check=True,
        timeout=60,
    )


@pytest.fixture
def own_model(tmp_path):
    """A model file of this test's own (it may be cut): 8 layers of 1 MiB."""
    path = tmp_path / "own.safetensors"
    return path, write_blocks(path, 8, MIB, seed=11)


def shared_or_skip(arrays, path: Path) -> None:
    """Skips when this machine granted no read lease on `path` (another
    user's file, a filesystem without leases): then nothing is shared and
    there is nothing to test."""
    if not any(in_file_mapping(a, path) for a in arrays):
        pytest.skip(f"no read lease on {path}: layers were copied, nothing shared")


@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_load_file_shares_the_page_cache_with_safetensors_bytes(minilm, cache):
    (warm if cache == "warm" else drop_cache)(minilm)
    np_got = hyperion.load_file(minilm)
    shared_or_skip(np_got.values(), minilm)
    assert all(in_file_mapping(a, minilm) for a in np_got.values())
    want = safetensors.numpy.load_file(minilm)
    assert np_got.keys() == want.keys()
    for name, w in want.items():
        assert (np_got[name].dtype, np_got[name].shape) == (w.dtype, w.shape), name
        assert np_got[name].tobytes() == w.tobytes(), name
    (warm if cache == "warm" else drop_cache)(minilm)
    pt_got = hyperion.load_file(minilm, framework="pt")
    assert all(in_file_mapping(t, minilm) for t in pt_got.values())
    for name, w in safetensors.torch.load_file(minilm).items():
        g = pt_got[name]
        assert (g.dtype, g.shape) == (w.dtype, w.shape), name
        assert torch.equal(g.view(torch.uint8) if g.dtype == torch.bool else g, w), name


def test_share_page_cache_false_reads_into_buffers(minilm):
    warm(minilm)
    got = hyperion.load_file(minilm, share_page_cache=False)
    assert not any(in_file_mapping(a, minilm) for a in got.values())


def test_open_warm_shares_layers_and_counts_them(own_model):
    path, tensors = own_model
    warm(path)
    with hyperion.open(path, budget=64 * MIB, share_page_cache=True) as model:
        layers = [model.layer(i) for i in range(model.layer_count)]
        shared = [layer for layer in layers if layer.mapped]
        if not shared:
            pytest.skip(f"no read lease on {path}")
        assert len(shared) == model.layer_count
        assert model.stats()["page_cache_shared_bytes"] == sum(layer.nbytes for layer in layers)
        for layer in layers:
            for name, array in layer.items():
                assert array.tobytes() == tensors[name].tobytes(), name
                assert not array.flags.writeable  # a model's layers are read-only
    with hyperion.open(path, budget=64 * MIB) as model:
        assert not model.layer(0).mapped
        assert model.stats()["page_cache_shared_bytes"] == 0


def test_writes_to_shared_arrays_stay_in_this_process(own_model):
    path, tensors = own_model
    before = path.read_bytes()
    got = hyperion.load_file(path)
    shared_or_skip(got.values(), path)
    name = "model.layers.3.mlp.up_proj.weight"
    got[name][:1000] = 42.0
    pt = hyperion.load_file(path, framework="pt")
    pt[name].add_(1)  # in place, as a training step would
    assert (got[name][:1000] == 42.0).all()
    assert got[name][1000:].tobytes() == tensors[name][1000:].tobytes()
    # Private copies: neither the file nor a new load sees the writes.
    assert path.read_bytes() == before
    again = hyperion.load_file(path)
    assert again[name].tobytes() == tensors[name].tobytes()


def test_truncation_by_another_process_leaves_arrays_intact(own_model):
    """The lifetime rule under a truncation: the child's truncate waits for
    the lease, whose break copies every shared page out (the same bytes);
    the arrays then read exactly what they did, written bytes included,
    and nothing faults (a SIGBUS would kill pytest)."""
    path, tensors = own_model
    got = hyperion.load_file(path)
    shared_or_skip(got.values(), path)
    name = "model.layers.5.mlp.down_proj.weight"
    got[name][:16] = -1.0
    keep = {k: v for k, v in got.items() if k != "model.layers.0.mlp.up_proj.weight"}
    del got
    gc.collect()
    truncate_from_another_process(path, 4096)
    assert path.stat().st_size == 4096
    assert not any(in_file_mapping(a, path) for a in keep.values())  # copied out
    for k, array in keep.items():
        want = tensors[k].copy()
        if k == name:
            want[:16] = -1.0
        assert array.tobytes() == want.tobytes(), k


def test_truncation_under_a_models_held_layers(own_model, tmp_path):
    path, tensors = own_model
    pristine = tmp_path / "pristine.safetensors"
    shutil.copyfile(path, pristine)
    warm(path)
    model = hyperion.open(path, budget=64 * MIB, share_page_cache=True)
    held = [model.layer(i) for i in range(model.layer_count)]
    if not any(layer.mapped for layer in held):
        pytest.skip(f"no read lease on {path}")
    arrays = [a for layer in held for a in layer.values()]
    names = [n for layer in held for n in layer.keys()]
    model.release(model.layer_count - 1)
    del held
    truncate_from_another_process(path, 0)
    for n, a in zip(names, arrays):
        assert a.tobytes() == tensors[n].tobytes(), n
    # A new read sees the cut, as an error.
    with pytest.raises(hyperion.TruncatedError):
        model.layer(model.layer_count - 1)
    model.close()
    # And the file can be rewritten while nothing holds the lease any more.
    shutil.copyfile(pristine, path)
    again = hyperion.load_file(path)
    for n, w in tensors.items():
        assert again[n].tobytes() == w.tobytes(), n


def test_cold_load_through_the_page_cache_has_the_files_bytes(own_model):
    path, tensors = own_model
    drop_cache(path)
    got = hyperion.load_file(path, framework="np")
    shared_or_skip(got.values(), path)
    for n, w in tensors.items():
        assert got[n].tobytes() == w.tobytes(), n
