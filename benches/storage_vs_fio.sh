#!/usr/bin/env bash
# Side by side, in one run, alternating: the store (glommio DmaFile, O_DIRECT) against fio
# (ioengine=io_uring, direct=1) on the same file system, at queue depth 1, with one sync per
# write for writes. Prints each figure, then min/median/max of each and of the ratio store / fio
# as a Markdown table.
#
#   bash benches/storage_vs_fio.sh [dir on the disk to test] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/work/floe-bench}
ROUNDS=${2:-3}
command -v fio >/dev/null || apt-get install -y fio >/dev/null
cargo build --release -q -p floe-storage --example store_bench
BIN=target/release/examples/store_bench
mkdir -p "$DIR"
fio_bw() { # prints MB/s (and IOPS) from fio's JSON for the given direction
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0][sys.argv[1]]; print("%.1f MB/s, %.0f IOPS" % (j["bw_bytes"] / 1e6, j["iops"]))' "$1"
}
run_fio() { fio --output-format=json --name=job --filename="$DIR/fio.dat" --ioengine=io_uring --direct=1 --iodepth=1 "$@"; }
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    rm -rf "$DIR/store" "$DIR/fio.dat"
    echo "1 MiB sequential writes, sync each (512 MiB):"
    echo "  fio:   $(run_fio --rw=write --bs=1M --size=512M --fdatasync=1 | fio_bw write)"
    echo "  $($BIN "$DIR/store" write 1048576 512 1)"
    echo "1 MiB random cold reads (512 MiB, 1024 reads):"
    echo "  fio:   $(run_fio --rw=randread --bs=1M --size=512M --io_size=1G | fio_bw read)"
    echo "  $($BIN "$DIR/store" read 1048576 512 1024)"
    rm -rf "$DIR/store"
    echo "4 KiB random cold reads (20000 slivers, 20000 reads):"
    $BIN "$DIR/store" write 4096 20000 1000 >/dev/null
    echo "  fio:   $(run_fio --rw=randread --bs=4k --size=80M --io_size=80M | fio_bw read)"
    echo "  $($BIN "$DIR/store" read 4096 20000 20000)"
done | tee "$LOG"
rm -rf "$DIR"
python3 - "$LOG" "$ROUNDS" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
cases = [("1 MiB sequential writes, sync each", "MB/s", r"fio:\s+([0-9.]+) MB/s", r"store write: ([0-9.]+) MB/s"),
         ("1 MiB random cold reads, QD1", "MB/s", r"fio:\s+([0-9.]+) MB/s", r"store read: ([0-9.]+) MB/s"),
         ("4 KiB random cold reads, QD1", "reads/s", r"fio:\s+[0-9.]+ MB/s, ([0-9]+) IOPS", r"store read: [0-9.]+ MB/s, ([0-9]+) reads/s")]
blocks = re.split(r"^== round \d+$", text, flags=re.M)[1:]
def mmm(v, f="{:.1f}"):
    return " / ".join(f.format(x) for x in (min(v), statistics.median(v), max(v)))
print(f"\n{sys.argv[2]} rounds, queue depth 1, min / median / max\n")
print("| case | unit | fio | floe store | store / fio |")
print("|---|---|---|---|---|")
for i, (name, unit, fio_re, store_re) in enumerate(cases):
    parts = [re.split(r"^(?=1 MiB|4 KiB)", b, flags=re.M)[1 + i] for b in blocks]
    fio = [float(re.search(fio_re, p).group(1)) for p in parts]
    store = [float(re.search(store_re, p).group(1)) for p in parts]
    ratio = [s / f for s, f in zip(store, fio)]
    print(f"| {name} | {unit} | {mmm(fio)} | {mmm(store)} | {mmm(ratio, '{:.2f}')} |")
PY
