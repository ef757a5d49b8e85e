# bench/pg.sh: PostgreSQL side of the benchmarks, sourced by bench/run.sh.
#
# Starts one scratch PostgreSQL 15 cluster (as the postgres OS user, Unix
# socket only) with the messaging library preloaded and pointed at the
# benchmark's scratch broker, and measures:
#
#	pg_bench_relay		 commit of BENCH_COUNT outbox rows -> the broker's
#						 confirm of the last one, through the relay worker
#	pg_bench_publish_call publish_event() x BENCH_COUNT in one statement
#						 against a plain INSERT of the same rows
#	pg_bench_single_txn	 single-event transactions against single-row
#						 INSERT transactions (pgbench, 2 clients, 10 s each)
#
# Needs: MQ_URL, RESULTS_DIR, BENCH_COUNT, BENCH_RUNS, record(), log().
# BENCH_PG_CONF, when set, is appended to the cluster's postgresql.conf
# (for example "messaging.publish_linger = '20ms'").

PG_BIN=/usr/lib/postgresql/15/bin
BENCH_PG_DIR=
BENCH_PG_PORT=${BENCH_PG_PORT:-36673}

pg_psql()
{
	runuser -u postgres -- "$PG_BIN/psql" -h "$BENCH_PG_DIR" -p "$BENCH_PG_PORT" \
		-X -q -At -v ON_ERROR_STOP=1 -d postgres "$@"
}

pg_start()
{
	local url=$1

	BENCH_PG_DIR=$(mktemp -d /tmp/messaging-bench-pg.XXXXXX)
	chown postgres "$BENCH_PG_DIR"
	runuser -u postgres -- "$PG_BIN/initdb" -D "$BENCH_PG_DIR/data" \
		-A trust >/dev/null
	cat >> "$BENCH_PG_DIR/data/postgresql.conf" <<CONF
port = $BENCH_PG_PORT
listen_addresses = ''
unix_socket_directories = '$BENCH_PG_DIR'
shared_preload_libraries = 'messaging'
messaging.broker_url = '$url'
shared_buffers = 512MB
max_wal_size = 4GB
${BENCH_PG_CONF:-}
CONF
	runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$BENCH_PG_DIR/data" \
		-l "$BENCH_PG_DIR/log" -w start >/dev/null
	pg_psql -c "CREATE EXTENSION messaging"
	# a durable queue that takes every event, as the bare publisher's does
	node "$REPO_DIR/test/interop/consume.js" --url "$url" --queue bench-sink \
		--bind 'inter-app-events:#' --declare-exchanges --setup-only >/dev/null
}

pg_stop()
{
	[ -n "$BENCH_PG_DIR" ] || return 0
	runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$BENCH_PG_DIR/data" \
		-m fast -w stop >/dev/null 2>&1 || true
	rm -rf "$BENCH_PG_DIR"
	BENCH_PG_DIR=
}

# The payload: about the size of the bare publisher's message body once
# wrapped in the envelope.
PG_PAYLOAD="jsonb_build_object('user_id', g, 'email', 'user' || g || '@example.com',
	'name', 'User ' || g, 'roles', jsonb_build_array('member', 'viewer'),
	'note', repeat('x', 150))"

# pg_delivery_run SQL N: waits for the relay to be idle (no event
# pending), runs SQL (which commits N events), then polls the relay's
# published total from the same session until all N are confirmed.
# Prints events per second from commit to last confirm.
pg_delivery_run()
{
	pg_psql <<SQL
DO \$\$
DECLARE
	before bigint;
BEGIN
	LOOP
		EXIT WHEN NOT EXISTS (SELECT FROM messaging.pending_events);
		PERFORM pg_sleep(0.05);
	END LOOP;
	SELECT published INTO before FROM messaging.connection_status
	 WHERE worker = 'relay';
	PERFORM set_config('bench.before', before::text, false);
END
\$\$;
$1 \\g /dev/null
SELECT set_config('bench.t0', clock_timestamp()::text, false) \\g /dev/null
DO \$\$
DECLARE
	n bigint;
	deadline timestamptz := clock_timestamp() + interval '120 s';
BEGIN
	LOOP
		SELECT published - current_setting('bench.before')::bigint INTO n
		  FROM messaging.connection_status WHERE worker = 'relay';
		EXIT WHEN n >= $2;
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'relay confirmed only % of % events in 120 s', n, $2;
		END IF;
		PERFORM pg_sleep(0.002);
	END LOOP;
END
\$\$;
SELECT round($2 / extract(epoch FROM clock_timestamp() - current_setting('bench.t0')::timestamptz));
SQL
}

