#!/usr/bin/env bash
# User-space instructions per `gregor serve` PUT, counted by callgrind: a figure that, unlike
# ops/s and CPU time on a shared 2-vCPU machine, does not move between runs by more than a few
# percent, so a change that saves a few microseconds per request can be seen (kernel time,
# where most of a PUT's CPU goes, is not counted).
#
#   cli/benches/put_instructions.sh [BINARY] [PUTS]
#
# BINARY defaults to target/release/gregor (build it with `cargo build --release -p gregor-cli`;
# not the test build, which has debug assertions on), PUTS to 2000. Needs `valgrind` and
# `python3` (Debian: apt-get install valgrind python3). One client, sequential PUTs of
# 100-byte values over one keep-alive connection, after 200 warm-up PUTs; the count covers
# every thread of the server from the first measured PUT to the last (the run loop applying
# the writes included), so background work that runs by the clock (commits, RocksDB flushes,
# the metrics upkeep), slowed ~50x under valgrind, adds a few percent.
set -euo pipefail
bin=${1:-target/release/gregor}
puts=${2:-2000}
bin=$(realpath "$bin")
for tool in valgrind callgrind_control python3 curl; do
    command -v "$tool" >/dev/null || { echo "put_instructions: needs $tool on PATH" >&2; exit 2; }
done
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
server=
cleanup() {
    if [[ -n $server ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$bin" serve --http "127.0.0.1:$port" --state-dir "$dir/state" >"$dir/server.log" 2>&1 &
server=$!
for _ in $(seq 1 180); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    sleep 1
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "put_instructions: the server did not become ready" >&2; exit 1; }

puts_client() {
    python3 - "$port" "$1" <<'EOF'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
value = b"x" * 100
for i in range(n):
    c.request("PUT", "/v1/stores/kv/keys/key-%05d" % (i % 10000), body=value)
    r = c.getresponse()
    r.read()
    if r.status != 204:
        sys.exit(f"PUT answered {r.status}")
EOF
}

puts_client 200
callgrind_control -z "$server" >/dev/null 2>&1
puts_client "$puts"
callgrind_control -d "$server" >/dev/null 2>&1
# The dump is written asynchronously by the profiled process.
for _ in $(seq 1 60); do
    [[ -s $dir/callgrind.out.1 ]] && grep -q '^summary:' "$dir/callgrind.out.1" && break
    sleep 1
done
total=$(awk '/^summary:/ {print $2}' "$dir/callgrind.out.1")
echo "$(basename "$bin"): $((total / puts)) user-space instructions per PUT ($puts PUTs, 1 client)"
