# bench/trigger.sh: cost of messaging.emit_event() on the writer's side,
# and the rate at which its events reach the broker; sourced by
# bench/run.sh after pg.sh.
#
#	pg_bench_trigger	 one INSERT of BENCH_TRIGGER_ROWS rows into a 7-column
#						 table without trigger, with the statement form and
#						 with the row form; then an UPDATE of one column of
#						 every row in both forms.  Rounds interleave the
#						 statements; medians of BENCH_TRIGGER_RUNS rounds,
#						 after one unrecorded warm-up round.
#	pg_bench_trigger_delivery
#						 commit of a BENCH_TRIGGER_ROWS-row INSERT with the
#						 statement form -> the broker's confirm of its last
#						 event, through the relay
#
# The statement form stages its events in messaging.outbox_staged.  It is
# measured three times: on a staging table as the relay and autovacuum
# leave it after earlier bulk changes (rows drained, pages vacuumed and
# kept: "steady"); on one just truncated once the relay has added its
# reserve of empty pages (messaging.staging_reserve, "reserve"), as for
# the first bulk change after installation; and on one just truncated
# ("cold"), where every staged page must first be added to the file, as
# for a change larger than the reserve.
#
# For the writer's side the relay is pointed at a closed port, so that it
# neither competes for the CPU nor drains anything; the drain and vacuum
# of the steady case are done by the benchmark (DELETE, VACUUM).  Every
# statement runs in a new session after a checkpoint.
#
# Needs: pg.sh's scratch cluster (pg_psql), RESULTS_DIR, BENCH_RUNS,
# record(), median(), log(); RELAY_RATE when pg_bench_relay ran before.

BENCH_TRIGGER_ROWS=${BENCH_TRIGGER_ROWS:-30000}
BENCH_TRIGGER_RUNS=${BENCH_TRIGGER_RUNS:-$((BENCH_RUNS > 5 ? BENCH_RUNS : 5))}

# The application table: bigint key, tenant, text, numeric, timestamptz.
PG_TRIGGER_TABLE="id bigint PRIMARY KEY, tenant text NOT NULL, name text,
	email text, balance numeric(12,2), status text, updated_at timestamptz"
PG_TRIGGER_ROWS="SELECT g, 'acme', 'User ' || g, 'user' || g || '@example.com',
	g * 1.25, 'active', '2026-01-01'::timestamptz + g * interval '1 s'
	FROM generate_series(1, $BENCH_TRIGGER_ROWS) g"

pg_trigger_setup()
{
	pg_psql <<SQL >/dev/null
DROP TABLE IF EXISTS bench_plain, bench_stmt, bench_row;
CREATE TABLE bench_plain ($PG_TRIGGER_TABLE);
CREATE TABLE bench_stmt ($PG_TRIGGER_TABLE);
CREATE TABLE bench_row ($PG_TRIGGER_TABLE);
SELECT messaging.create_event_trigger('bench_stmt', 'account', 'crm', 'tenant');
SELECT messaging.create_event_trigger('bench_row', 'account', 'crm', 'tenant',
	for_each_row => true);
SQL
}

# pg_trigger_time PREPARE SQL: milliseconds SQL takes, in a new session,
# after PREPARE and a checkpoint, so that no run pays for the previous
# one's writes.
pg_trigger_time()
{
	pg_psql <<SQL | tail -n 1
$1
CHECKPOINT;
SELECT set_config('bench.t0', clock_timestamp()::text, false) \\g /dev/null
$2;
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('bench.t0')::timestamptz) * 1000, 1);
SQL
}

# The staging table and outbox emptied as the relay and autovacuum leave
# them, or truncated.
PG_TRIGGER_STEADY="DELETE FROM messaging.outbox; DELETE FROM messaging.outbox_staged;
VACUUM messaging.outbox_staged; VACUUM messaging.outbox;"
PG_TRIGGER_COLD="TRUNCATE messaging.outbox, messaging.outbox_staged;"

# Truncates the staging table and waits (at most 15 s) for the relay's
# maintenance to add its reserve of pages again.
pg_trigger_await_reserve()
{
	pg_psql -c "TRUNCATE messaging.outbox, messaging.outbox_staged" >/dev/null
	pg_psql <<'SQL' >/dev/null
DO $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '15 s';
BEGIN
	WHILE pg_relation_size('messaging.outbox_staged') <
		  pg_size_bytes(current_setting('messaging.staging_reserve')) LOOP
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'the relay did not add its staging reserve in 15 s';
		END IF;
		PERFORM pg_sleep(0.1);
	END LOOP;
END
$$;
SQL
}

# pg_trigger_ratio A B: A / B to two decimals.
pg_trigger_ratio()
{
	awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}

