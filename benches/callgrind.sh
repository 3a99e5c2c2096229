#!/usr/bin/env bash
# Instructions per hot-path read, counted by callgrind (exact and repeatable,
# unlike time on a shared machine). Each variant of examples/hot_path_callgrind
# runs at two iteration counts; the difference of the totals over the
# difference of the counts is the cost of one read (loop included), with all
# setup cancelled out. "beyond index" subtracts the index_only loop: the
# platform's index lookup and the loop itself.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --example hot_path_callgrind
bin=target/release/examples/hot_path_callgrind
small=200000
large=1200000

total() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '| variant | instructions per read | beyond the index lookup |\n|---|---:|---:|\n'
index=""
for variant in index_only fixed_array perproc directory copy_on_grow thread_local spin_rwlock_vec; do
  a=$(total "$variant" "$small")
  b=$(total "$variant" "$large")
  per=$(awk -v a="$a" -v b="$b" -v n=$((large - small)) 'BEGIN { printf "%.2f", (b - a) / n }')
  [ -z "$index" ] && index=$per
  beyond=$(awk -v p="$per" -v i="$index" 'BEGIN { printf "%.2f", p - i }')
  printf '| %s | %s | %s |\n' "$variant" "$per" "$beyond"
done
