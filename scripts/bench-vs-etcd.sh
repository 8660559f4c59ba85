#!/usr/bin/env bash
# The end-to-end benchmark: the same closed-loop matrix against a fresh 3-node
# raft-server cluster and a fresh 3-member etcd cluster, back to back, on 127.0.0.1,
# with default durability (fsync on) for both. Writes results.jsonl, table.md and
# machine.txt to $OUT and prints the table.
#
#   scripts/bench-vs-etcd.sh                  # the whole matrix, both systems (~10 min)
#   SYSTEMS=raft scripts/bench-vs-etcd.sh     # only ours
#   QUICK=1 scripts/bench-vs-etcd.sh          # a smoke run: small totals
#
# Needs etcd (Debian: etcd-server etcd-client) and protoc (protobuf-compiler, to build
# etcd-bench); installed with apt-get when missing and running as root. The etcd tools
# live in $ETCD_TOOLS (default ../shared/tools): etcd-cluster/ starts and stops etcd,
# etcd-bench/ drives it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TARGET=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
OUT=${OUT:-$TARGET/bench-e2e/$(date -u +%Y%m%d-%H%M%S)}
WORK=${WORK:-$OUT/work}
ETCD_TOOLS=${ETCD_TOOLS:-$ROOT/../shared/tools}
SYSTEMS=${SYSTEMS:-"raft etcd"}
QUICK=${QUICK:-0}
RAFT_PORT=${RAFT_PORT:-7601}
RAFT_METRICS_PORT=${RAFT_METRICS_PORT:-9601}

log() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

