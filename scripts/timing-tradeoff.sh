#!/usr/bin/env bash
# The timing trade-off behind raft-server's defaults: for several election timeouts,
# how fast a killed leader is replaced (median of 5 kills) and whether a loaded machine
# causes leader changes (scripts/overload-test.sh with 2 and 6 CPU hogs, 40 s each).
# About 10 minutes; release build; writes only under target/.
#
#   scripts/timing-tradeoff.sh
#   SETTINGS="10:1 30:3" scripts/timing-tradeoff.sh     # election_ticks:heartbeat_ticks
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SETTINGS=${SETTINGS:-"10:1 30:3 100:10"}
TRIALS=${TRIALS:-5}
cargo build --release --locked -q -p quorum-raft-server
B=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")/release/raft-server

failover() { # election heartbeat -> the median ms from kill -9 of the leader to a new leader
    local et=$1 ht=$2 dir=$ROOT/target/timing/failover
    rm -rf "$dir"
    mkdir -p "$dir"
    (
        cd "$dir"
        "$B" dev --check --dir ./raft-dev --port 7801 --metrics-port 9801 >/dev/null
        rm -rf raft-dev/node1 raft-dev/node2 raft-dev/node3
        sed -i -e "s/^election_ticks = .*/election_ticks = $et/" -e "s/^heartbeat_ticks = .*/heartbeat_ticks = $ht/" raft-dev/node*.toml
        declare -A pid
        start() { "$B" run --config "raft-dev/node$1.toml" >> "node$1.log" 2>&1 & pid[$1]=$!; }
        stop_all() { for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done; }
        trap stop_all EXIT
        for i in 1 2 3; do start "$i"; done
        leader() { for i in 1 2 3; do curl -s --max-time 0.2 "127.0.0.1:$((9800 + i))/health" | grep -q '"role":"Leader"' && echo "$i" && return; done; }
        times=()
        for _ in $(seq 1 "$TRIALS"); do
            L=""
            for _ in $(seq 1 200); do L=$(leader); [[ -n $L ]] && break; sleep 0.05; done
            sleep 1
            t0=$(date +%s%N)
            kill -9 "${pid[$L]}"
            for _ in $(seq 1 2000); do
                N=""
                for i in 1 2 3; do
                    [[ $i == "$L" ]] && continue
                    curl -s --max-time 0.2 "127.0.0.1:$((9800 + i))/health" | grep -q '"role":"Leader"' && N=$i
                done
                [[ -n $N ]] && break
                sleep 0.005
            done
            times+=($((($(date +%s%N) - t0) / 1000000)))
            start "$L"
            sleep 2
        done
        median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        echo "$median ms (trials: ${times[*]} ms)"
    )
}

mkdir -p "$ROOT/target/timing"
printf '| election / heartbeat ticks | leader killed: new leader after (median) | 2 CPU hogs | 6 CPU hogs |\n|---|---|---|---|\n' > "$ROOT/target/timing/table.md"
for s in $SETTINGS; do
    et=${s%%:*}
    ht=${s##*:}
    fo=$(failover "$et" "$ht")
    row="| $et / $ht | $fo |"
    for hogs in 2 6; do
        line=$(ELECTION_TICKS=$et HEARTBEAT_TICKS=$ht HOGS=$hogs SECONDS_LOAD=40 OUT="$ROOT/target/timing/overload" \
            scripts/overload-test.sh 2>/dev/null | grep '^overload:' || true)
        row+=" ${line#overload: } |"
    done
    echo "$row" | tee -a "$ROOT/target/timing/table.md"
done
echo
cat "$ROOT/target/timing/table.md"
