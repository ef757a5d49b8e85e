# The consumer against a real broker, with Node amqplib playing the other
# applications: every platform event type handled once by plpgsql handlers
# keeping local tables in step (run as the registering role),
# acknowledgements, a failing handler retried exactly max_retries times and
# dead-lettered, malformed messages dead-lettered at once, good messages
# flowing while a poison one waits in a delay queue, and a duplicate
# delivery handled once.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;
my $node = MessagingTest::new_cluster('consumer_events', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.retry_delay' => '200ms',
	'messaging.max_retries' => '2',
	'messaging.max_message_bytes' => '2kB',
	'messaging.poll_interval' => '200ms');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

sub publish
{
	my (@args) = @_;
	my ($rc, $out, $err) = MessagingTest::node('publish', '--url', $url, @args);
	is($rc, 0, "published (@args[0..1])") or diag($err);
	return $out;
}

# Publishes an event of another application to this one (topic exchange).
sub publish_event
{
	my ($type, $data, %opt) = @_;
	return publish('--exchange', 'inter-app-events',
		'--routing-key', "wrapper.$type", '--event', $type,
		'--data', $data, '--source', $opt{source} // 'crm',
		($opt{tenant} ? ('--tenant', $opt{tenant}) : ()));
}

sub query { return $node->safe_psql('postgres', $_[0]) }

sub queue_empty
{
	my ($q) = @_;
	my $info = $mq->queues->{$q};
	return $info && $info->{ready} == 0 && $info->{unacked} == 0;
}

