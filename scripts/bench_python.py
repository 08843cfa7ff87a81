#!/usr/bin/env python3
"""hyperion's Python package next to the Python loaders, on one safetensors
file, in one run. Run through scripts/bench-python.sh, which installs
everything and generates the file.

  load LOADER FILE --result OUT.json [--settle SECONDS]
      one load in this process: every tensor in memory and touched; writes
      MB/s, peak RSS and the checksum to OUT.json.
  run --file FILE --reps N --json OUT.json [--loaders a,b,...] [--memory M]
      each loader cold (page cache dropped first) and warm, each run in a
      fresh process, loaders interleaved within each repetition; prints one
      table with the ratios and writes OUT.json.

--memory is the state of the machine's free memory when each load starts,
the same for every loader. On these VMs (virtio-balloon free page
reporting) freed memory goes back to the host a second or two after it is
freed, and touching it again then costs a host-level fault per page: 2 GiB
of new memory faulted in 0.15 s right after another process freed it, and
in 0.7-4.8 s a few seconds later. Which of the two a loader gets depends on
how long its process ran before its first allocation (`import torch` takes
seconds, `import numpy` a fraction), not on the loader:
  settled   (default) a pause of --settle seconds (default 5) right before
            the load call (in the loader's process after its imports; for
            the Rust CLI, which imports nothing, before it starts): the
            memory earlier runs and the imports freed has gone back to the
            host, and every loader pays the host's fault per page.
  as-is     no pause (the bench before 2026-12-03): a loader that imports
            little (numpy, the Rust CLI) reuses the memory the previous run
            just freed, one that imports torch gets the host's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def load_hyperion_np_copy(path):
    import hyperion

    held = hyperion.load_file(path, share_page_cache=False)
    return (held, *peers.sum_all(held.values(), peers.touch_np))


def load_hyperion_pt_copy(path):
    import hyperion

    held = hyperion.load_file(path, framework="pt", share_page_cache=False)
    return (held, *peers.sum_all(held.values(), peers.touch_torch))


PEERS = ["st_numpy_load_file", "st_torch_load_file", "runai", "runai_c16"]

LOADERS = {
    "hyperion_np": load_hyperion_np,
    "hyperion_pt": load_hyperion_pt,
    "hyperion_np_copy": load_hyperion_np_copy,
    "hyperion_pt_copy": load_hyperion_pt_copy,
    **{name: peers.LOADERS[name.removesuffix("_c16")] for name in PEERS},
}

DESCRIPTIONS = {
    "hyperion_rust": "`hyperion load FILE` (the Rust CLI, the copy path, no Python)",
    "hyperion_rust_shared": "`hyperion load --share-page-cache --share-cold FILE` (the Rust CLI, load_file's default path, no Python)",
    "hyperion_rust_auto": "`hyperion load --share-page-cache --share-cold=auto FILE` (the Rust CLI: cold layers through the page cache only while fresh memory is slow)",
    "hyperion_np": 'hyperion.load_file(path) (framework="np"): arrays over the page cache\'s pages (share_page_cache, the default)',
    "hyperion_pt": 'hyperion.load_file(path, framework="pt"): the same, as torch tensors',
    "hyperion_np_copy": 'hyperion.load_file(path, share_page_cache=False): io_uring O_DIRECT, arrays over the read buffers',
    "hyperion_pt_copy": 'hyperion.load_file(path, framework="pt", share_page_cache=False): io_uring O_DIRECT, torch tensors over the read buffers',
    **{name: peers.DESCRIPTIONS[name] for name in PEERS},
}

# Imported before the clock starts (peers.measure).
IMPORTS = {
    "hyperion_np": ["numpy", "hyperion"],
    "hyperion_pt": ["numpy", "torch", "hyperion"],
    "hyperion_np_copy": ["numpy", "hyperion"],
    "hyperion_pt_copy": ["numpy", "torch", "hyperion"],
    **{name: peers.IMPORTS[name.removesuffix("_c16")] for name in PEERS},
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
    held, result = peers.measure(LOADERS[args.loader], args.file, IMPORTS[args.loader], args.settle)
    result["loader"] = args.loader
    with open(args.result, "w") as f:
        json.dump(result, f)
    del held


def one_run(loader, args, state, workdir, run_id):
    """One load in a fresh process, from the page-cache `state` and the
    memory state `args.memory`."""
    peers.prepare_cache(args.file, state)
    settle = args.settle if args.memory == "settled" else 0.0
    env = dict(os.environ)
    if loader == "runai_c16":
        env["RUNAI_STREAMER_CONCURRENCY"] = "16"
    if loader in ("hyperion_rust", "hyperion_rust_shared", "hyperion_rust_auto"):
        time.sleep(settle)
        shared = {
            "hyperion_rust_shared": ["--share-page-cache", "--share-cold"],
            "hyperion_rust_auto": ["--share-page-cache", "--share-cold=auto"],
        }.get(loader, [])
        return peers.spawn(loader, state, [args.hyperion, "load", "--json", *shared, args.file], env, None)
    result = os.path.join(workdir, f"{run_id}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "load", loader, args.file, "--result", result]
    cmd += ["--settle", str(settle)]
    return peers.spawn(loader, state, cmd, env, result)


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
    runs, warnings = peers.run_all(
        loaders,
        args.reps,
        lambda loader, state, run_id: one_run(loader, args, state, workdir, run_id),
        "bench-python",
    )
    shutil.rmtree(workdir, ignore_errors=True)
    table = peers.loader_rows(runs, loaders, DESCRIPTIONS)

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
    memory = {"mode": args.memory, "settle_seconds": args.settle if args.memory == "settled" else 0}
    report = peers.write_report(
        args.json, args.file, meta, args.reps, drop, table, runs, warnings, memory=memory, ratios=ratios, rss=rss
    )
    print_table(report)


def print_table(report):
    f = report["file"]
    print(
        f"\nbench-python: {f['file_bytes'] / MIB:.0f} MiB safetensors ({f['tensors']} f16 tensors), "
        f"{report['repetitions']} repetitions, each run a fresh process; MB/s = 10^6 tensor bytes/s, "
        f"from the load call to the last byte touched; memory: {report['memory']['mode']}\n"
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
    peers.print_warnings(report)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load")
    load.add_argument("loader", choices=sorted(LOADERS))
    load.add_argument("file")
    load.add_argument("--result", required=True)
    load.add_argument("--settle", type=float, default=0.0, help="seconds of pause between the imports and the load")
    run = sub.add_parser("run")
    run.add_argument("--file", required=True)
    run.add_argument("--reps", type=int, default=3)
    run.add_argument("--json", required=True)
    run.add_argument("--loaders")
    run.add_argument("--memory", choices=("settled", "as-is"), default="settled")
    run.add_argument("--settle", type=float, default=5.0, help="seconds of pause before each load (--memory settled)")
    run.add_argument("--hyperion", required=True, help="the hyperion binary, for the hyperion_rust row")
    args = p.parse_args()
    if getattr(args, "reps", 1) <= 0:
        sys.exit("bench-python: --reps must be positive")
    {"load": cmd_load, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
