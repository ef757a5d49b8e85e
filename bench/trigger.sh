# bench/trigger.sh: cost of messaging.emit_event() on the writer's side,
# sourced by bench/run.sh after pg.sh.
#
#	pg_bench_trigger	 one INSERT of BENCH_TRIGGER_ROWS rows into a 7-column
#						 table without trigger, with the statement form and
#						 with the row form; then an UPDATE of one column of
#						 every row in both forms.  Medians of BENCH_RUNS,
#						 after one unrecorded warm-up round.
#
# Only the SQL side is measured: the relay is pointed at a closed port
# while it runs, so it neither competes for the CPU nor drains the outbox.
#
# Needs: pg.sh's scratch cluster (pg_psql), RESULTS_DIR, BENCH_RUNS,
# record(), median(), log().

BENCH_TRIGGER_ROWS=${BENCH_TRIGGER_ROWS:-30000}

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

# pg_trigger_time SQL: milliseconds SQL takes, on an empty outbox and
# after a checkpoint, so that no run pays for the previous one's writes.
pg_trigger_time()
{
	pg_psql <<SQL | tail -n 1
TRUNCATE messaging.outbox, messaging.outbox_staged;
CHECKPOINT;
SELECT set_config('bench.t0', clock_timestamp()::text, false) \\g /dev/null
$1;
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('bench.t0')::timestamptz) * 1000, 1);
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
	local plain=() stmt=() row=() stmt_upd=() row_upd=()
	local raw="$RESULTS_DIR/trigger.tsv"
	local p s r su ru events

	pg_psql -c "ALTER SYSTEM SET messaging.broker_url = 'amqp://guest:guest@127.0.0.1:1/%2f'" \
		-c "SELECT pg_reload_conf()" >/dev/null
	sleep 1
	pg_trigger_setup
	printf 'run\tplain_ms\tstatement_ms\trow_ms\tstatement_update_ms\trow_update_ms\n' > "$raw"

	# round 0 is the warm-up
	for ((i = 0; i <= BENCH_RUNS; i++)); do
		pg_psql -c "TRUNCATE bench_plain, bench_stmt, bench_row" >/dev/null
		p=$(pg_trigger_time "INSERT INTO bench_plain $PG_TRIGGER_ROWS")
		s=$(pg_trigger_time "INSERT INTO bench_stmt $PG_TRIGGER_ROWS")
		events=$(pg_psql -c "SELECT count(*) FROM messaging.pending_events")
		r=$(pg_trigger_time "INSERT INTO bench_row $PG_TRIGGER_ROWS")
		events="$events $(pg_psql -c "SELECT count(*) FROM messaging.pending_events")"
		su=$(pg_trigger_time "UPDATE bench_stmt SET status = 'closed'")
		ru=$(pg_trigger_time "UPDATE bench_row SET status = 'closed'")
		if [ "$events" != "$n $n" ]; then
			log "trigger: expected $n events per INSERT, outbox had $events"
			exit 1
		fi
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$p" "$s" "$r" "$su" "$ru" >> "$raw"
		log "trigger round $i: plain $p ms, statement $s ms, row $r ms; update: statement $su ms, row $ru ms"
		if [ "$i" -gt 0 ]; then
			plain+=("$p"); stmt+=("$s"); row+=("$r")
			stmt_upd+=("$su"); row_upd+=("$ru")
		fi
	done
	pg_psql -c "TRUNCATE messaging.outbox, messaging.outbox_staged" \
		-c "DROP TABLE bench_plain, bench_stmt, bench_row" \
		-c "ALTER SYSTEM RESET messaging.broker_url" -c "SELECT pg_reload_conf()" >/dev/null

	p=$(printf '%s\n' "${plain[@]}" | median)
	s=$(printf '%s\n' "${stmt[@]}" | median)
	r=$(printf '%s\n' "${row[@]}" | median)
	su=$(printf '%s\n' "${stmt_upd[@]}" | median)
	ru=$(printf '%s\n' "${row_upd[@]}" | median)
	record "INSERT x$n, no trigger" "$p" "ms" "median of $BENCH_RUNS, 7 columns"
	record "INSERT x$n, statement-form events" "$s" "ms" "median of $BENCH_RUNS"
	record "INSERT x$n, row-form events" "$r" "ms" "median of $BENCH_RUNS"
	record "statement form / no trigger" "$(pg_trigger_ratio "$s" "$p")" "x" "target 1.5"
	record "row form / no trigger" "$(pg_trigger_ratio "$r" "$p")" "x" "target 3"
	record "UPDATE x$n one column, statement form" "$su" "ms" "median of $BENCH_RUNS"
	record "UPDATE x$n one column, row form" "$ru" "ms" "median of $BENCH_RUNS"
}
