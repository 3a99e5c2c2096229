#!/usr/bin/env python3
"""Prints the criterion results of the hot-path and growth benchmarks as the
markdown tables of BENCHMARKS.md: criterion's median per iteration (from
target/criterion/<group>/<bench>/new/estimates.json) and the ratios the targets
are stated in. Run after `cargo bench` (or the benches it names):
`python3 benches/criterion_table.py [hot_path] [growth] [pool] [queue]`."""
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
    for group, title in [("kth_add", "warm"), ("kth_add_cold", "cold")]:
        print(f"k-th add, {title} caches (`{group}`):")
        print()
        kth(group)
        print()
    registration()


def kth(group):
    ks = [1, 64, 256, 512, 1024, 2048]
    adds = 16
    names = ["perproc", "directory", "copy_on_grow"]
    print("| k | " + " | ".join(f"{n} (per add)" for n in names) + " | copy_on_grow / perproc |")
    print("|---:|" + "---:|" * (len(names) + 1))
    per = {n: {k: median(group, n, str(k)) for k in ks} for n in names}
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


def registration():
    print("| processors replayed | perproc (2 components) | per processor | copy_on_grow (2 arrays) | copy_on_grow / perproc |")
    print("|---:|---:|---:|---:|---:|")
    for n in [64, 512, 2048]:
        ours = median("registration", "perproc", str(n))
        cow = median("registration", "copy_on_grow", str(n))
        if ours and cow:
            print(f"| {n} | {fmt(ours)} | {fmt(ours / n)} | {fmt(cow)} | {cow / ours:.1f}x |")


def pool():
    variants = ["tl_vec", "spin_mutex", "box", "heapless", "perproc_raw", "perproc_box", "perproc_local"]
    ours = ["perproc_raw", "perproc_box", "perproc_local"]
    print("ns per alloc+free pair (64-byte objects), criterion medians:")
    print()
    print("| threads | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    times = {}
    for threads in ["1 thread", "2 threads"]:
        times[threads] = {v: median(f"pool_{threads}", v) for v in variants}
        print(f"| {threads} | " + " | ".join(fmt(times[threads][v]) for v in variants) + " |")
    print()
    print("| ratio (target) | " + " | ".join(ours) + " |")
    print("|---|" + "---:|" * len(ours))
    rows = [("1 thread, / tl_vec (<= 2x)", "1 thread", "tl_vec"),
            ("1 thread, / box (<= 0.25x)", "1 thread", "box"),
            ("1 thread, / heapless", "1 thread", "heapless"),
            ("2 threads, / spin_mutex (<= 0.05x)", "2 threads", "spin_mutex"),
            ("2 threads, / tl_vec", "2 threads", "tl_vec"),
            ("2 threads, / heapless", "2 threads", "heapless")]
    for label, threads, base in rows:
        t = times[threads]
        print(f"| {label} | " + " | ".join(f"{t[v] / t[base]:.3f}x" for v in ours) + " |")


def queue():
    print("ns per operation (criterion medians; with 2 threads a second thread does the same on its own processor):")
    print()
    print("| benchmark | 1 thread | 2 threads | ratio 1 thread | ratio 2 threads | target |")
    print("|---|---:|---:|---:|---:|---|")
    rows = [("queue_pair", "spin_mutex_vecdeque", "spin_mutex_vecdeque", "pair, global `spin::Mutex<VecDeque>`", ""),
            ("queue_pair", "perproc", "spin_mutex_vecdeque", "pair, push + `pop`", "<= 0.5x"),
            ("queue_pair", "perproc_held_consumer", "spin_mutex_vecdeque", "pair, push + held `Consumer::pop`", "<= 0.5x"),
            ("queue_batch32", "spin_mutex_vecdeque", "spin_mutex_vecdeque", "batch of 32, global `spin::Mutex<VecDeque>`", ""),
            ("queue_batch32", "perproc", "spin_mutex_vecdeque", "batch of 32, perproc", ""),
            ("counter_add", "plain_per_thread", "plain_per_thread", "counter add, plain per-thread `u64` on the stack", ""),
            ("counter_add", "perproc", "plain_per_thread", "counter add, `PerCpuCounters::add`", "<= 1.5x"),
            ("counter_add", "perproc_local", "plain_per_thread", "counter add, `LocalCounters::add` (block looked up once)", "<= 1.5x"),
            ("counter_add", "plain_per_thread_heap", "plain_per_thread_heap", "counter add, plain per-thread `u64` off the stack", ""),
            ("counter_add", "perproc", "plain_per_thread_heap", "counter add, `PerCpuCounters::add` / off-stack", "<= 1.5x"),
            ("counter_add", "perproc_local", "plain_per_thread_heap", "counter add, `LocalCounters::add` / off-stack", "<= 1.5x")]
    for group, v, base, label, target in rows:
        t = [median(group, v, n) for n in ["1", "2"]]
        b = [median(group, base, n) for n in ["1", "2"]]
        ratios = [f"{x / y:.2f}x" if x and y else "-" for x, y in zip(t, b)]
        print(f"| {label} | {fmt(t[0])} | {fmt(t[1])} | {ratios[0]} | {ratios[1]} | {target} |")


if __name__ == "__main__":
    which = sys.argv[1:] or ["hot_path", "growth", "pool", "queue"]
    for i, w in enumerate(which):
        if i:
            print()
        {"hot_path": hot_path, "growth": growth, "pool": pool, "queue": queue}[w]()
