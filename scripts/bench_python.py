#!/usr/bin/env python3
"""hyperion's Python package next to the Python loaders, on one safetensors
file, in one run. Run through scripts/bench-python.sh, which installs
everything and generates the file.

  load LOADER FILE --result OUT.json
      one load in this process: every tensor in memory and touched; writes
      MB/s, peak RSS and the checksum to OUT.json.
  run --file FILE --reps N --json OUT.json [--loaders a,b,...]
      each loader cold (page cache dropped first) and warm, each run in a
      fresh process, loaders interleaved within each repetition; prints one
      table with the ratios and writes OUT.json.

The file, the checksum ("touched": the wrapping sum of every tensor's
little-endian u64 words) and the peers' loaders are scripts/peers.py's, the
ones scripts/bench-peers.sh uses, so the two benchmarks measure the same
thing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

MIB = peers.MIB


def load_hyperion_np(path):
    import hyperion

    held = hyperion.load_file(path)
    return (held, *peers.sum_all(held.values(), peers.touch_np))


def load_hyperion_pt(path):
    import hyperion

    held = hyperion.load_file(path, framework="pt")
    return (held, *peers.sum_all(held.values(), peers.touch_torch))


LOADERS = {
    "hyperion_np": load_hyperion_np,
    "hyperion_pt": load_hyperion_pt,
    "st_numpy_load_file": peers.load_st_numpy,
    "st_torch_load_file": peers.load_st_torch,
    "runai": peers.load_runai,
    "runai_c16": peers.load_runai,
}

DESCRIPTIONS = {
    "hyperion_rust": "`hyperion load FILE` (the Rust CLI, same read path, no Python): what the package adds to",
    "hyperion_np": 'hyperion.load_file(path) (framework="np"): io_uring O_DIRECT, arrays over the read buffers',
    "hyperion_pt": 'hyperion.load_file(path, framework="pt"): the same, as torch tensors',
    "st_numpy_load_file": "safetensors.numpy.load_file(path)",
    "st_torch_load_file": "safetensors.torch.load_file(path)",
    "runai": "runai-model-streamer SafetensorsStreamer, default settings, owned tensors held",
    "runai_c16": "the same with RUNAI_STREAMER_CONCURRENCY=16",
}

IMPORTS = {
    "hyperion_np": ["numpy", "hyperion"],
    "hyperion_pt": ["numpy", "torch", "hyperion"],
    "st_numpy_load_file": ["numpy", "safetensors.numpy"],
    "st_torch_load_file": ["numpy", "torch", "safetensors.torch"],
    "runai": ["numpy", "torch", "runai_model_streamer"],
    "runai_c16": ["numpy", "torch", "runai_model_streamer"],
}

# (ours, theirs, target): ours' cold median over theirs' (for "runai_best",
# the better runai setting's).
RATIOS = [
    ("hyperion_np", "st_numpy_load_file", 2.5),
    ("hyperion_pt", "st_torch_load_file", 1.5),
    ("hyperion_pt", "runai_best", 1.2),
    ("hyperion_np", "runai_best", 1.2),
]
RSS_TARGET_OVER_FILE = 64 * MIB


def cmd_load(args):
    import importlib

    for module in IMPORTS[args.loader]:
        importlib.import_module(module)
    rss_before = peers.status_field("VmRSS")
    t0 = time.perf_counter()
    held, total, checksum = LOADERS[args.loader](args.file)
    seconds = time.perf_counter() - t0
    result = {
        "loader": args.loader,
        "tensors": len(held),
        "bytes": total,
        "seconds": seconds,
        "mb_s": total / 1e6 / max(seconds, 1e-9),
        "checksum": f"{checksum:016x}",
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peers.status_field("VmHWM"),
    }
    with open(args.result, "w") as f:
        json.dump(result, f)


def one_run(loader, file, state, workdir, run_id, hyperion_bin):
    if state == "cold":
        peers.drop_cache(file)
    else:
        peers.warm_cache(file)
    env = dict(os.environ)
    if loader == "runai_c16":
        env["RUNAI_STREAMER_CONCURRENCY"] = "16"
    result = os.path.join(workdir, f"{run_id}.json")
    if loader == "hyperion_rust":
        cmd = [hyperion_bin, "load", "--json", file]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "load", loader, file, "--result", result]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{loader} ({state}) failed with exit status {p.returncode}:\n{p.stderr[-3000:]}")
    if loader == "hyperion_rust":
        r = json.loads(p.stdout)
    else:
        with open(result) as f:
            r = json.load(f)
    r.update({"loader": loader, "state": state})
    return r


def cmd_run(args):
    with open(args.file + ".meta.json") as f:
        meta = json.load(f)
    loaders = args.loaders.split(",") if args.loaders else list(DESCRIPTIONS)
    for name in loaders:
        if name not in DESCRIPTIONS:
            sys.exit(f"bench-python: unknown loader {name!r}; known: {', '.join(DESCRIPTIONS)}")
    workdir = tempfile.mkdtemp(prefix="bench-python-", dir=os.path.dirname(os.path.abspath(args.json)))
    drop = peers.check_drop(args.file)
    print(
        f"bench-python: page-cache drop check: warm read {drop['warm_read_mb_s']:.0f} MB/s, "
        f"after the drop {drop['after_drop_read_mb_s']:.0f} MB/s",
        file=sys.stderr,
    )
    runs, warnings = [], []
    for rep in range(args.reps):
        k = rep % len(loaders)
        for loader in loaders[k:] + loaders[:k]:
            for state in ("cold", "warm"):
                r = one_run(loader, args.file, state, workdir, f"{rep}-{loader}-{state}", args.hyperion)
                r["rep"] = rep
                runs.append(r)
                print(
                    f"bench-python: rep {rep + 1}/{args.reps} {loader:<19} {state}: {r['mb_s']:7.0f} MB/s, "
                    f"peak RSS {r['peak_rss_bytes'] / MIB:6.0f} MiB",
                    file=sys.stderr,
                )
                if state == "cold" and r["mb_s"] > peers.COLD_SUSPICIOUS_MB_S:
                    warnings.append(f"{loader} rep {rep}: a cold run at {r['mb_s']:.0f} MB/s: the drop did not work")
    shutil.rmtree(workdir, ignore_errors=True)
    checksums = {r["checksum"] for r in runs}
    if len(checksums) != 1:
        warnings.append(f"checksums differ between loaders: {sorted(checksums)}")

    table = {}
    for loader in loaders:
        mine = [r for r in runs if r["loader"] == loader]
        table[loader] = {
            "description": DESCRIPTIONS[loader],
            "cold_mb_s": peers.summary([r["mb_s"] for r in mine if r["state"] == "cold"]),
            "warm_mb_s": peers.summary([r["mb_s"] for r in mine if r["state"] == "warm"]),
            "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in mine),
            "rss_before_bytes_max": max(r["rss_before_bytes"] for r in mine),
            "load_rss_bytes_max": max(r["peak_rss_bytes"] - r["rss_before_bytes"] for r in mine),
        }

    def median(loader, state):
        if loader == "runai_best":
            got = [table[n][f"{state}_mb_s"]["median"] for n in ("runai", "runai_c16") if n in table]
            return max(got) if got else None
        return table[loader][f"{state}_mb_s"]["median"] if loader in table else None

    ratios = []
    for ours, theirs, target in RATIOS:
        a, b = median(ours, "cold"), median(theirs, "cold")
        if a is None or b is None:
            continue
        wa, wb = median(ours, "warm"), median(theirs, "warm")
        ratios.append({"ours": ours, "theirs": theirs, "cold": a / b, "warm": wa / wb, "target": target,
                       "met": a / b >= target})
    rss = {
        loader: {
            "load_rss_over_file_mib": (table[loader]["load_rss_bytes_max"] - meta["file_bytes"]) / MIB,
            "met": table[loader]["load_rss_bytes_max"] <= meta["file_bytes"] + RSS_TARGET_OVER_FILE,
        }
        for loader in ("hyperion_np", "hyperion_pt")
        if loader in table
    }
    report = {
        "machine": peers.machine_info(),
        "file": {"path": args.file, **meta},
        "repetitions": args.reps,
        "drop_check": drop,
        "loaders": table,
        "ratios": ratios,
        "rss": rss,
        "warnings": warnings,
        "checksum": sorted(checksums)[0] if len(checksums) == 1 else None,
        "runs": runs,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print_table(report)


def print_table(report):
    f = report["file"]
    print(
        f"\nbench-python: {f['file_bytes'] / MIB:.0f} MiB safetensors ({f['tensors']} f16 tensors), "
        f"{report['repetitions']} repetitions, each run a fresh process; MB/s = 10^6 tensor bytes/s, "
        "from the load call to the last byte touched\n"
    )
    print("| loader | cold MB/s (min / median / max) | warm MB/s (min / median / max) | peak RSS | before | RSS of the load |")
    print("| --- | --- | --- | --- | --- | --- |")
    for loader, t in report["loaders"].items():
        c, w = t["cold_mb_s"], t["warm_mb_s"]
        print(
            f"| `{loader}` | {c['min']:.0f} / **{c['median']:.0f}** / {c['max']:.0f} | "
            f"{w['min']:.0f} / **{w['median']:.0f}** / {w['max']:.0f} | {t['peak_rss_bytes_max'] / MIB:.0f} MiB | "
            f"{t['rss_before_bytes_max'] / MIB:.0f} MiB | {t['load_rss_bytes_max'] / MIB:.0f} MiB |"
        )
    print("\n| ratio (medians) | cold | warm | target (cold) |")
    print("| --- | --- | --- | --- |")
    for r in report["ratios"]:
        print(
            f"| `{r['ours']}` / `{r['theirs']}` | {r['cold']:.2f}× | {r['warm']:.2f}× | "
            f"≥ {r['target']}× ({'met' if r['met'] else 'missed'}) |"
        )
    for loader, r in report["rss"].items():
        print(
            f"\n{loader}: RSS of the load is the file {r['load_rss_over_file_mib']:+.0f} MiB "
            f"(target ≤ +64 MiB: {'met' if r['met'] else 'missed'})",
            end="",
        )
    print("\n\npeak RSS: the process's VmHWM, max over runs; before: VmRSS just before the load call "
          "(interpreter and imports: torch's are most of it); RSS of the load: peak RSS minus before, max over runs")
    print("runai_best: the better of runai and runai_c16 (medians)")
    for loader, t in report["loaders"].items():
        print(f"  {loader}: {t['description']}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    print(f"checksum of every loader: {report['checksum'] or 'MISMATCH'}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load")
    load.add_argument("loader", choices=sorted(LOADERS))
    load.add_argument("file")
    load.add_argument("--result", required=True)
    run = sub.add_parser("run")
    run.add_argument("--file", required=True)
    run.add_argument("--reps", type=int, default=3)
    run.add_argument("--json", required=True)
    run.add_argument("--loaders")
    run.add_argument("--hyperion", required=True, help="the hyperion binary, for the hyperion_rust row")
    args = p.parse_args()
    if getattr(args, "reps", 1) <= 0:
        sys.exit("bench-python: --reps must be positive")
    {"load": cmd_load, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
