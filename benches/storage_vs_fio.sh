#!/usr/bin/env bash
# Side by side, in one run, alternating: the store (glommio DmaFile, O_DIRECT) against fio
# (ioengine=io_uring, direct=1) on the same file system, at queue depth 1, with one sync per
# write for writes. Prints each figure and the ratio store / fio.
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
done
rm -rf "$DIR"