# What this script must leave as it found it: the repository's status and the shared
# tools folder (compared at the end; everything it writes goes to $OUT and $TARGET).
untouched() {
    git -C "$ROOT" status --porcelain
    [[ -d $ETCD_TOOLS ]] && find "$ETCD_TOOLS" -printf '%p %s %T@ %m\n' | sort
    return 0
}
UNTOUCHED_BEFORE=$(untouched)

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
[[ " $SYSTEMS " == *" etcd "* ]] && ! command -v etcd >/dev/null && need_pkgs+=(etcd-server etcd-client)
[[ " $SYSTEMS " == *" etcd "* ]] && ! command -v protoc >/dev/null && need_pkgs+=(protobuf-compiler)
if ((${#need_pkgs[@]})); then
    if [[ $(id -u) == 0 ]]; then
        log "installing ${need_pkgs[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null
    else
        echo "missing: ${need_pkgs[*]} (apt-get install ${need_pkgs[*]})" >&2
        exit 1
    fi
fi

log "building (release)"
cargo build --release --locked -q -p quorum-raft-server
RAFT=$TARGET/release/raft-server
if [[ " $SYSTEMS " == *" etcd "* ]]; then
    # Built from a copy: the shared tools folder is only read (cargo would write a
    # Cargo.lock next to the manifest).
    rm -rf "$TARGET/etcd-bench/src-copy"
    mkdir -p "$TARGET/etcd-bench"
    cp -r "$ETCD_TOOLS/etcd-bench" "$TARGET/etcd-bench/src-copy"
    chmod -R u+w "$TARGET/etcd-bench/src-copy"
    # Its own workspace, not a member of ours.
    grep -q '^\[workspace\]' "$TARGET/etcd-bench/src-copy/Cargo.toml" ||
        printf '\n[workspace]\n' >> "$TARGET/etcd-bench/src-copy/Cargo.toml"
    cargo build --release -q --manifest-path "$TARGET/etcd-bench/src-copy/Cargo.toml" \
        --target-dir "$TARGET/etcd-bench"
    ETCD_BENCH=$TARGET/etcd-bench/release/etcd-bench
fi

mkdir -p "$OUT" "$WORK"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

# ---------------------------------------------------------------- the machine
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "filesystem of the data: $(df -T "$WORK" | awk 'NR==2 {print $2 " on " $1}')"
    # fsync latency: 4 KiB writes, each synced (oflag=dsync), on the data's filesystem.
    dd_out=$(dd if=/dev/zero of="$WORK/dd-test" bs=4k count=2000 oflag=dsync 2>&1 | tail -1)
    rm -f "$WORK/dd-test"
    secs=$(echo "$dd_out" | sed -E 's/.* copied, ([0-9.]+) s.*/\1/')
    echo "fsync: dd bs=4k count=2000 oflag=dsync took ${secs} s = $(python3 -c "print(f'{$secs/2000*1000:.3f}')") ms per synced write"
    echo "raft-server: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo '+changes'), release build"
    command -v etcd >/dev/null && echo "etcd: $(etcd --version 2>/dev/null | head -1)"
    echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

# ---------------------------------------------------------------- the matrix
# name | workload flags (shared by both tools)
COMMON="--key-size 16 --key-space 100000 --time-limit 30"
if [[ $QUICK == 1 ]]; then S=10; else S=1; fi
ROWS=(
    "put, 1 client|--workload put --clients 1 --total $((3000 / S)) --warmup-ops 200 --val-size 128"
    "put, 16 clients|--workload put --clients 16 --total $((20000 / S)) --warmup-ops 1000 --val-size 128"
    "put, 64 clients|--workload put --clients 64 --total $((50000 / S)) --warmup-ops 2000 --val-size 128"
    "put, 256 clients|--workload put --clients 256 --total $((100000 / S)) --warmup-ops 4000 --val-size 128"
    "linearizable get, 64 clients|--workload get --clients 64 --total $((100000 / S)) --warmup-ops 2000 --val-size 128"
    "mixed 90/10, 64 clients|--workload mixed --read-pct 90 --clients 64 --total $((100000 / S)) --warmup-ops 2000 --val-size 128"
    "put, 256 clients, 1 KiB values|--workload put --clients 256 --total $((50000 / S)) --warmup-ops 4000 --val-size 1024"
    "put, 256 clients, 2 CPU hogs|--workload put --clients 256 --total $((50000 / S)) --warmup-ops 4000 --val-size 128"
)
# Run after the matrix, raft-server restarted with `lease_reads = true`. etcd has no
# lease-read option (its server always uses ReadIndex), so its column in this row is
# its linearizable get again.
LEASE_ROWS=(
    "lease get, 64 clients|--workload get --clients 64 --total $((100000 / S)) --warmup-ops 2000 --val-size 128"
)
MATRIX_ROWS=("${ROWS[@]}")

# Waits (at most 30 s) until the machine is quiet: under 20% of one core busy over 1 s.
wait_quiet() {
    for _ in $(seq 1 30); do
        read -r _ a b c d e f g _ < /proc/stat
        sleep 1
        read -r _ a2 b2 c2 d2 e2 f2 g2 _ < /proc/stat
        busy=$(((a2 + b2 + c2 + f2 + g2) - (a + b + c + f + g)))
        idle=$(((d2 + e2) - (d + e)))
        total=$((busy + idle))
        # busy share of ONE core, in percent
        pct=$((busy * 100 * $(nproc) / (total > 0 ? total : 1)))
        ((pct < 20)) && return 0
    done
    echo "warning: the machine did not become quiet (last: ${pct}% of a core busy)" >&2
}

run_rows() { # system tool endpoints-args pid-file
    local system=$1 tool=$2 endpoints=$3 pids=$4
    for row in "${ROWS[@]}"; do
        local name=${row%%|*} flags=${row#*|}
        wait_quiet
        echo "--- $system: $name"
        # A row named "... CPU hogs" runs with that many busy loops beside it.
        local hogs=()
        if [[ $name =~ ([0-9]+)\ CPU\ hogs ]]; then
            for _ in $(seq 1 "${BASH_REMATCH[1]}"); do
                (while :; do :; done) &
                hogs+=($!)
            done
        fi
        # shellcheck disable=SC2086
        out=$("$tool" $endpoints $flags $COMMON --pid-file "$pids" --label "$name" 2>&1) || true
        for h in "${hogs[@]}"; do kill "$h" 2>/dev/null || true; done
        grep -q '^RESULT_JSON' <<< "$out" || {
            echo "$out" >&2
            echo "$system: '$name' failed" >&2
            exit 1
        }
        echo "$out" | grep -v '^RESULT_JSON'
        echo "$out" | sed -n 's/^RESULT_JSON //p' |
            python3 -c "import json,sys; r=json.load(sys.stdin); r['system']='$system'; print(json.dumps(r))" >> "$RESULTS"
    done
}

# ---------------------------------------------------------------- raft-server
if [[ " $SYSTEMS " == *" raft "* ]]; then
    log "raft-server: a fresh 3-node cluster on 127.0.0.1:$RAFT_PORT-$((RAFT_PORT + 2))"
    DIR=$WORK/raft
    rm -rf "$DIR"
    # Certificates and configurations (dev --check starts and stops the nodes once).
    "$RAFT" dev --check --dir "$DIR" --port "$RAFT_PORT" --metrics-port "$RAFT_METRICS_PORT" >/dev/null
    sleep 1
    rm -rf "$DIR"/node1 "$DIR"/node2 "$DIR"/node3
    : > "$DIR/cluster.pids"
    raft_pids=()
    stop_raft() {
        for p in "${raft_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        for p in "${raft_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    }
    trap stop_raft EXIT
    start_raft() {
        raft_pids=()
        : > "$DIR/cluster.pids"
        for id in 1 2 3; do
            "$RAFT" run --config "$DIR/node$id.toml" >>"$DIR/node$id.log" 2>&1 &
            raft_pids+=($!)
            echo $! >> "$DIR/cluster.pids"
        done
        for _ in $(seq 1 100); do
            "$RAFT" cluster --client-config "$DIR/client.toml" status 2>/dev/null | grep -q ' Leader ' && break
            sleep 0.2
        done
        # Count leader changes only from a settled cluster: every node names the same
        # leader and has counted it (raft_leader_changes_total is updated every 0.5 s),
        # so the start-up election is not part of any row.
        for _ in $(seq 1 100); do
            local ids="" counted=0 page
            for i in 0 1 2; do
                page=$(curl -s --max-time 2 "127.0.0.1:$((RAFT_METRICS_PORT + i))/metrics")
                ids+=" $(awk '/^raft_leader_id/ {print $2}' <<<"$page")"
                awk 'BEGIN {no = 1} /^raft_leader_changes_total/ {no = !($2 >= 1)} END {exit no}' <<<"$page" && counted=$((counted + 1))
            done
            # shellcheck disable=SC2086
            set -- $ids
            [ $# -eq 3 ] && [ "$1" != 0 ] && [ "$1" = "$2" ] && [ "$2" = "$3" ] && [ "$counted" -eq 3 ] && break
            sleep 0.2
        done
        "$RAFT" cluster --client-config "$DIR/client.toml" status
    }
    start_raft
    R=(--client-config "$DIR/client.toml")
    echo "--- raft: populate 100,000 keys"
    "$RAFT" bench "${R[@]}" --workload populate --clients 64 --key-size 16 --key-space 100000 \
        --time-limit 120 --pid-file "$DIR/cluster.pids" | grep -v '^RESULT_JSON'
    leader_changes() {
        local sum=0 v
        for i in 0 1 2; do
            v=$(curl -s --max-time 2 "127.0.0.1:$((RAFT_METRICS_PORT + i))/metrics" | awk '/^raft_leader_changes_total/ {print $2}')
            v=${v%.*}
            sum=$((sum + ${v:-0}))
        done
        echo "$sum"
    }
    changes_before=$(leader_changes)
    ROWS=("${MATRIX_ROWS[@]}")
    run_rows raft "$RAFT" "bench ${R[*]}" "$DIR/cluster.pids"
    echo "raft-server: leader changes seen by the nodes during the whole matrix: $(($(leader_changes) - changes_before))" | tee "$OUT/raft-leader-changes.txt"
    # Each node's metrics after the matrix (log write latencies, leader changes), to
    # tell a slow disk from a busy CPU when a leader was lost.
    for i in 0 1 2; do
        curl -s --max-time 2 "127.0.0.1:$((RAFT_METRICS_PORT + i))/metrics" > "$OUT/raft-metrics-node$((i + 1)).txt" || true
    done
    stop_raft
    log "raft-server: the same cluster restarted with lease_reads = true"
    for id in 1 2 3; do
        f=$DIR/node$id.toml
        if grep -q '^lease_reads' "$f"; then
            sed -i 's/^lease_reads = .*/lease_reads = true/' "$f"
        else
            echo "lease_reads = true" >> "$f"
        fi
    done
    start_raft
    changes_before=$(leader_changes)
    ROWS=("${LEASE_ROWS[@]}")
    run_rows raft "$RAFT" "bench ${R[*]}" "$DIR/cluster.pids"
    echo "raft-server: leader changes during the lease rows: $(($(leader_changes) - changes_before))" | tee -a "$OUT/raft-leader-changes.txt"
    stop_raft
    trap - EXIT
fi

# ---------------------------------------------------------------- etcd
if [[ " $SYSTEMS " == *" etcd "* ]]; then
    log "etcd: a fresh 3-member cluster (etcd-cluster/start-cluster.sh --fresh)"
    export ETCD_ANCHOR_DIR=$WORK/etcd
    mkdir -p "$ETCD_ANCHOR_DIR"
    trap '"$ETCD_TOOLS/etcd-cluster/stop-cluster.sh" >/dev/null' EXIT
    "$ETCD_TOOLS/etcd-cluster/start-cluster.sh" --fresh
    EP=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
    echo "--- etcd: populate 100,000 keys"
    "$ETCD_BENCH" --endpoints "$EP" --workload populate --clients 64 --key-size 16 --key-space 100000 \
        --time-limit 300 --pid-file "$ETCD_ANCHOR_DIR/cluster.pids" | grep -v '^RESULT_JSON'
    ROWS=("${MATRIX_ROWS[@]}" "${LEASE_ROWS[@]}")
    run_rows etcd "$ETCD_BENCH" "--endpoints $EP" "$ETCD_ANCHOR_DIR/cluster.pids"
    "$ETCD_TOOLS/etcd-cluster/stop-cluster.sh" >/dev/null
    trap - EXIT
fi

# ---------------------------------------------------------------- the table
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
log "results in $OUT"
python3 - "$RESULTS" "$OUT/table.md" <<'PY'
import json, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["label"] not in rows:
        rows[r["label"]] = {}
        order.append(r["label"])
    rows[r["label"]][r["system"]] = r

def cell(r):
    if r is None:
        return "-"
    lat = r["latency"] or {}
    s = f'{r["ops_per_s"]:,.0f} ops/s, p50 {lat.get("p50_ms", 0):.2f} ms, p99 {lat.get("p99_ms", 0):.2f} ms'
    if "1 KiB" in r["label"]:
        s += f' ({r["ops_per_s"] * (r["key_size"] + r["val_size"]) / 1e6:.1f} MB/s)'
    if r.get("errors"):
        s += f' ({r["errors"]} errors)'
    return s

out = ["| row | raft-server | etcd | ratio |", "|---|---|---|---|"]
for label in order:
    ours, etcd = rows[label].get("raft"), rows[label].get("etcd")
    ratio = f'{ours["ops_per_s"] / etcd["ops_per_s"]:.1f}x' if ours and etcd and etcd["ops_per_s"] else "-"
    out.append(f"| {label} | {cell(ours)} | {cell(etcd)} | {ratio} |")
text = "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
cat "$OUT/machine.txt"
if [[ "$(untouched)" != "$UNTOUCHED_BEFORE" ]]; then
    echo "error: the run changed the repository's status or $ETCD_TOOLS:" >&2
    diff <(echo "$UNTOUCHED_BEFORE") <(untouched) >&2 || true
    exit 1
fi
