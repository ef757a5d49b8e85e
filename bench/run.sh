#!/bin/bash
#
# bench/run.sh
#	Benchmark run for the messaging extension: measures the bare
#	rabbitmq-c publisher ceiling on a scratch broker, then runs the
#	PostgreSQL-side benchmarks (relay, publish_event(), single-event
#	transactions, trigger overhead) and prints a summary table.
#
# Usage: bench/run.sh
#
# Environment (all optional):
#	BENCH_MQ_PORT	AMQP port of the scratch broker on 127.0.0.1 (36672);
#					the broker script derives its distribution and epmd
#					ports from it, all on 127.0.0.1
#	BENCH_COUNT		messages per bare publisher run (20000)
#	BENCH_SIZE		message body size in bytes (400)
#	BENCH_WINDOW	unconfirmed-message window (500)
#	BENCH_RUNS		repetitions; the median is reported (3)
#	BENCH_WARMUP	unrecorded warm-up runs before each series (1); the
#					first run on a freshly booted node is reliably slower
#	BENCH_W1_COUNT	messages per window-1 contrast run (3000; 0 skips it)
#	BENCH_KEEP		set to 1 to keep the broker's state directory
#	BENCH_ONLY		benchmarks to run, of: bare relay publish_call
#					single_txn trigger (default: all)
#	BENCH_BROKER_SCRIPT
#					broker control script (start|wait|stop, MQ_DIR, MQ_PORT);
#					default test/scripts/rabbitmq.sh, else
#					bench/scratch_broker.sh when that is missing
#
# Raw per-run JSON and the summary go to bench/results/<timestamp>/.
# Every step is bounded: each publisher run by its own 30 s no-progress
# timeout and by RUN_TIMEOUT overall, broker start by START_TIMEOUT.
#

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

BENCH_MQ_PORT=${BENCH_MQ_PORT:-36672}
BENCH_COUNT=${BENCH_COUNT:-20000}
BENCH_SIZE=${BENCH_SIZE:-400}
BENCH_WINDOW=${BENCH_WINDOW:-500}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-1}
BENCH_W1_COUNT=${BENCH_W1_COUNT:-3000}
BENCH_KEEP=${BENCH_KEEP:-0}

RUN_TIMEOUT=300
START_TIMEOUT=120
EXCHANGE=inter-app-events
ROUTING_KEY=crm.user.created

RESULTS_DIR="$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)"
SUMMARY_ROWS="$RESULTS_DIR/summary.rows"

SHARED_BROKER_SCRIPT="$REPO_DIR/test/scripts/rabbitmq.sh"
BROKER_SCRIPT=
MQ_DIR=
MQ_URL=

log() { echo "bench: $*" >&2; }

# shellcheck source=bench/pg.sh
. "$BENCH_DIR/pg.sh"
# shellcheck source=bench/trigger.sh
. "$BENCH_DIR/trigger.sh"

# ---------------------------------------------------------------------
# Result recording
# ---------------------------------------------------------------------

# record NAME VALUE UNIT NOTE: add one row to the summary table.
record()
{
	printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$SUMMARY_ROWS"
}

# json_field FIELD: read one numeric field from a JSON line on stdin.
json_field()
{
	sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"
}

# median: median of the numbers on stdin, one per line.
median()
{
	sort -g | awk '{ v[NR] = $1 }
		END {
			if (NR == 0) { print "n/a"; exit }
			if (NR % 2) print v[(NR + 1) / 2];
			else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
		}'
}

print_summary()
{
	{
		echo "messaging benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
		echo "host: $(nproc) cores, $(uname -srm)"
		echo "broker: RabbitMQ $(broker_version), 127.0.0.1:$BENCH_MQ_PORT"
		echo
		awk -F'\t' '
			BEGIN {
				printf "%-40s %12s  %-8s %s\n", "benchmark", "result", "unit", "notes"
				printf "%-40s %12s  %-8s %s\n", "---------", "------", "----", "-----"
			}
			{ printf "%-40s %12s  %-8s %s\n", $1, $2, $3, $4 }' "$SUMMARY_ROWS"
	} | tee "$RESULTS_DIR/summary.txt"
}

broker_version()
{
	dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown
}

# ---------------------------------------------------------------------
# Scratch broker
# ---------------------------------------------------------------------

broker()
{
	MQ_DIR="$MQ_DIR" MQ_PORT="$BENCH_MQ_PORT" \
		timeout "$START_TIMEOUT" bash "$BROKER_SCRIPT" "$1"
}

start_broker()
{
	if [ -n "${BENCH_BROKER_SCRIPT:-}" ]; then
		if [ ! -f "$BENCH_BROKER_SCRIPT" ]; then
			log "BENCH_BROKER_SCRIPT $BENCH_BROKER_SCRIPT not found"
			exit 1
		fi
		BROKER_SCRIPT=$(realpath "$BENCH_BROKER_SCRIPT")
	elif [ -f "$SHARED_BROKER_SCRIPT" ]; then
		BROKER_SCRIPT=$SHARED_BROKER_SCRIPT
	else
		BROKER_SCRIPT="$BENCH_DIR/scratch_broker.sh"
	fi
	MQ_DIR=$(mktemp -d "${TMPDIR:-/tmp}/messaging-bench-mq.XXXXXX")
	log "starting broker with ${BROKER_SCRIPT#"$REPO_DIR"/} in $MQ_DIR"
	broker start
	broker wait
	MQ_URL="amqp://guest:guest@127.0.0.1:$BENCH_MQ_PORT/%2f"
}

