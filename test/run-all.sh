#!/usr/bin/env bash
# The messaging extension's test command (`test/run-all.sh` as root; CI runs it
# through .ci/run). As root it installs missing Debian/npm dependencies,
# builds and installs the extension, then, as the unprivileged postgres
# user in a scratch copy of the tree, runs
#   (a) the pg_regress suite (`make installcheck`, temporary instance
#       configured by test/regress.conf), and
#   (b) every TAP test test/t/*.pl with prove, each under a time limit.
# The last line printed is "N passed, N failed", counting pg_regress tests
# and TAP test files. Exit status is non-zero on any failure.
#
# Environment:
#   TAP_TIMEOUT     seconds allowed per TAP file (default 600)
#   TOTAL_TIMEOUT   seconds allowed for all TAP files together (default 2700)
#   TAP_TESTS       space-separated TAP files to run instead of test/t/*.pl
#   KEEP_TEST_DIR=1 keep the scratch copy even when everything passed
#   PG_TEST_EXTRA   passed through to the TAP tests
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG="$PGBIN/pg_config"
PGXS_DIR=/usr/lib/postgresql/15/lib/pgxs
PG_REGRESS_BIN="$PGXS_DIR/src/test/regress/pg_regress"
TAP_TIMEOUT="${TAP_TIMEOUT:-600}"
TOTAL_TIMEOUT="${TOTAL_TIMEOUT:-2700}"
RUN_USER=postgres

passed=0
failed=0

section() { printf '\n==== %s ====\n' "$*"; }

WORK=""

finish() {
    trap - EXIT
    [ -z "$WORK" ] || cleanup
    printf '\n%d passed, %d failed\n' "$passed" "$failed"
    if [ "$failed" -eq 0 ]; then exit 0; else exit 1; fi
}

if [ "$(id -u)" -ne 0 ]; then
    echo "run-all.sh: run as root" >&2
    exit 1
fi

section "dependencies"
"$ROOT/test/scripts/install-deps.sh"

section "build and install"
cd "$ROOT"
if ! make PG_CONFIG="$PG_CONFIG"; then
    echo "run-all.sh: BUILD FAILED (make)" >&2
    failed=$((failed + 1))
    finish
fi
if ! make PG_CONFIG="$PG_CONFIG" install; then
    echo "run-all.sh: INSTALL FAILED (make install)" >&2
    failed=$((failed + 1))
    finish
fi

# pg_regress and the TAP framework write into the tree: give the postgres
# user a copy of its own.
WORK="$(mktemp -d /tmp/messaging-test.XXXXXX)"
TREE="$WORK/tree"
mkdir -p "$TREE"
rsync -a --exclude /.git --exclude /tmp_check --exclude /results \
    --exclude /regression.diffs --exclude /regression.out \
    "$ROOT/" "$TREE/"
chown -R "$RUN_USER:" "$WORK"
chmod 755 "$WORK"

as_pg() {
    runuser -u "$RUN_USER" -- env \
        PATH="$PGBIN:$PATH" \
        LANG=C.UTF-8 \
        ${PG_TEST_EXTRA:+PG_TEST_EXTRA="$PG_TEST_EXTRA"} \
        "$@"
}

# Stops brokers and PostgreSQL servers left behind under the scratch copy
# (a TAP file that hit its time limit cannot clean up after itself). Only
# processes recorded in pid files inside $WORK are touched.
sweep() {
    local f d
    while IFS= read -r f; do
        d="$(dirname "$f")"
        MQ_DIR="$d" MQ_WAIT_SECONDS=20 as_pg "$TREE/test/scripts/rabbitmq.sh" stop >/dev/null 2>&1 || true
    done < <(find "$WORK" -name rabbit.pid -type f 2>/dev/null)
    while IFS= read -r f; do
        d="$(dirname "$f")"
        as_pg pg_ctl -D "$d" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    done < <(find "$WORK" -name postmaster.pid -type f 2>/dev/null)
}

cleanup() {
    sweep
    if [ "$failed" -eq 0 ] && [ -z "${KEEP_TEST_DIR:-}" ]; then
        rm -rf "$WORK"
    else
        echo "run-all.sh: test output kept in $WORK"
    fi
}
trap cleanup EXIT