sub wait_queue_empty
{
	my ($q) = @_;
	for (1 .. 600)
	{
		return 1 if queue_empty($q);
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

ok( $node->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'consumer'"),
	'consumer connected');

# The topology: queue bound for this app and for broadcasts, DLQ, delay
# queues, with a consumer.
my $queues = $mq->queues;
is($queues->{'wrapper-events'}{consumers}, 1, 'consumer on wrapper-events');
ok($queues->{'wrapper-events'}{durable}, 'queue is durable');
ok(exists $queues->{'wrapper-events.dlq'}, 'dead letter queue declared');
ok(exists $queues->{'wrapper-events.retry.200ms'}
	  && exists $queues->{'wrapper-events.retry.400ms'},
	'one delay queue per retry tier');

# Local tables kept in step by handlers owned by an application role.
query(<<'SQL');
CREATE ROLE app_owner IN ROLE messaging_admin;
CREATE SCHEMA app AUTHORIZATION app_owner;
SET ROLE app_owner;
CREATE TABLE app.users (id text PRIMARY KEY, email text, active boolean NOT NULL DEFAULT true, org_id text);
CREATE TABLE app.orgs (id text PRIMARY KEY, name text);
CREATE TABLE app.credits (user_id text, amount numeric, tenant text);
CREATE TABLE app.roles (id text PRIMARY KEY, name text);
CREATE TABLE app.runs (who text, event_type text, source text);
CREATE SEQUENCE app.poison_calls;

CREATE FUNCTION app.note(event jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO app.runs VALUES (current_user, event->>'type', event->>'source')
$$;
CREATE FUNCTION app.on_user_created(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.users (id, email, org_id)
	VALUES (event->'data'->>'user_id', event->'data'->>'email', event->'data'->>'org_id')
	ON CONFLICT (id) DO UPDATE SET email = excluded.email, active = true;
END $$;
CREATE FUNCTION app.on_user_deactivated(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	UPDATE app.users SET active = false WHERE id = event->'data'->>'user_id';
END $$;
CREATE FUNCTION app.on_credit_allocated(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.credits VALUES (event->'data'->>'user_id',
		(event->'data'->>'amount')::numeric, event->>'tenantid');
END $$;
CREATE FUNCTION app.on_org_created(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.orgs VALUES (event->'data'->>'org_id', event->'data'->>'name')
	ON CONFLICT (id) DO NOTHING;
END $$;
CREATE FUNCTION app.on_role(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	CASE event->>'type'
		WHEN 'role.created' THEN
			INSERT INTO app.roles VALUES (event->'data'->>'role_id', event->'data'->>'name');
		WHEN 'role.updated' THEN
			UPDATE app.roles SET name = event->'data'->>'name' WHERE id = event->'data'->>'role_id';
		WHEN 'role.deleted' THEN
			DELETE FROM app.roles WHERE id = event->'data'->>'role_id';
	END CASE;
END $$;
CREATE FUNCTION app.poison(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM nextval('app.poison_calls');
	INSERT INTO app.runs VALUES ('poison', event->>'type', event->>'source');
	RAISE EXCEPTION 'cannot digest %', event->>'id';
END $$;

SELECT messaging.register_handler('user.created', 'app.on_user_created(jsonb)');
SELECT messaging.register_handler('user.deactivated', 'app.on_user_deactivated(jsonb)');
SELECT messaging.register_handler('credit.allocated', 'app.on_credit_allocated(jsonb)');
SELECT messaging.register_handler('org.created', 'app.on_org_created(jsonb)');
SELECT messaging.register_handler('role.*', 'app.on_role(jsonb)');
SELECT messaging.register_handler('#', 'app.note(jsonb)');
SELECT messaging.register_handler('poison.#', 'app.poison(jsonb)');
SQL

# --- every platform event type, once ---
publish_event('org.created', '{"org_id":"o-1","name":"Acme"}');
publish_event('user.created', '{"user_id":"u-1","email":"ann@acme.test","org_id":"o-1"}');
publish_event('user.created', '{"user_id":"u-2","email":"bob@acme.test","org_id":"o-1"}');
publish_event('user.deactivated', '{"user_id":"u-2"}');
publish_event('credit.allocated', '{"user_id":"u-1","amount":"12.50"}', tenant => 'acme');
publish_event('role.created', '{"role_id":"r-1","name":"viewer"}');
publish_event('role.updated', '{"role_id":"r-1","name":"editor"}');
publish_event('role.created', '{"role_id":"r-2","name":"temp"}');
publish_event('role.deleted', '{"role_id":"r-2"}');
# a broadcast reaches this application through the fanout exchange
publish('--exchange', 'inter-app-broadcast', '--routing-key', '',
	'--event', 'org.created', '--data', '{"org_id":"o-2","name":"Globex"}',
	'--source', 'billing');

ok($node->poll_query_until('postgres', 'SELECT count(*) = 10 FROM app.runs'),
	'ten events handled');
is(query("SELECT string_agg(id || ':' || email || ':' || active || ':' || org_id, ',' ORDER BY id) FROM app.users"),
	'u-1:ann@acme.test:true:o-1,u-2:bob@acme.test:false:o-1',
	'user.created and user.deactivated applied');
is(query("SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM app.orgs"),
	'o-1:Acme,o-2:Globex', 'org.created applied, from topic and fanout');
is(query("SELECT string_agg(user_id || ':' || amount || ':' || tenant, ',') FROM app.credits"),
	'u-1:12.50:acme', 'credit.allocated applied once, with its tenant');
is(query("SELECT string_agg(id || ':' || name, ',') FROM app.roles"),
	'r-1:editor', 'role.created, role.updated and role.deleted applied in order');
is(query("SELECT string_agg(DISTINCT who, ',') FROM app.runs"),
	'app_owner', 'handlers ran as the role that registered them');
is(query("SELECT count(*) FROM messaging.handled_events"), '10',
	'each event id recorded once');
is(query("SELECT sum(received) || '/' || sum(acknowledged) || '/' || sum(unhandled) FROM messaging.event_counters WHERE target_app = 'wrapper'"),
	'10/10/0', 'counters: received and acknowledged');
is(query("SELECT source_app || ':' || received FROM messaging.event_counters WHERE event_type = 'org.created' AND target_app = 'wrapper' ORDER BY 1"),
	"billing:1\ncrm:1", 'counters per source application');

# --- acknowledgement of an event this application published ---
my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue bound');
my $published = query("SELECT messaging.publish_event('invoice.sent', '{\"n\":1}', 'crm')");
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM messaging.awaiting_ack WHERE event_id = '$published'"),
	'directed event awaits its acknowledgement');
publish_event('event.acknowledged', qq({"event_id":"$published","success":true}));
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM messaging.awaiting_ack WHERE event_id = '$published'"),
	'event.acknowledged settled the event');
is(query("SELECT status FROM messaging.event_status('$published')"),
	'acknowledged', 'event_status reports it acknowledged');

# --- unhandled: no handler matches (the catch-all goes first) ---
query("SELECT messaging.unregister_handler('#', 'app.note(jsonb)')");
publish_event('invoice.paid', '{}');
ok($node->poll_query_until('postgres',
		"SELECT coalesce(sum(unhandled), 0) = 1 FROM messaging.event_counters WHERE event_type = 'invoice.paid'"),
	'an event without handler is counted as unhandled');
ok(wait_queue_empty('wrapper-events'), 'and acknowledged, not dead-lettered');
is(query("SELECT count(*) FROM messaging.dead_letters"), '0', 'no dead letter');

# --- a failing handler: max_retries retries, then a dead letter ---
publish_event('poison.pill', '{"dose":1}');
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM messaging.dead_letters WHERE event_type = 'poison.pill'"),
	'poison message dead-lettered');
is(query("SELECT last_value FROM app.poison_calls"), '3',
	'handler ran once plus max_retries (2) times');
is(query("SELECT count(*) FROM app.runs WHERE who = 'poison'"), '0',
	'the failed runs left nothing behind');
my ($attempts, $reason, $error, $hdr_attempt, $rk) = split /\|/,
  query("SELECT attempts, reason, error, headers->>'x-messaging-attempt', routing_key FROM messaging.dead_letters WHERE event_type = 'poison.pill'");
is($attempts, 3, 'dead letter counts three attempts');
is($reason, 'failed', 'reason failed');
like($error, qr/^app\.poison\(jsonb\) failed: cannot digest [0-9a-f-]{36}$/,
	'dead letter keeps the handler error');
is($hdr_attempt, 2, 'last delivery carried attempt header 2');
is($rk, 'wrapper-events', 'it arrived from the last delay queue');
ok(wait_queue_empty('wrapper-events.retry.200ms')
	  && wait_queue_empty('wrapper-events.retry.400ms'),
	'delay queues drained');

($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'wrapper-events.dlq', '--passive', '--count', '1',
	'--timeout-ms', '10000');
is($rc, 0, 'message read from the DLQ') or diag($err);
my ($dlq_msg) = MessagingTest::decode_messages($out);
my $h = $dlq_msg->{properties}{headers} // {};
is($h->{'x-messaging-attempt'}, 3, 'DLQ copy carries the attempt count');
like($h->{'x-messaging-error'}, qr/cannot digest/, 'DLQ copy carries the error');
is($h->{'x-messaging-reason'}, 'failed', 'DLQ copy carries the reason');
ok(!exists $h->{'x-death'}, 'x-death is not carried over');
is(MessagingTest::decode_json($dlq_msg->{body})->{type}, 'poison.pill',
	'DLQ copy has the original body');

# --- malformed messages: dead-lettered at once ---
my $big = '{"id":"0b9f3c52-5d7e-4e07-9f4c-111111111111","type":"user.created","data":"'
  . ('x' x 3000) . '"}';
my %bad = (
	'bad-utf8' => [ '--raw-hex', '7b22c328ff227d' ],
	'bad-json' => [ '--body', '{"id": "x", "type": ' ],
	'nul' => [ '--body', '{"id":"0b9f3c52-5d7e-4e07-9f4c-222222222222","type":"user.created","data":"a\u0000b"}' ],
	'no-type' => [ '--body', '{"id":"0b9f3c52-5d7e-4e07-9f4c-333333333333","data":{}}' ],
	'no-id' => [ '--body', '{"type":"user.created","data":{}}' ],
	'not-uuid' => [ '--body', '{"id":"order-42","type":"user.created","data":{}}' ],
	'not-object' => [ '--body', '[1,2,3]' ],
	'oversize' => [ '--body', $big ],);
for my $id (sort keys %bad)
{
	publish('--routing-key', 'wrapper-events', '--message-id', $id, @{ $bad{$id} });
}
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 8 FROM messaging.dead_letters WHERE reason = 'invalid'"),
	'eight malformed messages dead-lettered');
my %got = map { split /\|/, $_, 2 } split /\n/,
  query("SELECT message_id, attempts || ' ' || error FROM messaging.dead_letters WHERE reason = 'invalid'");
like($got{'bad-utf8'}, qr/^1 message body is not valid UTF-8/, 'invalid UTF-8');
like($got{'bad-json'}, qr/^1 message body is not valid JSON/, 'invalid JSON');
like($got{'nul'}, qr/^1 message body is not valid JSON: .*\\u0000/, 'JSON with \u0000');
like($got{'no-type'}, qr/^1 event has no "type" attribute/, 'missing type');
like($got{'no-id'}, qr/^1 event has no "id" attribute/, 'missing id');
like($got{'not-uuid'}, qr/^1 event id "order-42" is not a UUID/, 'id not a UUID');
like($got{'not-object'}, qr/^1 message body is not a JSON object/, 'not an object');
like($got{'oversize'}, qr/^1 message body of \d+ bytes exceeds "messaging.max_message_bytes"/,
	'oversize body');
is(query("SELECT encode(body, 'hex') FROM messaging.dead_letters WHERE message_id = 'bad-utf8'"),
	'7b22c328ff227d', 'raw body kept byte for byte');
is(query("SELECT count(*) FROM app.users"), '2', 'no malformed message reached a handler');
is(query("SELECT state FROM messaging.connection_status WHERE worker = 'consumer'"),
	'connected', 'consumer still connected');

# --- good messages keep flowing while a poison one waits ---
$node->append_conf('postgresql.conf', "messaging.retry_delay = '5s'\n");
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT reconnects >= 1 AND state = 'connected' FROM messaging.connection_status WHERE worker = 'consumer'"),
	'consumer reconnected with the new delays');
publish_event('poison.slow', '{}');
ok($node->poll_query_until('postgres', "SELECT last_value = 4 FROM app.poison_calls"),
	'poison message failed once');
for my $i (1 .. 10)
{
	publish_event('user.created', qq({"user_id":"flow-$i","email":"f$i\@acme.test"}));
}
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 10 FROM app.users WHERE id LIKE 'flow-%'"),
	'ten good messages handled');
is(query("SELECT last_value FROM app.poison_calls"), '4',
	'while the poison message still waits for its first retry');
is($mq->queue_messages('wrapper-events.retry.5000ms'), 1,
	'it waits in the 5 s delay queue');

# --- the same event delivered twice is handled once ---
my $dup = '{"specversion":"1.0","id":"7d1e5f00-0000-4000-8000-00000000d0d0","source":"crm","type":"credit.allocated","data":{"user_id":"u-1","amount":"1"}}';
publish('--routing-key', 'wrapper-events', '--body', $dup, '--count', '2');
ok(wait_queue_empty('wrapper-events'), 'both copies consumed');
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 2 FROM app.credits"),
	'duplicate handled');
sleep 1;
is(query("SELECT count(*) FROM app.credits WHERE amount = 1"), '1',
	'the second copy did not run the handler');

my ($handled, $failed) = split /\|/,
  query("SELECT published, failed FROM messaging.connection_status WHERE worker = 'consumer'");
ok($handled >= 23, "status counts handled events ($handled)");
is($failed, 9, 'status counts dead-lettered messages');

# the slow poison message ends in the DLQ as well (two retries: 5 s + 10 s)
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM messaging.dead_letters WHERE event_type = 'poison.slow'"),
	'waiting poison message dead-lettered in the end');
ok($node->poll_query_until('postgres',
		"SELECT dead_letter_depth = 9 FROM messaging.connection_status WHERE worker = 'consumer'"),
	'status reports the DLQ depth read from the broker');

$node->stop;
$mq->stop;
done_testing();