# One run of the relay benchmark: BENCH_COUNT publish_event() rows.
pg_relay_run()
{
	pg_delivery_run "SELECT count(messaging.publish_event('user.created', $PG_PAYLOAD, 'crm', 'acme'))
  FROM generate_series(1, $BENCH_COUNT) g" "$BENCH_COUNT"
}

pg_bench_relay()
{
	local i rates=() size bare

	# The ceiling: the bare publisher with messages of the relay's size
	# and flags (persistent, mandatory), on the same queue.
	size=$(pg_psql -c "SELECT octet_length(messaging.event_envelope(
		messaging.uuid_generate_v7(), 'user.created', 'wrapper', now(),
		(SELECT $PG_PAYLOAD FROM (SELECT 10000 AS g) s), 'crm', 'acme')::text)")
	BENCH_SIZE=$size BARE_FLAGS=--mandatory BARE_TAG=-relay-size \
		bare_series "bare publisher, ${size}B, mandatory" "$BENCH_COUNT" "$BENCH_WINDOW"
	bare=$(json_field msg_per_s < "$RESULTS_DIR/bare_w$BENCH_WINDOW-relay-size.jsonl" | median)

	pg_relay_run >/dev/null		# warm-up
	for ((i = 1; i <= BENCH_RUNS; i++)); do
		# start each run on an empty queue, as the bare publisher does
		MQ_DIR="$MQ_DIR" MQ_PORT="$BENCH_MQ_PORT" bash "$BROKER_SCRIPT" \
			ctl purge_queue bench-sink >/dev/null 2>&1 || true
		rates+=("$(pg_relay_run | tail -n 1)")
		log "relay run $i: ${rates[-1]} msg/s"
	done
	RELAY_RATE=$(printf '%s\n' "${rates[@]}" | median)
	record "relay commit -> last confirm" "$RELAY_RATE" "msg/s" \
		"$(awk -v a="$RELAY_RATE" -v b="$bare" 'BEGIN { printf "%.2fx the bare publisher at the same size", a / b }')"
}

pg_time_ms()
{
	pg_psql <<SQL | tail -n 1
CREATE TEMP TABLE plain_events (id uuid, event_type text, payload jsonb,
	target_app text, tenant_id text, created_at timestamptz);
SELECT set_config('bench.t0', clock_timestamp()::text, false) \\g /dev/null
$1;
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('bench.t0')::timestamptz) * 1000, 1);
SQL
}

