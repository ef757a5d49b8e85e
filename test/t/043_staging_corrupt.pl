# A staged row the relay cannot read (only a bug or a damaged page makes
# one; here a superuser writes it) must neither crash the relay nor stop
# it: the relay moves the row to messaging.failed_events as one
# unpublishable entry carrying its bytes, logs a warning, and goes on
# publishing the events around it.  The SQL readers of staged rows skip
# it with a warning.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;
ok(MessagingTest::bind_queue($mq, 'crm-staged', 'inter-app-events:crm.#'),
	'crm queue declared and bound');

my $node = MessagingTest::new_cluster('corrupt', $mq);
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
$node->safe_psql('postgres', q{
	CREATE TABLE items (id int PRIMARY KEY, tenant text, note text);
	SELECT messaging.create_event_trigger('items', 'item', 'crm', 'tenant');
});

# Hold the relay off (wrong port) while the rows are written, so that the
# bad rows sit between good ones.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET messaging.broker_url = 'amqp://guest:guest@127.0.0.1:1/%2f';
	SELECT pg_reload_conf();
});
ok( $node->poll_query_until('postgres',
		"SELECT state <> 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'relay disconnected');

# Good events, then two bad rows (a record whose jsonb claims a huge
# array, and an object whose keys are not strings), then good events.
$node->safe_psql('postgres',
	"INSERT INTO items SELECT g, 'acme', 'n' || g FROM generate_series(1, 300) g");
my $bad_ids = $node->safe_psql('postgres', q{
	WITH ids AS (
		SELECT messaging.uuid_generate_v7() AS a, messaging.uuid_generate_v7() AS b)
	INSERT INTO messaging.outbox_staged
	SELECT v.id, v.id, 'item.created', 'crm', 'wrapper', now(), 1, NULL, body
	  FROM ids, LATERAL (VALUES
		(ids.a, '\x20000000ffff000001a240ff00007000800000000000000220000000ffff0f40'::bytea),
		(ids.b, '\x20000000ffff000001a240ff00007000800000000000000320000000e8030020'::bytea)
	  ) v(id, body)
	RETURNING first_id});
my @bad = split /\n/, $bad_ids;
is(scalar @bad, 2, 'two unreadable staged rows written');
$node->safe_psql('postgres',
	"INSERT INTO items SELECT g, 'acme', 'n' || g FROM generate_series(301, 600) g");

# The readers skip the bad rows, with a warning.
my ($rc, $out, $err) = $node->psql('postgres',
	'SELECT count(*) FROM messaging.pending_events');
is($rc, 0, 'pending_events can be read');
is($out, '600', 'pending_events shows the 600 good events');
like($err, qr/WARNING:  skipping staged events starting at .*: a payload is not valid jsonb/,
	'pending_events warns about the unreadable rows');

# Let the relay go.
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET messaging.broker_url;
	SELECT pg_reload_conf();
});
ok( $node->poll_query_until('postgres',
		'SELECT count(*) = 0 FROM messaging.outbox_staged'),
	'relay moved every staged row, the unreadable ones included');
ok( $node->poll_query_until('postgres',
		'SELECT count(*) = 0 FROM messaging.pending_events'),
	'every good event published');

($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-staged', '--count', '600', '--timeout-ms', '60000',
	'--fields', 'body.data.id');
is($rc, 0, '600 messages consumed') or diag($err);
my @ids = sort { $a <=> $b } map { (split /\t/)[0] } grep { /\S/ } split /\n/, $out;
is(scalar @ids, 600, 'the 600 good events arrived');
is_deeply(\@ids, [1 .. 600], 'each good row once');

is( $node->safe_psql('postgres', q{
		SELECT string_agg(event_id::text || ' ' || reason || ' ' ||
						  (envelope->>'staged_events') ||
						  ' ' || (error LIKE 'staged events could not be read: %')::text, ',' ORDER BY event_id)
		  FROM messaging.failed_events}),
	join(',', map { "$_ unpublishable 1 true" } sort @bad),
	'each unreadable row is one unpublishable failure, with its event count');
like( $node->safe_psql('postgres', q{
		SELECT envelope->>'staged_body' FROM messaging.failed_events ORDER BY event_id LIMIT 1}),
	qr/^20000000ffff0000/, 'the failure keeps the row\'s bytes');

my $log = slurp_file($node->logfile);
like($log, qr/WARNING:  messaging relay could not read staged events starting at/,
	'the relay logged the unreadable rows');
unlike($log, qr/terminated by signal|PANIC|server process .* was terminated/,
	'no process crashed');
is( $node->safe_psql('postgres',
		"SELECT state FROM messaging.connection_status WHERE worker = 'relay'"),
	'connected', 'relay still connected');

$node->stop;
done_testing();
