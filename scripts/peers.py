#!/usr/bin/env python3
"""Hyperion next to the Python loaders of the same safetensors file.

Run through scripts/bench-peers.sh, which makes the venv and builds Hyperion.
Three subcommands:

  generate --size BYTES --out FILE [--pt]
      writes a llama-like f16 safetensors file of about BYTES (and, with --pt,
      a torch.save'd copy FILE.pt of the same tensors), plus FILE.meta.json;
      does nothing when they exist with the same parameters.
  load LOADER FILE --result OUT.json
      one load in this process: every tensor in memory and touched; writes
      MB/s, peak RSS and the checksum to OUT.json.
  run --file FILE --hyperion BIN --reps N --json OUT.json [--loaders a,b,...]
      each loader cold (page cache dropped first) and warm, each run in a
      fresh process, loaders interleaved within each repetition; prints one
      table and writes OUT.json.

"Touched" is the same everywhere (and in `hyperion load`): the wrapping sum
of each tensor's little-endian u64 words, a tail shorter than 8 bytes added
byte by byte, summed over all tensors. Every loader must report the same
checksum, so each is known to have delivered the file's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
MASK = (1 << 64) - 1
GEN_VERSION = 1
# A cold read faster than this came from memory, not from this disk.
COLD_SUSPICIOUS_MB_S = 8000.0

# ---------------------------------------------------------------------------
# Process measurements


def status_field(name: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {name} in /proc/self/status")


def measure(fn, path, imports, pause=0.0):
    """Runs loader `fn` on `path` in this process as every benchmark here
    measures it: `imports` first (outside the clock: `import torch` alone
    takes seconds and hundreds of MiB), then `pause` seconds of sleep, then
    the clock from the load call to the last byte touched. Returns (tensors
    held, result dict)."""
    import importlib

    for module in imports:
        importlib.import_module(module)
    time.sleep(pause)
    rss_before = status_field("VmRSS")
    t0 = time.perf_counter()
    held, total, checksum = fn(path)
    seconds = time.perf_counter() - t0
    return held, {
        "tensors": len(held),
        "bytes": total,
        "seconds": seconds,
        "mb_s": total / 1e6 / max(seconds, 1e-9),
        "checksum": f"{checksum:016x}",
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": status_field("VmHWM"),
    }


def touch_u8(buf) -> int:
    """The checksum of one tensor's bytes, given as a 1-D uint8 numpy array."""
    import numpy as np

    n = buf.size // 8 * 8
    s = int(buf[:n].view("<u8").sum(dtype=np.uint64)) if n else 0
    if n < buf.size:
        s += int(buf[n:].sum(dtype=np.uint64))
    return s & MASK


