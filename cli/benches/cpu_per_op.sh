#!/usr/bin/env bash
# CPU time per operation of one `serve_vs_redis` cell, by process and, for the busiest
# server, by thread: where a target spends its CPU when the cell is CPU-bound (64 clients on
# this 2-vCPU machine), which ops/s alone does not say. The figures of docs/BENCHMARKS.md's
# "CPU per operation" tables come from it.
#
#   cli/benches/cpu_per_op.sh TARGET WORKLOAD CLIENTS [BENCH ARGS...]
#
# TARGET, WORKLOAD and CLIENTS select the cell as the bench's `--target`, `--workload` and
# `--clients` do (`gregor`, `Redis AOF`, `Redis default`, `HTTP`; `put`, `get`, `mixed`);
# further arguments go to the bench (`--job FILE`, `--partitions N`). Needs `python3` and
# what the bench needs (`redis-server`). The cell runs 9 s; user and system time of every
# process the bench started, and of the bench itself (the load generator), are read from
# /proc over 4 s in the middle of its first round and divided by the operations of those
# 4 s (the round's ops/s x 4). The server's threads are summed by name (`gregor-http` are the
# HTTP workers, `gregor-kv-write-N` a partition's group-commit writer, `gregor` the run
# loop). Figures move by ±15% between runs on a shared machine: compare alternated runs.
set -euo pipefail
if [[ $# -lt 3 ]]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
target=$1 workload=$2 clients=$3
shift 3
command -v python3 >/dev/null || { echo "cpu_per_op: needs python3 on PATH" >&2; exit 2; }
bench=$(cargo bench -p gregor-cli --bench serve_vs_redis --no-run 2>&1 |
    grep -o 'target/release/deps/serve_vs_redis-[0-9a-f]*' | tail -1)
[[ -x $bench ]] || { echo "cpu_per_op: could not build the serve_vs_redis bench" >&2; exit 1; }
out=$(mktemp)
snap=$(mktemp -d)
trap 'rm -rf "$out" "$snap"' EXIT

"$bench" --target "$target" --workload "$workload" --clients "$clients" --secs 9 "$@" \
    >"$out" 2>&1 &
bench_pid=$!
# The cell starts once the generator's client threads exist (the targets are started and
# preloaded before).
for _ in $(seq 1 1200); do
    threads=$(ls "/proc/$bench_pid/task" 2>/dev/null | wc -l)
    [[ $threads -gt $((clients / 2 + 2)) ]] && break
    kill -0 "$bench_pid" 2>/dev/null || { cat "$out" >&2; exit 1; }
    sleep 0.1
done
sleep 1.5
take() {
    for p in "$bench_pid" $(pgrep -P "$bench_pid"); do
        for t in /proc/"$p"/task/*; do
            # pid tid comm(thread) comm(process) utime stime
            echo "$p ${t##*/} $(tr ' ' _ <"$t/comm") $(tr ' ' _ <"/proc/$p/comm") \
                $(awk '{print $14, $15}' "$t/stat")"
        done 2>/dev/null
    done
}
take >"$snap/0"
sleep 4
take >"$snap/1"
wait "$bench_pid" || { cat "$out" >&2; exit 1; }
ops=$(grep -o 'round 0: [^:]*: [0-9]* ops/s' "$out" | grep -o '[0-9]* ops/s' | cut -d' ' -f1)
[[ -n $ops ]] || { cat "$out" >&2; exit 1; }
grep 'round 0' "$out"
python3 - "$ops" "$bench_pid" "$snap" <<'EOF'
import collections, os, sys
ops, bench, snap = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tick, window = os.sysconf("SC_CLK_TCK"), 4
per_op = lambda t: t / tick / (ops * window) * 1e6
before = {}
for line in open(f"{snap}/0"):
    p, tid, _, _, u, s = line.split()
    before[tid] = (int(u), int(s))
procs = collections.defaultdict(lambda: [0, 0])
threads = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
names = {}
for line in open(f"{snap}/1"):
    p, tid, comm, pcomm, u, s = line.split()
    u0, s0 = before.get(tid, (0, 0))
    du, ds = int(u) - u0, int(s) - s0
    names[p] = "load generator (the bench)" if p == bench else f"{pcomm} (pid {p})"
    procs[p][0] += du
    procs[p][1] += ds
    # Numbered threads of one kind are summed (gregor-kv-write-0, -1, ...).
    kind = comm.rstrip("0123456789-") if comm.startswith("gregor-kv-write") else comm
    threads[p][kind][0] += du
    threads[p][kind][1] += ds
print(f"{ops} ops/s; CPU per operation over {window} s (user + system = total, µs):")
for p, (u, s) in sorted(procs.items(), key=lambda x: -sum(x[1])):
    if u + s:
        print(f"  {names[p]:40s} {per_op(u):6.1f} + {per_op(s):6.1f} = {per_op(u + s):6.1f}")
servers = [p for p in procs if p != bench]
if servers:
    busiest = max(servers, key=lambda p: sum(procs[p]))
    print(f"by thread of {names[busiest]}:")
    for kind, (u, s) in sorted(threads[busiest].items(), key=lambda x: -sum(x[1])):
        if u + s:
            print(f"  {kind:40s} {per_op(u):6.1f} + {per_op(s):6.1f} = {per_op(u + s):6.1f}")
EOF
