#!/usr/bin/env python3
"""Prints the criterion results of the hot-path and growth benchmarks as the
markdown tables of BENCHMARKS.md: criterion's median per iteration (from
target/criterion/<group>/<bench>/new/estimates.json) and the ratios the targets
are stated in. Run after `cargo bench --bench hot_path --bench growth`."""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")


def median(*path):
    """Criterion's median time per iteration, in ns, or None if not run."""
    name = os.path.join(ROOT, *path, "new", "estimates.json")
    if not os.path.exists(name):
        return None
    with open(name) as f:
        return json.load(f)["median"]["point_estimate"]


def fmt(ns):
    if ns is None:
        return "-"
    if ns < 1_000:
        return f"{ns:.3g} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.3g} µs"
    return f"{ns / 1_000_000:.3g} ms"


def hot_path():
    variants = ["fixed_array", "perproc", "directory", "copy_on_grow", "thread_local",
                "spin_rwlock_vec", "index_only"]
    times = {v: median("hot_path", v) for v in variants}
    ours = times["perproc"]
    print("| variant | median per read | perproc / variant | variant / fixed array |")
    print("|---|---:|---:|---:|")
    for v in variants:
        t = times[v]
        if t is None:
            continue
        print(f"| {v} | {fmt(t)} | {ours / t:.2f}x | {t / times['fixed_array']:.2f}x |")


def growth():
    ks = [1, 64, 256, 512, 1024, 2048]
    adds = 16
    names = ["perproc", "directory", "copy_on_grow"]
    print("| k | " + " | ".join(f"{n} (per add)" for n in names) + " | copy_on_grow / perproc |")
    print("|---:|" + "---:|" * (len(names) + 1))
    per = {n: {k: median("kth_add", n, str(k)) for k in ks} for n in names}
    for k in ks:
        cells = [fmt(per[n][k] / adds) if per[n][k] else "-" for n in names]
        ratio = per["copy_on_grow"][k] / per["perproc"][k] if per["perproc"][k] else 0
        print(f"| {k} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    print()
    print("| variant | k=2048 / k=64 | k=1024 / k=64 |")
    print("|---|---:|---:|")
    for n in names:
        if per[n][64]:
            print(f"| {n} | {per[n][2048] / per[n][64]:.2f}x | {per[n][1024] / per[n][64]:.2f}x |")
    print()
    print("| processors replayed | perproc (2 components) | per processor | copy_on_grow (2 arrays) | copy_on_grow / perproc |")
    print("|---:|---:|---:|---:|---:|")
    for n in [64, 512, 2048]:
        ours = median("registration", "perproc", str(n))
        cow = median("registration", "copy_on_grow", str(n))
        if ours and cow:
            print(f"| {n} | {fmt(ours)} | {fmt(ours / n)} | {fmt(cow)} | {cow / ours:.1f}x |")


if __name__ == "__main__":
    which = sys.argv[1:] or ["hot_path", "growth"]
    for i, w in enumerate(which):
        if i:
            print()
        {"hot_path": hot_path, "growth": growth}[w]()