pg_bench_publish_call()
{
	local i pub=() ins=() insert_sql publish_sql

	insert_sql="INSERT INTO plain_events SELECT gen_random_uuid(), 'user.created', $PG_PAYLOAD, 'crm', 'acme', now() FROM generate_series(1, $BENCH_COUNT) g"
	publish_sql="SELECT count(messaging.publish_event('user.created', $PG_PAYLOAD, 'crm', 'acme')) FROM generate_series(1, $BENCH_COUNT) g"

	# the relay would compete for the CPU: measure with it disconnected
	pg_psql -c "ALTER SYSTEM SET messaging.broker_url = 'amqp://guest:guest@127.0.0.1:1/%2f'" \
		-c "SELECT pg_reload_conf()" >/dev/null
	sleep 1
	for ((i = 0; i <= BENCH_RUNS; i++)); do
		ins+=("$(pg_time_ms "$insert_sql")")
		pub+=("$(pg_time_ms "$publish_sql")")
		pg_psql -c "TRUNCATE messaging.outbox" >/dev/null
	done
	pg_psql -c "ALTER SYSTEM RESET messaging.broker_url" -c "SELECT pg_reload_conf()" >/dev/null
	# the first pair is a warm-up
	INSERT_MS=$(printf '%s\n' "${ins[@]:1}" | median)
	PUBLISH_MS=$(printf '%s\n' "${pub[@]:1}" | median)
	record "plain jsonb INSERT x$BENCH_COUNT, 1 stmt" "$INSERT_MS" "ms" "median of $BENCH_RUNS"
	record "publish_event() x$BENCH_COUNT, 1 stmt" "$PUBLISH_MS" "ms" \
		"$(awk -v a="$PUBLISH_MS" -v b="$INSERT_MS" 'BEGIN { printf "%.2fx the INSERT", a / b }')"
}

pg_pgbench()
{
	local script=$1

	runuser -u postgres -- "$PG_BIN/pgbench" -h "$BENCH_PG_DIR" -p "$BENCH_PG_PORT" \
		-n -c 2 -j 2 -T 10 -f "$script" postgres 2>/dev/null |
		sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n 1
}

# user + system clock ticks a process has used (0 when it is gone)
proc_cpu_ticks()
{
	if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
		awk '{ print $14 + $15 }' "/proc/$1/stat"
	else
		echo 0
	fi
}

pg_bench_single_txn()
{
	local dir=$RESULTS_DIR

	pg_psql -c "CREATE TABLE IF NOT EXISTS plain_events (id uuid, event_type text, payload jsonb, target_app text, tenant_id text, created_at timestamptz)"
	chmod 755 "$dir"
	cat > "$dir/insert.sql" <<SQL
INSERT INTO plain_events SELECT gen_random_uuid(), 'user.created', $PG_PAYLOAD, 'crm', 'acme', now() FROM (SELECT (random() * 1e6)::int AS g) s;
SQL
	cat > "$dir/publish.sql" <<SQL
SELECT messaging.publish_event('user.created', $PG_PAYLOAD, 'crm', 'acme') FROM (SELECT (random() * 1e6)::int AS g) s;
SQL
	chmod 644 "$dir/insert.sql" "$dir/publish.sql"
	INSERT_TPS=$(pg_pgbench "$dir/insert.sql")
	# where the CPU goes while events flow: the relay's and the broker's
	# share of the 10 s run, in CPU seconds
	local relay_pid broker_pid r0 b0
	relay_pid=$(pg_psql -c "SELECT pid FROM messaging.connection_status WHERE worker = 'relay'")
	broker_pid=$(tr -dc '0-9' < "$MQ_DIR/rabbit.pid" 2>/dev/null || true)
	r0=$(proc_cpu_ticks "$relay_pid")
	b0=$(proc_cpu_ticks "$broker_pid")
	PUBLISH_TPS=$(pg_pgbench "$dir/publish.sql")
	record "relay CPU during single-event run" \
		"$(awk -v a="$(proc_cpu_ticks "$relay_pid")" -v b="$r0" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (a - b) / hz }')" \
		"s" "of 20 CPU-seconds (2 cores x 10 s)"
	record "broker CPU during single-event run" \
		"$(awk -v a="$(proc_cpu_ticks "$broker_pid")" -v b="$b0" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (a - b) / hz }')" \
		"s" "same host; elsewhere in production"
	pg_psql -c "SELECT count(*) || ' events failed' FROM messaging.failed_events" >&2
	record "single-row INSERT transactions" "$INSERT_TPS" "tps" "pgbench -c 2, 10 s"
	record "single-event transactions" "$PUBLISH_TPS" "tps" \
		"$(awk -v a="$PUBLISH_TPS" -v b="$INSERT_TPS" 'BEGIN { printf "%.2fx the INSERT rate, relay running", a / b }')"
}
