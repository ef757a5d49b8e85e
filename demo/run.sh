#!/usr/bin/env bash
# The messaging extension's demo (`sudo demo/run.sh`). Builds and installs
# the extension, starts a scratch RabbitMQ node and a scratch PostgreSQL 15
# cluster (application "wrapper"), starts two other applications as
# consumers ("crm" and "billing", test/interop/consume.js), runs
# demo/scenario.sql, waits for the relay to drain the outbox and shows what
# each application received, the connection status and the counters.
# Everything it starts listens on 127.0.0.1 or a Unix socket in a scratch
# directory, and is stopped on exit.
#
# Environment:
#   DEMO_MQ_PORT   AMQP port of the scratch broker (default 5789)
#   DEMO_PG_PORT   port (Unix socket only) of the scratch cluster (default 5499)
#   DEMO_TIMEOUT   seconds to wait for the outbox to drain and the consumers
#                  to get everything (default 60)
#   KEEP_DEMO_DIR=1  keep the scratch directory (logs, data) afterwards
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
MQ_PORT="${DEMO_MQ_PORT:-5789}"
PG_PORT="${DEMO_PG_PORT:-5499}"
TIMEOUT="${DEMO_TIMEOUT:-60}"
RABBITMQ_SH="$ROOT/test/scripts/rabbitmq.sh"
CONSUME_JS="$ROOT/test/interop/consume.js"
URL="amqp://guest:guest@127.0.0.1:${MQ_PORT}/%2f"

# What demo/scenario.sql must deliver (see its header).
EXPECT_CRM=12
EXPECT_BILLING=8

say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "demo/run.sh: run as root (sudo demo/run.sh)" >&2
    exit 1
fi

say "dependencies"
"$ROOT/test/scripts/install-deps.sh"

say "build and install the extension"
make -C "$ROOT" PG_CONFIG="$PGBIN/pg_config"
make -C "$ROOT" PG_CONFIG="$PGBIN/pg_config" install

DIR="$(mktemp -d /tmp/messaging-demo.XXXXXX)"
chmod 755 "$DIR"
PGDATA="$DIR/pgdata"
SOCK="$DIR/sock"
mkdir -p "$SOCK"
chown postgres: "$DIR" "$SOCK"
export MQ_DIR="$DIR/rabbitmq" MQ_PORT
consumer_pids=()
pg_started=0
mq_started=0
ok=1

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ]; then
        ok=0
        if [ -f "$DIR/postgresql.log" ]; then
            echo "---- tail of the PostgreSQL log"
            tail -n 30 "$DIR/postgresql.log"
        fi
    fi
    for pid in "${consumer_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    if [ "$pg_started" = 1 ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
    fi
    if [ "$mq_started" = 1 ]; then
        "$RABBITMQ_SH" stop >/dev/null
    fi
    if [ "$ok" = 1 ] && [ -z "${KEEP_DEMO_DIR:-}" ]; then
        rm -rf "$DIR"
    else
        echo "demo/run.sh: logs and data kept in $DIR"
    fi
}
trap cleanup EXIT

psql_demo() {
    runuser -u postgres -- "$PGBIN/psql" -X -h "$SOCK" -p "$PG_PORT" -d postgres \
        -v ON_ERROR_STOP=1 "$@"
}

say "scratch RabbitMQ on 127.0.0.1:${MQ_PORT}"
mq_started=1
"$RABBITMQ_SH" start

say "scratch PostgreSQL 15 cluster (socket $SOCK, port $PG_PORT)"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres \
    --no-instructions >/dev/null
cat >> "$PGDATA/postgresql.conf" <<CONF
# demo settings
listen_addresses = ''
port = ${PG_PORT}
unix_socket_directories = '${SOCK}'
shared_preload_libraries = 'messaging'
messaging.broker_url = '${URL}'
messaging.database = 'postgres'
messaging.app_name = 'wrapper'
CONF
pg_started=1
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$DIR/postgresql.log" -w -t 60 start

say "other applications: crm and billing consumers"
node "$CONSUME_JS" --url "$URL" --queue crm-demo --declare-exchanges \
    --bind 'inter-app-events:crm.#' --bind 'inter-app-broadcast:' --setup-only
node "$CONSUME_JS" --url "$URL" --queue billing-demo --declare-exchanges \
    --bind 'inter-app-events:billing.#' --bind 'inter-app-broadcast:' --setup-only