section "pg_regress (make installcheck)"
regress_log="$WORK/regress.out"
set +e
# TAP_TESTS= : the TAP files run below, one by one. NO_INSTALLCHECK= makes
# sure the installcheck target exists.
as_pg make -C "$TREE" PG_CONFIG="$PG_CONFIG" installcheck TAP_TESTS= NO_INSTALLCHECK= 2>&1 | tee "$regress_log"
regress_rc="${PIPESTATUS[0]}"
set -e
r_total=0
r_failed=0
if line="$(grep -Eo 'All [0-9]+ tests passed' "$regress_log" | tail -n 1)" && [ -n "$line" ]; then
    r_total="$(echo "$line" | grep -Eo '[0-9]+')"
elif line="$(grep -Eo '[0-9]+ of [0-9]+ tests failed' "$regress_log" | tail -n 1)" && [ -n "$line" ]; then
    r_failed="$(echo "$line" | awk '{print $1}')"
    r_total="$(echo "$line" | awk '{print $3}')"
fi
if [ "$regress_rc" -ne 0 ] && [ "$r_failed" -eq 0 ]; then
    # make failed without a per-test verdict (e.g. instance did not start)
    r_failed=1
fi
passed=$((passed + r_total - r_failed))
failed=$((failed + r_failed))
if [ "$r_total" -eq 0 ] && [ "$regress_rc" -eq 0 ]; then
    echo "pg_regress: no regression tests (sql/[0-9]*_*.sql) found"
else
    echo "pg_regress: $((r_total - r_failed)) of $r_total tests passed (make exit $regress_rc)"
fi
if [ "$regress_rc" -ne 0 ]; then
    if [ -f "$TREE/regression.diffs" ]; then
        section "regression.diffs (first 400 lines)"
        head -n 400 "$TREE/regression.diffs"
    fi
    for f in "$TREE"/tmp_check/log/*.log; do
        [ -f "$f" ] || continue
        section "tail of ${f#"$TREE"/}"
        tail -n 60 "$f"
    done
fi
sweep
# Keep the temporary instance's files apart from the TAP tests' tmp_check.
if [ -d "$TREE/tmp_check" ]; then
    mv "$TREE/tmp_check" "$WORK/regress_tmp_check"
fi

section "TAP tests (prove)"
if [ -n "${TAP_TESTS:-}" ]; then
    read -r -a tap_files <<< "$TAP_TESTS"
else
    tap_files=()
    for f in "$TREE"/test/t/*.pl; do
        [ -f "$f" ] && tap_files+=("test/t/$(basename "$f")")
    done
fi
as_pg mkdir -p "$TREE/tmp_check/log"
tap_start=$SECONDS
tap_summary=()
for t in "${tap_files[@]}"; do
    name="$(basename "$t" .pl)"
    left=$((TOTAL_TIMEOUT - (SECONDS - tap_start)))
    if [ "$left" -le 0 ]; then
        tap_summary+=("SKIPPED (total time limit) $t")
        failed=$((failed + 1))
        continue
    fi
    limit="$TAP_TIMEOUT"
    [ "$left" -lt "$limit" ] && limit="$left"
    echo "--- $t (limit ${limit}s)"
    t0=$SECONDS
    set +e
    (cd "$TREE" && as_pg timeout -k 15 "$limit" env \
        TESTDIR="$TREE" \
        PG_REGRESS="$PG_REGRESS_BIN" \
        prove -I "$PGXS_DIR/src/test/perl" -I "$TREE/test/lib" "$t")
    rc=$?
    set -e
    sweep
    took=$((SECONDS - t0))
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        tap_summary+=("ok     ${took}s $t")
    else
        failed=$((failed + 1))
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            tap_summary+=("FAILED ${took}s $t (time limit ${limit}s)")
        else
            tap_summary+=("FAILED ${took}s $t (exit $rc)")
        fi
        for f in "$TREE/tmp_check/log/regress_log_$name" "$TREE"/tmp_check/log/"${name}"_*.log; do
            [ -f "$f" ] || continue
            section "tail of ${f#"$TREE"/}"
            tail -n 80 "$f"
        done
    fi
done
[ "${#tap_files[@]}" -gt 0 ] || echo "no TAP tests found"

section "summary"
echo "pg_regress: $((r_total - r_failed)) passed, $r_failed failed"
for s in "${tap_summary[@]}"; do echo "TAP $s"; done
finish