def touch_np(arr) -> int:
    import numpy as np

    return touch_u8(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def touch_torch(t) -> int:
    import torch

    return touch_u8(t.contiguous().reshape(-1).view(torch.uint8).numpy())


# ---------------------------------------------------------------------------
# The loaders. Each loads every tensor of `path`, holds them all, touches
# every byte, and returns (tensors held, bytes, checksum).


def sum_all(tensors, touch):
    total, checksum = 0, 0
    for t in tensors:
        checksum = (checksum + touch(t)) & MASK
        total += t.nbytes
    return total, checksum


def load_st_numpy(path):
    from safetensors.numpy import load_file

    held = load_file(path)
    return (held, *sum_all(held.values(), touch_np))


def load_st_torch(path):
    from safetensors.torch import load_file

    held = load_file(path)
    return (held, *sum_all(held.values(), touch_torch))


def load_st_safe_open(path):
    from safetensors import safe_open

    held = {}
    with safe_open(path, framework="np") as f:
        for name in f.keys():
            held[name] = f.get_tensor(name)
    return (held, *sum_all(held.values(), touch_np))


def load_torch_mmap(path):
    import torch

    held = torch.load(path + ".pt", mmap=True, weights_only=True, map_location="cpu")
    return (held, *sum_all(held.values(), touch_torch))


def load_runai(path):
    from runai_model_streamer import SafetensorsStreamer

    held = {}
    total, checksum = 0, 0
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(path)
        # Owned tensors (the default): valid after the iteration advances.
        for name, t in streamer.get_tensors():
            checksum = (checksum + touch_torch(t)) & MASK
            total += t.nbytes
            held[name] = t
        return held, total, checksum


LOADERS = {
    "st_numpy_load_file": load_st_numpy,
    "st_torch_load_file": load_st_torch,
    "st_safe_open": load_st_safe_open,
    "torch_load_mmap": load_torch_mmap,
    "runai": load_runai,
}

# What each loader does, for the table's legend and the JSON.
DESCRIPTIONS = {
    "hyperion": "hyperion load: budget = whole model, io_uring O_DIRECT (default config), every layer held",
    "hyperion_buffered": "hyperion load --buffered: the same with direct_io: false (uses a warm page cache)",
    "hyperion_shared": "hyperion load --share-page-cache: cached layers shared with the page cache under a read lease",
    "hyperion_shared_cold": "hyperion load --share-page-cache --share-cold: every layer shared, cold ones read through the page cache",
    "hyperion_shared_auto": "hyperion load --share-page-cache --share-cold=auto: cold layers read through the page cache only while fresh memory is slow, else copied",
    "hyperion_stream": "hyperion load --budget B: streaming, each layer touched then dropped (B = file/8)",
    "st_numpy_load_file": "safetensors.numpy.load_file (mmap backend, copies into numpy arrays)",
    "st_torch_load_file": "safetensors.torch.load_file (mmap backend)",
    "st_safe_open": "safe_open(framework='np') + get_tensor for every tensor, all held",
    "torch_load_mmap": "torch.load(copy.pt, mmap=True, weights_only=True) of a torch.save'd copy of the same tensors",
    "runai": "runai-model-streamer SafetensorsStreamer, default settings, owned tensors held",
    "runai_c16": "the same with RUNAI_STREAMER_CONCURRENCY=16",
}

ALL_LOADERS = list(DESCRIPTIONS)


# Imported before the clock starts and before the baseline RSS is read:
# `import torch` alone takes seconds and hundreds of MiB.
IMPORTS = {
    "st_numpy_load_file": ["numpy", "safetensors.numpy"],
    "st_torch_load_file": ["numpy", "torch", "safetensors.torch"],
    "st_safe_open": ["numpy", "safetensors"],
    "torch_load_mmap": ["numpy", "torch"],
    "runai": ["numpy", "torch", "runai_model_streamer"],
}


def cmd_load(args):
    held, result = measure(LOADERS[args.loader], args.file, IMPORTS[args.loader])
    result["loader"] = args.loader
    with open(args.result, "w") as f:
        json.dump(result, f)
    del held


# ---------------------------------------------------------------------------
# Generating the file


def shapes_for(size: int):
    """A llama-like layout (f16, grouped-query attention) of about `size` bytes."""
    if size >= 1 << 30:  # TinyLlama-1.1B's shapes
        h, kv, inter, vocab = 2048, 256, 5632, 32000
    elif size >= 256 * MIB:
        h, kv, inter, vocab = 1024, 256, 2816, 16000
    else:
        h, kv, inter, vocab = 512, 128, 1408, 8192
    block = [
        ("input_layernorm.weight", [h]),
        ("self_attn.q_proj.weight", [h, h]),
        ("self_attn.k_proj.weight", [kv, h]),
        ("self_attn.v_proj.weight", [kv, h]),
        ("self_attn.o_proj.weight", [h, h]),
        ("post_attention_layernorm.weight", [h]),
        ("mlp.gate_proj.weight", [inter, h]),
        ("mlp.up_proj.weight", [inter, h]),
        ("mlp.down_proj.weight", [h, inter]),
    ]

    def nbytes(shape):
        n = 2
        for d in shape:
            n *= d
        return n

    block_bytes = sum(nbytes(s) for _, s in block)
    outer = 2 * vocab * h * 2 + h * 2
    layers = max(1, round((size - outer) / block_bytes))
    tensors = [("model.embed_tokens.weight", [vocab, h])]
    for i in range(layers):
        tensors += [(f"model.layers.{i}.{n}", s) for n, s in block]
    tensors += [("model.norm.weight", [h]), ("lm_head.weight", [vocab, h])]
    largest = max(block_bytes, vocab * h * 2)
    return tensors, nbytes, layers, largest


def cmd_generate(args):
    import numpy as np

    out = args.out
    meta_path = out + ".meta.json"
    params = {"version": GEN_VERSION, "size": args.size}
    if os.path.exists(out) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("params") == params and os.path.getsize(out) == meta.get("file_bytes"):
            if not args.pt or os.path.exists(out + ".pt"):
                print(f"peers: {out} exists ({meta['file_bytes']} bytes), reusing it", file=sys.stderr)
                return
    tensors, nbytes, layers, largest = shapes_for(args.size)
    # The safetensors writers order tensors by name (after alignment), so real
    # files put model.layers.10.* before model.layers.2.*; do the same.
    tensors.sort(key=lambda t: t[0])
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = nbytes(shape)
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    rng = np.random.default_rng(0x5EED)
    tmp = out + ".tmp"
    print(
        f"peers: writing {out}: {len(tensors)} f16 tensors, {layers} blocks, {(off + 8 + len(hjson)) / MIB:.0f} MiB",
        file=sys.stderr,
    )
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        chunk = 16 * MIB // 2  # elements per write
        for name, shape in tensors:
            left = nbytes(shape) // 2
            while left:
                k = min(left, chunk)
                w = (rng.standard_normal(k, dtype=np.float32) * 0.02).astype("<f2")
                f.write(w.tobytes())
                left -= k
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    if args.pt:
        import torch
        from safetensors.torch import load_file

        print(f"peers: writing {out}.pt (torch.save of the same tensors)", file=sys.stderr)
        state = {k: v.clone() for k, v in load_file(out).items()}
        torch.save(state, out + ".pt.tmp")
        del state
        with open(out + ".pt.tmp", "rb+") as f:
            os.fsync(f.fileno())
        os.replace(out + ".pt.tmp", out + ".pt")
    meta = {
        "params": params,
        "file_bytes": os.path.getsize(out),
        "tensor_bytes": off,
        "tensors": len(tensors),
        "blocks": layers,
        "largest_layer_bytes": largest,
        "dtype": "F16",
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)


# ---------------------------------------------------------------------------
# The orchestrator


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_cache(path):
    buf = bytearray(8 * MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def cached_bytes(path):
    """Bytes of `path` in the page cache (fincore), or None without fincore."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", path],
        capture_output=True,
        text=True,
    )
    try:
        return int(out.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def timed_read(path, limit):
    buf = bytearray(8 * MIB)
    got = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while got < limit:
            n = f.readinto(buf)
            if not n:
                break
            got += n
    return got / 1e6 / max(time.perf_counter() - t0, 1e-9)


def check_drop(path):
    """Shows that dropping works here: a warm read, then a read after the drop."""
    limit = min(os.path.getsize(path), 512 * MIB)
    warm_cache(path)
    warm = timed_read(path, limit)
    drop_cache(path)
    after = cached_bytes(path)
    cold = timed_read(path, limit)
    return {"warm_read_mb_s": warm, "after_drop_read_mb_s": cold, "cached_bytes_after_drop": after, "bytes": limit}


def prepare_cache(path, state):
    """Drops `path` from the page cache (state "cold") or reads it in ("warm")."""
    if state == "cold":
        drop_cache(path)
    else:
        warm_cache(path)


def spawn(loader, state, cmd, env, result_path):
    """Runs one load in a fresh process: `cmd` writes its result as JSON to
    `result_path`, or to stdout when `result_path` is None (`hyperion load
    --json`). Returns the result with `loader`, `state` and the process's
    wall time added."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{loader} ({state}) failed with exit status {p.returncode}:\n{p.stderr[-3000:]}")
    if result_path is None:
        r = json.loads(p.stdout)
    else:
        with open(result_path) as f:
            r = json.load(f)
    r.update({"loader": loader, "state": state, "process_seconds": wall})
    return r


def run_all(loaders, reps, one, tag):
    """Every loader cold then warm, `reps` times, through `one(loader, state,
    run_id)`; the order rotates each repetition, so drift and neighbours hit
    all loaders alike. Returns (runs, warnings)."""
    runs, warnings = [], []
    for rep in range(reps):
        k = rep % len(loaders)
        for loader in loaders[k:] + loaders[:k]:
            for state in ("cold", "warm"):
                r = one(loader, state, f"run-{rep}-{loader}-{state}")
                r["rep"] = rep
                runs.append(r)
                print(
                    f"{tag}: rep {rep + 1}/{reps} {loader:<20} {state}: {r['mb_s']:8.0f} MB/s, "
                    f"peak RSS {r['peak_rss_bytes'] / MIB:7.0f} MiB",
                    file=sys.stderr,
                )
                if state == "cold" and r["mb_s"] > COLD_SUSPICIOUS_MB_S:
                    warnings.append(f"{loader} rep {rep}: a cold run at {r['mb_s']:.0f} MB/s: the drop did not work")
    checksums = {r["checksum"] for r in runs}
    if len(checksums) != 1:
        warnings.append(f"checksums differ between loaders: {sorted(checksums)}")
    return runs, warnings


def loader_rows(runs, loaders, descriptions):
    """Per loader: its description, cold and warm MB/s (min, median, max) and
    RSS (peak, before the load, and of the load: max over runs)."""
    table = {}
    for loader in loaders:
        mine = [r for r in runs if r["loader"] == loader]
        table[loader] = {
            "description": descriptions[loader],
            "cold_mb_s": summary([r["mb_s"] for r in mine if r["state"] == "cold"]),
            "warm_mb_s": summary([r["mb_s"] for r in mine if r["state"] == "warm"]),
            "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in mine),
            "rss_before_bytes_max": max(r["rss_before_bytes"] for r in mine),
            "load_rss_bytes_max": max(r["peak_rss_bytes"] - r["rss_before_bytes"] for r in mine),
        }
    return table


def write_report(path, file, meta, reps, drop, table, runs, warnings, **extra):
    """Writes a run's report as JSON to `path` and returns it: the machine,
    the file, the page-cache drop check, the per-loader `table`, `extra`
    (ratios, targets …), warnings, the checksum all runs agreed on (None if
    they did not) and every run."""
    checksums = {r["checksum"] for r in runs}
    report = {
        "machine": machine_info(),
        "file": {"path": file, **meta},
        "repetitions": reps,
        "drop_check": drop,
        "loaders": table,
        **extra,
        "warnings": warnings,
        "checksum": sorted(checksums)[0] if len(checksums) == 1 else None,
        "runs": runs,
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return report


def one_run(loader, args, meta, state, workdir, run_id):
    """Runs `loader` once in a fresh process; returns its result dict."""
    target = args.file + ".pt" if loader == "torch_load_mmap" else args.file
    prepare_cache(target, state)
    cached = cached_bytes(target)
    env = dict(os.environ)
    result_path = os.path.join(workdir, f"{run_id}.json")
    if loader.startswith("hyperion"):
        cmd = [args.hyperion, "load", "--json"]
        if loader == "hyperion_buffered":
            cmd.append("--buffered")
        if loader in ("hyperion_shared", "hyperion_shared_cold", "hyperion_shared_auto"):
            cmd.append("--share-page-cache")
        if loader == "hyperion_shared_cold":
            cmd.append("--share-cold")
        if loader == "hyperion_shared_auto":
            cmd.append("--share-cold=auto")
        if loader == "hyperion_stream":
            cmd += ["--budget", str(meta["stream_budget"])]
        cmd.append(args.file)
        result_path = None
    else:
        fn = "runai" if loader.startswith("runai") else loader
        cmd = [sys.executable, os.path.abspath(__file__), "load", fn, args.file, "--result", result_path]
        if loader == "runai_c16":
            env["RUNAI_STREAMER_CONCURRENCY"] = "16"
    r = spawn(loader, state, cmd, env, result_path)
    r["cached_bytes_before"] = cached
    return r


def summary(values):
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def cmd_run(args):
    with open(args.file + ".meta.json") as f:
        meta = json.load(f)
    meta["stream_budget"] = max(meta["file_bytes"] // 8, 2 * meta["largest_layer_bytes"] + 8 * MIB)
    meta["stream_budget"] = -(-meta["stream_budget"] // MIB) * MIB
    loaders = args.loaders.split(",") if args.loaders else ALL_LOADERS
    for l in loaders:
        if l not in DESCRIPTIONS:
            sys.exit(f"peers: unknown loader {l!r}; known: {', '.join(ALL_LOADERS)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    # The children's result files, removed at the end.
    workdir = tempfile.mkdtemp(prefix="peers-runs-", dir=os.path.dirname(os.path.abspath(args.json)))

    drop = check_drop(args.file)
    print(
        f"peers: page-cache drop check on {min(meta['file_bytes'], 512 * MIB) / MIB:.0f} MiB: warm read "
        f"{drop['warm_read_mb_s']:.0f} MB/s, after posix_fadvise(DONTNEED) {drop['after_drop_read_mb_s']:.0f} MB/s, "
        f"cached bytes right after the drop: {drop['cached_bytes_after_drop']}",
        file=sys.stderr,
    )

    runs, warnings = run_all(
        loaders, args.reps, lambda loader, state, run_id: one_run(loader, args, meta, state, workdir, run_id), "peers"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    table = loader_rows(runs, loaders, DESCRIPTIONS)
    for t in table.values():
        t["peak_rss_over_file_bytes"] = t["peak_rss_bytes_max"] - meta["file_bytes"]
    ref = table.get("hyperion")
    for loader, t in table.items():
        if ref:
            t["hyperion_over_this_cold"] = ref["cold_mb_s"]["median"] / t["cold_mb_s"]["median"]
            t["hyperion_over_this_warm"] = ref["warm_mb_s"]["median"] / t["warm_mb_s"]["median"]

    targets = {}
    if ref:
        runai = [table[l] for l in ("runai", "runai_c16") if l in table]
        if runai:
            best = max(t["cold_mb_s"]["median"] for t in runai)
            ratio = ref["cold_mb_s"]["median"] / best
            targets["cold_over_best_runai"] = {"ratio": ratio, "target": 1.3, "met": ratio >= 1.3}
        if "st_numpy_load_file" in table:
            ratio = table["st_numpy_load_file"]["hyperion_over_this_cold"]
            targets["cold_over_st_numpy_load_file"] = {"ratio": ratio, "target": 4.0, "met": ratio >= 4.0}
        if "st_torch_load_file" in table:
            ratio = table["st_torch_load_file"]["hyperion_over_this_cold"]
            targets["cold_over_st_torch_load_file"] = {"ratio": ratio, "target": 4.0, "met": ratio >= 4.0}
        if "hyperion_shared" in table and "st_torch_load_file" in table:
            ratio = table["hyperion_shared"]["warm_mb_s"]["median"] / table["st_torch_load_file"]["warm_mb_s"]["median"]
            targets["warm_shared_over_st_torch_load_file"] = {"ratio": ratio, "target": 0.8, "met": ratio >= 0.8}
        over = ref["peak_rss_over_file_bytes"]
        targets["whole_load_peak_rss_over_file"] = {
            "bytes": over,
            "mib": over / MIB,
            "target_mib": 16,
            "met": over <= 16 * MIB,
        }

    report = write_report(args.json, args.file, meta, args.reps, drop, table, runs, warnings, targets=targets)
    print_table(report)


def print_warnings(report):
    """The table's last lines: the run's warnings and the common checksum."""
    for w in report["warnings"]:
        print(f"warning: {w}")
    print(f"checksum of every loader: {report['checksum'] or 'MISMATCH'}")


def machine_info():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    for pkg in ("numpy", "safetensors", "torch", "runai-model-streamer"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:
            info[pkg] = None
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def print_table(report):
    f = report["file"]
    print(
        f"\npeers: {f['file_bytes'] / MIB:.0f} MiB safetensors ({f['tensors']} f16 tensors, {f['blocks']} blocks), "
        f"{report['repetitions']} repetitions, each run a fresh process; MB/s = 10^6 tensor bytes/s, "
        f"timed from the load call to the last byte touched"
    )
    print(
        f"{'loader':<20} {'cold min':>9} {'median':>8} {'max':>8} {'warm min':>9} {'median':>8} {'max':>8} "
        f"{'peak RSS':>9} {'before':>7} {'load':>7} {'H/x cold':>9} {'H/x warm':>9}"
    )
    for loader, t in report["loaders"].items():
        c, w = t["cold_mb_s"], t["warm_mb_s"]
        print(
            f"{loader:<20} {c['min']:>9.0f} {c['median']:>8.0f} {c['max']:>8.0f} {w['min']:>9.0f} "
            f"{w['median']:>8.0f} {w['max']:>8.0f} {t['peak_rss_bytes_max'] / MIB:>8.0f}M "
            f"{t['rss_before_bytes_max'] / MIB:>6.0f}M {t['load_rss_bytes_max'] / MIB:>6.0f}M {t.get('hyperion_over_this_cold', 0):>9.2f} "
            f"{t.get('hyperion_over_this_warm', 0):>9.2f}"
        )
    print(
        "peak RSS: the process's VmHWM (max over runs); before: VmRSS when the load started "
        "(interpreter, imports); load: peak RSS - before (max over runs)"
    )
    print("H/x: Hyperion's median (row 'hyperion') over this loader's median")
    for loader, t in report["loaders"].items():
        print(f"  {loader}: {t['description']}")
    for name, t in report["targets"].items():
        if "ratio" in t:
            print(f"target {name}: {t['ratio']:.2f} (≥ {t['target']}: {'met' if t['met'] else 'missed'})")
        else:
            print(
                f"target {name}: {t['mib']:.1f} MiB over the file (≤ {t['target_mib']} MiB: "
                f"{'met' if t['met'] else 'missed'})"
            )
    print_warnings(report)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--size", type=int, required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--pt", action="store_true")
    l = sub.add_parser("load")
    l.add_argument("loader", choices=sorted(LOADERS))
    l.add_argument("file")
    l.add_argument("--result", required=True)
    r = sub.add_parser("run")
    r.add_argument("--file", required=True)
    r.add_argument("--hyperion", required=True)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--json", required=True)
    r.add_argument("--loaders")
    args = p.parse_args()
    if getattr(args, "size", 1) <= 0 or getattr(args, "reps", 1) <= 0:
        sys.exit("peers: --size and --reps must be positive")
    {"generate": cmd_generate, "load": cmd_load, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