wait_ms=$(( (TIMEOUT + 30) * 1000 ))
# One more than expected: a consumer still waiting at its timeout shows that
# nothing extra (such as a rolled-back event) arrived.
node "$CONSUME_JS" --url "$URL" --queue crm-demo --count "$((EXPECT_CRM + 1))" \
    --timeout-ms "$wait_ms" > "$DIR/crm.jsonl" 2> "$DIR/crm.err" &
consumer_pids+=("$!")
node "$CONSUME_JS" --url "$URL" --queue billing-demo --count "$((EXPECT_BILLING + 1))" \
    --timeout-ms "$wait_ms" > "$DIR/billing.jsonl" 2> "$DIR/billing.err" &
consumer_pids+=("$!")
echo "crm-demo     <- inter-app-events 'crm.#', inter-app-broadcast"
echo "billing-demo <- inter-app-events 'billing.#', inter-app-broadcast"

say "CREATE EXTENSION messaging"
psql_demo -c 'CREATE EXTENSION messaging'

say "scenario (demo/scenario.sql)"
psql_demo -q -At -f "$ROOT/demo/scenario.sql" > "$DIR/scenario.out"
echo "scenario done: $(grep -c . "$DIR/scenario.out" || true) publish_event calls; the last transaction (3 of them) rolled back"

# ---- queries on the extension's own objects: keep them here ----
OUTBOX_COUNT_SQL='SELECT count(*) FROM messaging.outbox'
STATUS_SQL='SELECT * FROM messaging.connection_status'
COUNTERS_SQL='SELECT * FROM messaging.event_counters'
# ----------------------------------------------------------------

say "waiting for the relay to drain the outbox"
deadline=$((SECONDS + TIMEOUT))
left="$(psql_demo -Atc "$OUTBOX_COUNT_SQL")"
while [ "$left" != 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.5
    left="$(psql_demo -Atc "$OUTBOX_COUNT_SQL")"
done
echo "outbox rows left: $left"
[ "$left" = 0 ] || ok=0

# Give the consumers until every expected message arrived (bounded).
count_lines() { if [ -f "$1" ]; then grep -c . "$1" || true; else echo 0; fi; }
while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(count_lines "$DIR/crm.jsonl")" -ge "$EXPECT_CRM" ] &&
       [ "$(count_lines "$DIR/billing.jsonl")" -ge "$EXPECT_BILLING" ]; then
        break
    fi
    sleep 0.5
done
sleep 2  # anything extra would arrive now
for pid in "${consumer_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
consumer_pids=()

show() {
    local app="$1" file="$2" expect="$3" got ghosts
    say "received by ${app}"
    perl -MJSON::PP -e '
        use strict; use warnings;
        my $json = JSON::PP->new;
        printf "%-32s %-26s %-8s %s\n", "routing key", "type", "tenant", "message id";
        while (my $line = <STDIN>) {
            next unless $line =~ /\S/;
            my $m = $json->decode($line);
            my $p = $m->{properties} || {};
            my $ev = eval { $json->decode($m->{body}) };
            $ev = {} unless ref $ev eq "HASH";
            my $h = $p->{headers} || {};
            my $tenant = $ev->{tenantid} // $h->{tenant_id} // $h->{tenantid} // "-";
            my $type = $p->{type} // $ev->{type} // "-";
            my $key = $m->{routingKey} eq "" ? "($m->{exchange})" : $m->{routingKey};
            printf "%-32s %-26s %-8s %s\n", $key, $type, $tenant, $p->{messageId} // $ev->{id} // "-";
        }' < "$file"
    got="$(count_lines "$file")"
    ghosts="$(grep -c 'ghost' "$file" || true)"
    echo "${app}: ${got} messages (expected ${expect}); from the rolled-back transaction: ${ghosts}"
    if [ "$got" -ne "$expect" ] || [ "$ghosts" -ne 0 ]; then ok=0; fi
}
show crm "$DIR/crm.jsonl" "$EXPECT_CRM"
show billing "$DIR/billing.jsonl" "$EXPECT_BILLING"

say "messaging.connection_status"
psql_demo -c "$STATUS_SQL" || ok=0
say "counters"
psql_demo -c "$COUNTERS_SQL" || ok=0

if [ "$ok" = 1 ]; then
    say "demo OK: every committed event arrived once, the rolled-back ones did not"
else
    say "demo FAILED (see above)"
    exit 1
fi
