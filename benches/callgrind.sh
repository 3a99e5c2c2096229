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

# The k-th add: instructions and simulated cache misses per add, collected only
# inside kth_adds. The simulated last level is 512 KiB, 8-way (one core's L2
# on this machine): a miss there is a trip to L3 or memory.
cargo build --release --quiet --example growth_callgrind
grow=target/release/examples/growth_callgrind
rounds=4
adds=$((rounds * 16))
printf '\n| variant | k | instructions per add | simulated LL misses per add |\n|---|---:|---:|---:|\n'
for variant in perproc directory copy_on_grow; do
  for k in 1 64 256 512 1024 2048; do
    out=$(mktemp)
    valgrind --tool=callgrind --cache-sim=yes --D1=65536,8,64 --LL=524288,8,64 \
      --toggle-collect='*kth_adds*' --callgrind-out-file="$out" "$grow" "$variant" "$k" "$rounds" >/dev/null 2>&1
    # Events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
    read -r ir ilmr dlmr dlmw < <(sed -n 's/^summary: //p' "$out" | awk '{ print $1, $7, $8, $9 }')
    rm -f "$out"
    awk -v v="$variant" -v k="$k" -v ir="$ir" -v m=$((ilmr + dlmr + dlmw)) -v n="$adds" \
      'BEGIN { printf "| %s | %d | %.0f | %.1f |\n", v, k, ir / n, m / n }'
  done
done