cleanup()
{
	local rc=$?

	pg_stop
	if [ -n "$MQ_DIR" ] && [ -n "$BROKER_SCRIPT" ]; then
		log "stopping broker"
		broker stop || log "broker stop failed; state left in $MQ_DIR"
		if [ "$BENCH_KEEP" != 1 ] && [ $rc -eq 0 ]; then
			rm -rf "$MQ_DIR"
		else
			log "broker state kept in $MQ_DIR"
		fi
	fi
	exit $rc
}

# ---------------------------------------------------------------------
# Bare publisher ceiling
# ---------------------------------------------------------------------

# bare_once COUNT WINDOW: one bounded bare_publisher run, JSON on stdout.
bare_once()
{
	timeout "$RUN_TIMEOUT" "$BENCH_DIR/bare_publisher" \
		--url "$MQ_URL" --exchange "$EXCHANGE" \
		--routing-key "$ROUTING_KEY" --count "$1" \
		--size "$BENCH_SIZE" --window "$2" ${BARE_FLAGS:-}
}

# bare_series LABEL COUNT WINDOW: BENCH_RUNS runs, median recorded.
bare_series()
{
	local label=$1 count=$2 window=$3
	local out="$RESULTS_DIR/bare_w$window${BARE_TAG:-}.jsonl"
	local i line rate

	for ((i = 1; i <= BENCH_WARMUP; i++)); do
		line=$(bare_once "$count" "$window")
		echo "$line" >> "$RESULTS_DIR/bare_w$window${BARE_TAG:-}.warmup.jsonl"
		log "$label warm-up: $(echo "$line" | json_field msg_per_s) msg/s"
	done
	for ((i = 1; i <= BENCH_RUNS; i++)); do
		line=$(bare_once "$count" "$window")
		echo "$line" >> "$out"
		rate=$(echo "$line" | json_field msg_per_s)
		log "$label run $i: $rate msg/s"
	done

	record "$label" "$(json_field msg_per_s < "$out" | median)" "msg/s" \
		"median of $BENCH_RUNS, $count x ${BENCH_SIZE}B persistent, confirms"
}

bench_bare()
{
	bare_series "bare publisher, window $BENCH_WINDOW" \
		"$BENCH_COUNT" "$BENCH_WINDOW"
	if [ "$BENCH_W1_COUNT" -gt 0 ]; then
		bare_series "bare publisher, window 1" "$BENCH_W1_COUNT" 1
	fi
}

# ---------------------------------------------------------------------
# PostgreSQL benchmarks
#
# Each hook runs with MQ_URL, RESULTS_DIR, BENCH_COUNT, BENCH_SIZE and
# BENCH_RUNS set and the scratch broker up, and reports with
# "record NAME VALUE UNIT NOTE".  Raw output belongs in $RESULTS_DIR.
# ---------------------------------------------------------------------

# Relay throughput: commit of BENCH_COUNT outbox rows to the broker's
# confirm of the last one, through the extension's background worker.
bench_relay()
{
	pg_bench_relay
}

# publish_event() called BENCH_COUNT times in one statement, against a
# plain INSERT of the same rows into a table with a jsonb column.
bench_publish_call()
{
	pg_bench_publish_call
}

# pgbench: one publish_event() per transaction, against single-row
# INSERT transactions.
bench_single_txn()
{
	pg_bench_single_txn
}

# Cost of emit_event() on the application table's write path: a
# BENCH_TRIGGER_ROWS-row INSERT without trigger, with the statement form
# and with the row form; then how fast the statement form's events reach
# the broker (bench/trigger.sh).
bench_trigger()
{
	pg_bench_trigger
	pg_bench_trigger_delivery
}

# ---------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------

main()
{
	mkdir -p "$RESULTS_DIR"
	: > "$SUMMARY_ROWS"

	log "building bare_publisher"
	make -s -C "$BENCH_DIR" bare_publisher

	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	start_broker

	export MQ_URL RESULTS_DIR BENCH_COUNT BENCH_SIZE BENCH_RUNS

	for b in ${BENCH_ONLY:-bare relay publish_call single_txn trigger}; do
		# the PostgreSQL benchmarks share one scratch cluster
		if [ "$b" != bare ] && [ -z "$BENCH_PG_DIR" ]; then
			pg_start "$MQ_URL"
		fi
		case "$b" in
			bare | publish_call | single_txn | trigger) "bench_$b" ;;
			relay) bench_relay ;;
			*) log "unknown benchmark \"$b\""; exit 2 ;;
		esac
	done

	echo
	print_summary
	log "results in ${RESULTS_DIR#"$REPO_DIR"/}"
}

main "$@"
