#!/usr/bin/env bash
# The messaging extension's demo (`demo/run.sh`, as root). Builds and installs
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
    echo "demo/run.sh: run as root" >&2
    exit 1
fi

say "dependencies"
"$ROOT/test/scripts/install-deps.sh"

say "build and install the extension"
make -s -C "$ROOT" PG_CONFIG="$PGBIN/pg_config"
make -s -C "$ROOT" PG_CONFIG="$PGBIN/pg_config" install

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

say "CREATE EXTENSION messaging, and handlers for incoming events (demo/handlers.sql)"
psql_demo -c 'CREATE EXTENSION messaging'
psql_demo -q -f "$ROOT/demo/handlers.sql" > /dev/null
psql_demo -c "SELECT pattern, handler, owner FROM messaging.handlers ORDER BY id"

say "scenario (demo/scenario.sql)"
psql_demo -q -At -f "$ROOT/demo/scenario.sql" > "$DIR/scenario.out"
echo "scenario done: $(grep -c . "$DIR/scenario.out" || true) publish_event calls; the last transaction (3 of them) rolled back"

# ---- queries on the extension's own objects: keep them here ----
OUTBOX_COUNT_SQL='SELECT count(*) FROM messaging.pending_events'
STATUS_SQL='SELECT worker, pid, state, broker_host, broker_port, reconnects, published, failed, backlog, last_error FROM messaging.connection_status'
COUNTERS_SQL="SELECT coalesce(nullif(tenant_id, ''), '-') AS tenant, source_app, coalesce(nullif(target_app, ''), '*') AS target_app, event_type, sum(published) AS published, sum(acknowledged) AS acknowledged, sum(failed) AS failed, sum(received) AS received, sum(unhandled) AS unhandled FROM messaging.event_counters GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
AWAITING_SQL='SELECT count(*) FROM messaging.awaiting_ack'
HANDLED_SQL='SELECT count(*) FROM messaging.handled_events'
LOCAL_SQL="SELECT 'user' AS kind, id, tenant, email AS detail, active::text AS state FROM app.users UNION ALL SELECT 'org', id, tenant, name, '' FROM app.orgs UNION ALL SELECT 'role', id, tenant, name, '' FROM app.roles UNION ALL SELECT 'credit', account, tenant, amount::text, granted_by FROM app.credits ORDER BY 1, 2"
MATRIX_SQL="SELECT coalesce(tenant_id, '-') AS tenant, source_app, target_app, published, acknowledged, failed, pending, round(success_rate * 100, 1) AS success_pct FROM messaging.communication_matrix ORDER BY 1, 2, 3"
FAILED_SQL='SELECT event_type, target_app, tenant_id, reason, error FROM messaging.failed_events ORDER BY failed_at'
HEALTH_SQL='SELECT * FROM messaging.sync_health'
# ----------------------------------------------------------------

