#!/usr/bin/env bash
# make test's runner: the suites in lanes side by side, the suites of a lane one after another.
#
#   scripts/test_lanes.sh "sqlite mariadb" "postgres pgbouncer"
#
# Each suite is `make test-<suite>` with its output in test-artifacts/logs/<suite>.log (every suite
# starts its own servers on free ports in temp dirs, so lanes share no server). At the end: one
# line per suite (its pytest summary, or what skipped it) and, for every suite that failed, its
# whole log. The exit status is 1 if any suite failed (the others of its lane still run).
set -uo pipefail
cd "$(dirname "$0")/.."

make_cmd=${MAKE:-make}
logs=test-artifacts/logs
mkdir -p "$logs"

run_lane() {
    local suite start rc
    for suite in $1; do
        start=$(date +%s)
        $make_cmd --no-print-directory "test-$suite" >"$logs/$suite.log" 2>&1
        rc=$?
        echo "$rc $(( $(date +%s) - start ))" >"$logs/$suite.status"
        echo "make test: $suite finished after $(( $(date +%s) - start ))s, exit $rc"
    done
}

suites=()
pids=()
set -m  # each lane in its own process group, to be interrupted as a whole
for lane in "$@"; do
    for suite in $lane; do
        suites+=("$suite")
        rm -f "$logs/$suite.status"
    done
    run_lane "$lane" &
    pids+=($!)
    echo "make test: lane '$lane' started (logs: $logs/<suite>.log)"
done

# Ctrl-C or a CI timeout: interrupt the lanes as Ctrl-C would (pytest then stops its servers).
stop_lanes() {
    local pid
    for pid in "${pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null; done
    wait
    exit 130
}
trap stop_lanes INT TERM
for pid in "${pids[@]}"; do wait "$pid"; done
trap - INT TERM
set +m

summary() {  # the suite's last pytest summary line, else its SKIPPED/ERROR line, else its last line
    local log=$1 line
    line=$(grep -E '(passed|failed|errors?|skipped|deselected|no tests ran).* in [0-9.]+s' "$log" | tail -n 1)
    [ -n "$line" ] || line=$(grep -E '^(SKIPPED|ERROR):' "$log" | tail -n 1)
    [ -n "$line" ] || line=$(tail -n 1 "$log")
    echo "$line"
}

failed=()
echo "make test: summary"
for suite in "${suites[@]}"; do
    if [ -f "$logs/$suite.status" ]; then
        read -r rc seconds <"$logs/$suite.status"
    else
        rc=1 seconds=?
    fi
    [ "$rc" = 0 ] || failed+=("$suite")
    printf '  %-10s exit %-3s %5ss  %s\n' "$suite" "$rc" "$seconds" "$(summary "$logs/$suite.log")"
done

for suite in "${failed[@]}"; do
    echo
    echo "======== make test-$suite failed: its whole log ($logs/$suite.log) ========"
    cat "$logs/$suite.log"
    echo "======== end of make test-$suite ========"
done
[ ${#failed[@]} = 0 ] || { echo "make test: failed: ${failed[*]}"; exit 1; }
