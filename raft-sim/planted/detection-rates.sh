#!/usr/bin/env bash
# Detection rates of planted raft-core bugs: for each patch in this directory, a
# temporary copy of the workspace gets the patch, the release simulator is built from
# that copy, and N seeds run once per nemesis set; the table counts the failing seeds.
# The working tree is never modified.
#
#   raft-sim/planted/detection-rates.sh [N] [START]
#
# Environment:
#   PATCHES        patches to measure (default: every *.patch here), plus the row
#                  "unmodified" unless NO_CLEAN=1
#   MODES          nemesis sets, passed as --nemeses MODE (default: "base checks
#                  all": the random nemesis alone, with the targeted nemeses' checks,
#                  with the targeted nemeses and their checks); the mode "default"
#                  passes no flag, and "in-order" passes --in-order (the state
#                  machine's jobs done at once, in order: the model before the
#                  simulator ran the Node driver's concurrency)
#   JOBS           simulator threads (default 1)
#   CARGO_TARGET_DIR  where the planted builds go: $CARGO_TARGET_DIR/planted
#                  (default: a directory under the system temp directory)
#   WAIT_WHILE     a file: while it exists, wait before each build or run
set -euo pipefail

N=${1:-3000}
START=${2:-0}
JOBS=${JOBS:-1}
MODES=${MODES:-"base checks all"}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/raft-sim-planted-target}/planted
work=$(mktemp -d "${TMPDIR:-/tmp}/raft-sim-planted.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [[ -z ${PATCHES:-} ]]; then
    PATCHES=$(cd "$here" && ls ./*.patch | sed 's|^\./||')
fi
rows=()
[[ ${NO_CLEAN:-0} == 1 ]] || rows+=(unmodified)
for p in $PATCHES; do rows+=("$p"); done

wait_quiet() {
    if [[ -n ${WAIT_WHILE:-} ]]; then
        while [[ -e $WAIT_WHILE ]]; do sleep 20; done
    fi
}

# One copy of the working tree as it is now (tracked and new files, without build
# output): every row is built from it, whatever changes in the tree meanwhile.
mkdir -p "$work/tree"
(cd "$root" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/tree")

declare -A failed
for row in "${rows[@]}"; do
    copy="$work/ws"
    rm -rf "$copy"
    cp -a "$work/tree" "$copy"
    if [[ $row != unmodified ]]; then
        (cd "$copy" && patch -s -p1 <"$here/$row")
    fi
    wait_quiet
    echo "== $row: building" >&2
    (cd "$copy" && CARGO_TARGET_DIR="$target" cargo build -q --release -p raft-sim)
    for mode in $MODES; do
        wait_quiet
        case $mode in
            default) flag=() ;;
            in-order) flag=(--in-order) ;;
            *) flag=(--nemeses "$mode") ;;
        esac
        log="$work/$row.$mode.log"
        "$target/release/raft-sim" --seeds "$N" --start "$START" --jobs "$JOBS" "${flag[@]}" >"$log" 2>&1 || true
        count=$(sed -n 's/^[0-9]* passed, \([0-9]*\) failed.*/\1/p' "$log" | tail -1)
        failed[$row.$mode]=${count:-?}
        echo "== $row, nemeses $mode: ${count:-?} of $N seeds failed" >&2
        grep -m3 'FAILED' "$log" >&2 || true
    done
done

printf '\nseeds failing of %s (seeds %s..%s), by --nemeses\n' "$N" "$START" "$((START + N))"
printf '%-28s' "planted bug"
for mode in $MODES; do printf ' %10s' "$mode"; done
printf '\n'
for row in "${rows[@]}"; do
    printf '%-28s' "${row%.patch}"
    for mode in $MODES; do printf ' %10s' "${failed[$row.$mode]}"; done
    printf '\n'
done