say "waiting for the relay to drain the outbox"
deadline=$((SECONDS + TIMEOUT))
left="$(psql_demo -Atc "$OUTBOX_COUNT_SQL")"
while [ "$left" != 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.5
    left="$(psql_demo -Atc "$OUTBOX_COUNT_SQL")"
done
echo "events left unpublished: $left"
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

# The other applications answer: crm acknowledges every event addressed to
# it, billing all but one, which it refuses (a negative acknowledgement).
# They also send events of their own to this application's queue, which
# its handlers apply to the local tables.
say "crm and billing acknowledge what they received and send events of their own"
PUBLISH_JS="$ROOT/test/interop/publish.js"
acks() {
    # acks FILE SOURCE NEGATIVE: one event.acknowledged per directed message
    perl -MJSON::PP -e '
        use strict; use warnings;
        my ($source, $negative) = @ARGV;
        my $json = JSON::PP->new->canonical;
        my @ids;
        while (my $line = <STDIN>) {
            next unless $line =~ /\S/;
            my $m = $json->decode($line);
            next unless $m->{exchange} eq "inter-app-events";
            push @ids, $m->{properties}{messageId};
        }
        for my $i (0 .. $#ids) {
            open(my $u, "<", "/proc/sys/kernel/random/uuid") or die;
            chomp(my $uuid = <$u>);
            my $ok = !($negative && $i == $#ids);
            my $data = { event_id => $ids[$i], success => $ok ? JSON::PP::true : JSON::PP::false };
            $data->{error} = "account is frozen pending a billing review" unless $ok;
            print $json->encode({ specversion => "1.0", id => $uuid, source => $source,
                type => "event.acknowledged", time => "2026-12-04T10:00:00Z",
                datacontenttype => "application/json", data => $data }), "\n";
        }' "$2" "$3" < "$1"
}
acks "$DIR/crm.jsonl" crm 0 > "$DIR/crm-acks.jsonl"
acks "$DIR/billing.jsonl" billing 1 > "$DIR/billing-acks.jsonl"
node "$PUBLISH_JS" --url "$URL" --routing-key wrapper-events --app-id crm \
    --bodies-file "$DIR/crm-acks.jsonl" > /dev/null
node "$PUBLISH_JS" --url "$URL" --routing-key wrapper-events --app-id billing \
    --bodies-file "$DIR/billing-acks.jsonl" > /dev/null
incoming=0
send() {
    # send SOURCE TYPE TENANT DATA: one event from another application
    node "$PUBLISH_JS" --url "$URL" --exchange inter-app-events \
        --routing-key "wrapper.$2" --app-id "$1" --source "$1" \
        --event "$2" --tenant "$3" --data "$4" > /dev/null
    incoming=$((incoming + 1))
}
send crm user.created acme '{"user_id": "usr-acme-0042", "email": "road.runner@acme.example"}'
send crm user.created globex '{"user_id": "usr-globex-0007", "email": "hank@globex.example"}'
send crm user.deactivated globex '{"user_id": "usr-globex-0007"}'
send crm org.created initech '{"org_id": "org-initech-emea", "name": "Initech EMEA"}'
send crm role.created acme '{"role_id": "role-acme-support", "name": "Support"}'
send crm role.updated acme '{"role_id": "role-acme-support", "name": "Customer Support"}'
send billing credit.allocated acme '{"account_id": "acct-acme", "amount": {"value": "250.00", "currency": "USD"}}'
send billing credit.allocated globex '{"account_id": "acct-globex", "amount": {"value": "75.50", "currency": "USD"}}'
acks_sent=$(( $(count_lines "$DIR/crm-acks.jsonl") + $(count_lines "$DIR/billing-acks.jsonl") ))
echo "sent ${acks_sent} acknowledgements and ${incoming} events to the queue wrapper-events"

# The consumer handles them; the wrapper's own broadcasts come back to its
# queue too (the handlers skip them).
deadline=$((SECONDS + TIMEOUT))
while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(psql_demo -Atc "$AWAITING_SQL")" = 0 ] &&
       [ "$(psql_demo -Atc "$HANDLED_SQL")" -ge $((acks_sent + incoming)) ]; then
        break
    fi
    sleep 0.5
done
[ "$(psql_demo -Atc "$AWAITING_SQL")" = 0 ] || ok=0

say "the wrapper's local tables, kept in step by its handlers"
psql_demo -c "$LOCAL_SQL" || ok=0

say "messaging.connection_status"
psql_demo -c "$STATUS_SQL" || ok=0
say "messaging.event_counters, summed over their writers (hourly; '*' is a broadcast)"
psql_demo -c "$COUNTERS_SQL" || ok=0
say "messaging.failed_events"
psql_demo -c "$FAILED_SQL" || ok=0
say "messaging.communication_matrix: who talks to whom, per tenant"
psql_demo -c "$MATRIX_SQL" || ok=0
say "messaging.sync_health"
psql_demo -x -c "$HEALTH_SQL" || ok=0

if [ "$ok" = 1 ]; then
    say "demo OK: every committed event arrived once, the rolled-back ones did not; incoming events were handled"
else
    say "demo FAILED (see above)"
    exit 1
fi
