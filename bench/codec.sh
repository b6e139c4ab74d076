#!/bin/sh
# Codec micro-benchmark (issue 3): wall-clock throughput (median of runs) and callgrind
# instructions per frame for the yamux + WebSocket data path. Prints a table.
#   BENCH_BUILD=build/bench bench/codec.sh
set -eu
B=${BENCH_BUILD:-build/bench}/codec_bench
RUNS=${CODEC_RUNS:-5}
CPU=${CODEC_CPU:-1}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# name dir size frames(wall) frames(callgrind)
cases="16k-up up 16384 100000 2000
16k-down down 16384 100000 2000
64B-up up 64 2000000 20000
64B-down down 64 2000000 20000"

printf '%-9s %-5s %7s %12s %12s %12s %14s\n' case dir size 'MB/s' 'Mframes/s' 'ns/frame' 'instr/frame'
echo "$cases" | while read -r name dir size frames cgframes; do
	taskset -c "$CPU" "$B" --dir "$dir" --size "$size" --frames "$frames" --runs "$RUNS" \
		>"$out/$name.txt"
	med=$(grep '^median' "$out/$name.txt")
	mbs=$(echo "$med" | awk '{print $4}')
	mfs=$(echo "$med" | awk '{print $6}')
	nsf=$(echo "$med" | awk '{print $8}')
	if command -v valgrind >/dev/null 2>&1; then
		valgrind --tool=callgrind --toggle-collect=pump_frames \
			--callgrind-out-file="$out/$name.cg" "$B" --dir "$dir" --size "$size" \
			--frames "$cgframes" --runs 1 >/dev/null 2>"$out/$name.vg"
		ir=$(sed -n 's/^summary: //p' "$out/$name.cg")
		ipf=$(awk -v ir="$ir" -v f="$cgframes" 'BEGIN{printf "%.0f", ir / f}')
	else
		ipf=n/a
	fi
	printf '%-9s %-5s %7s %12s %12s %12s %14s\n' "$name" "$dir" "$size" "$mbs" "$mfs" "$nsf" "$ipf"
done