pg_bench_trigger()
{
	local i n=$BENCH_TRIGGER_ROWS
	local plain=() steady=() reserve=() cold=() row=() stmt_upd=() row_upd=()
	local raw="$RESULTS_DIR/trigger.tsv"
	local p st rs c r su ru events

	pg_psql -c "ALTER SYSTEM SET messaging.broker_url = 'amqp://guest:guest@127.0.0.1:1/%2f'" \
		-c "SELECT pg_reload_conf()" >/dev/null
	sleep 1
	pg_trigger_setup
	printf 'run\tplain_ms\tstatement_steady_ms\tstatement_cold_ms\trow_ms\tstatement_update_ms\trow_update_ms\tstatement_reserve_ms\n' > "$raw"

	# round 0 is the warm-up
	for ((i = 0; i <= BENCH_TRIGGER_RUNS; i++)); do
		p=$(pg_trigger_time "TRUNCATE bench_plain;" "INSERT INTO bench_plain $PG_TRIGGER_ROWS")
		st=$(pg_trigger_time "TRUNCATE bench_stmt; $PG_TRIGGER_STEADY" \
			"INSERT INTO bench_stmt $PG_TRIGGER_ROWS")
		events=$(pg_psql -c "SELECT count(*) FROM messaging.pending_events")
		c=$(pg_trigger_time "TRUNCATE bench_stmt; $PG_TRIGGER_COLD" \
			"INSERT INTO bench_stmt $PG_TRIGGER_ROWS")
		pg_trigger_await_reserve
		rs=$(pg_trigger_time "TRUNCATE bench_stmt;" "INSERT INTO bench_stmt $PG_TRIGGER_ROWS")
		su=$(pg_trigger_time "$PG_TRIGGER_STEADY" "UPDATE bench_stmt SET status = 'closed'")
		r=$(pg_trigger_time "TRUNCATE bench_row; $PG_TRIGGER_STEADY" \
			"INSERT INTO bench_row $PG_TRIGGER_ROWS")
		events="$events $(pg_psql -c "SELECT count(*) FROM messaging.pending_events")"
		ru=$(pg_trigger_time "$PG_TRIGGER_STEADY" "UPDATE bench_row SET status = 'closed'")
		events="$events $(pg_psql -c "SELECT count(*) FROM messaging.pending_events")"
		if [ "$events" != "$n $n $n" ]; then
			log "trigger: expected $n events per statement, had $events"
			exit 1
		fi
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$p" "$st" "$c" "$r" "$su" "$ru" "$rs" >> "$raw"
		log "trigger round $i: plain $p ms, statement $st ms (reserve $rs ms, cold $c ms), row $r ms; update: statement $su ms, row $ru ms"
		if [ "$i" -gt 0 ]; then
			plain+=("$p"); steady+=("$st"); reserve+=("$rs"); cold+=("$c"); row+=("$r")
			stmt_upd+=("$su"); row_upd+=("$ru")
		fi
	done
	pg_psql -c "TRUNCATE messaging.outbox, messaging.outbox_staged" \
		-c "DROP TABLE bench_plain, bench_row" \
		-c "ALTER SYSTEM RESET messaging.broker_url" -c "SELECT pg_reload_conf()" >/dev/null

	p=$(printf '%s\n' "${plain[@]}" | median)
	st=$(printf '%s\n' "${steady[@]}" | median)
	rs=$(printf '%s\n' "${reserve[@]}" | median)
	c=$(printf '%s\n' "${cold[@]}" | median)
	r=$(printf '%s\n' "${row[@]}" | median)
	su=$(printf '%s\n' "${stmt_upd[@]}" | median)
	ru=$(printf '%s\n' "${row_upd[@]}" | median)
	record "INSERT x$n, no trigger" "$p" "ms" "median of $BENCH_TRIGGER_RUNS, 7 columns"
	record "INSERT x$n, statement form" "$st" "ms" "median; staging table drained and vacuumed"
	record "INSERT x$n, statement form, reserve" "$rs" "ms" "median; truncated, then the relay's reserve"
	record "INSERT x$n, statement form, cold" "$c" "ms" "median; staging table truncated"
	record "INSERT x$n, row form" "$r" "ms" "median of $BENCH_TRIGGER_RUNS"
	record "statement form / no trigger" "$(pg_trigger_ratio "$st" "$p")" "x" "target 1.5"
	record "statement form, reserve / no trigger" "$(pg_trigger_ratio "$rs" "$p")" "x" "target 1.5"
	record "statement form, cold / no trigger" "$(pg_trigger_ratio "$c" "$p")" "x" "target 1.5"
	record "row form / no trigger" "$(pg_trigger_ratio "$r" "$p")" "x" "target 3"
	record "UPDATE x$n one column, statement form" "$su" "ms" "median of $BENCH_TRIGGER_RUNS"
	record "UPDATE x$n one column, row form" "$ru" "ms" "median of $BENCH_TRIGGER_RUNS"
}

# One delivery run: the INSERT's events, commit to last confirm, in
# events per second (pg.sh's pg_delivery_run).
pg_trigger_delivery_run()
{
	pg_psql -c "TRUNCATE bench_stmt" >/dev/null
	pg_delivery_run "INSERT INTO bench_stmt $PG_TRIGGER_ROWS" "$BENCH_TRIGGER_ROWS"
}

pg_bench_trigger_delivery()
{
	local i rates=() rate note

	# the relay connected again (pg_bench_trigger pointed it elsewhere)
	pg_psql -c "SELECT count(*) FROM messaging.connection_status" >/dev/null
	for ((i = 0; i < 100; i++)); do
		[ "$(pg_psql -c "SELECT state FROM messaging.connection_status WHERE worker = 'relay'")" = connected ] && break
		sleep 0.1
	done
	pg_trigger_delivery_run >/dev/null		# warm-up
	for ((i = 1; i <= BENCH_RUNS; i++)); do
		MQ_DIR="$MQ_DIR" MQ_PORT="$BENCH_MQ_PORT" bash "$BROKER_SCRIPT" \
			ctl purge_queue bench-sink >/dev/null 2>&1 || true
		rates+=("$(pg_trigger_delivery_run | tail -n 1)")
		log "trigger delivery run $i: ${rates[-1]} events/s"
	done
	pg_psql -c "DROP TABLE bench_stmt" >/dev/null
	rate=$(printf '%s\n' "${rates[@]}" | median)
	note="median of $BENCH_RUNS"
	if [ -n "${RELAY_RATE:-}" ]; then
		note="$(awk -v a="$rate" -v b="$RELAY_RATE" 'BEGIN { printf "%.2fx the relay with publish_event() rows", a / b }')"
	fi
	record "statement-form INSERT x$BENCH_TRIGGER_ROWS commit -> last confirm" "$rate" "events/s" "$note"
}
