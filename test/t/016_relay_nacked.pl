# Events the broker rejects (basic.nack): a queue limited to one message
# with overflow reject-publish (set by policy) is the only one bound for
# app "full". The relay retries a rejected event on later passes and,
# after messaging.publish_max_attempts rejections, moves it to
# messaging.failed_events with reason 'nacked'. Other events keep flowing.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

$mq->ctl('set_policy', '--apply-to', 'queues', 'full-limit', '^full-inbox$',
	'{"max-length": 1, "overflow": "reject-publish"}');
for my $q ([ 'full-inbox', 'inter-app-events:full.#' ],
	[ 'crm-inbox', 'inter-app-events:crm.#' ])
{
	my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
		'--queue', $q->[0], '--declare-exchanges', '--bind', $q->[1],
		'--setup-only');
	is($rc, 0, "$q->[0] declared and bound") or diag($err);
}

my $node = MessagingTest::new_cluster('nacked', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.publish_max_attempts' => '3');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok(MessagingTest::relay_connected($node), 'relay connected');

# The first event for "full" fills its queue.
my $id_fill = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('doc.stored', '{"n": 1}', 'full')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'first event published');
is($mq->queue_messages('full-inbox'), 1, 'queue for "full" is full');

# The second is rejected three times.
my $id_nacked = $node->safe_psql('postgres', q{
	SELECT messaging.publish_event('doc.stored', '{"n": 2}', 'full',
		tenant_id => 'acme', correlation_id => 'c-2')});
my $id_crm = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('user.created', '{"n": 3}', 'crm')});
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM messaging.failed_events WHERE event_id = '$id_nacked'"),
	'rejected event reached failed_events');
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox'),
	'0', 'outbox empty');
is( $node->safe_psql('postgres', qq{
		SELECT format('%s %s %s %s %s %s %s', reason, attempts, exchange,
			routing_key, tenant_id, correlation_id,
			envelope ->> 'id' = event_id::text)
		FROM messaging.failed_events WHERE event_id = '$id_nacked'}),
	'nacked 3 inter-app-events full.doc.stored acme c-2 t',
	'failed_events: reason nacked after 3 attempts, route and envelope');
like( $node->safe_psql('postgres',
		"SELECT error FROM messaging.failed_events WHERE event_id = '$id_nacked'"),
	qr/rejected the message 3 times/, 'error counts the rejections');
is($mq->queue_messages('full-inbox'), 1, 'the full queue still holds only the first event');
is($mq->queue_messages('crm-inbox'), 1, 'the event for crm went through meanwhile');
is( $node->safe_psql('postgres', q{
		SELECT format('%s/%s', sum(published), sum(failed)) FROM messaging.event_counters
		WHERE target_app = 'full'}),
	'1/1', 'counters: one published, one failed for "full"');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.awaiting_ack WHERE event_id = '$id_nacked'"),
	'0', 'a rejected event does not await an acknowledgement');
is( $node->safe_psql('postgres', q{
		SELECT format('%s %s %s', state, published, failed)
		FROM messaging.connection_status WHERE worker = 'relay'}),
	'connected 2 1', 'connection_status: 2 published, 1 failed');

# A rejected event that the broker takes on a later attempt is published
# once and keeps its id (with many attempts allowed, so that it cannot
# fail before the queue gets room).
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET messaging.publish_max_attempts = 1000;
	SELECT pg_reload_conf();});
my $id_late = $node->safe_psql('postgres', q{
	SELECT messaging.publish_event('doc.stored', '{"n": 4}', 'full')});
ok( $node->poll_query_until('postgres',
		"SELECT attempts >= 1 FROM messaging.outbox WHERE id = '$id_late'"),
	'the next event is rejected too and stays in the outbox');
is( $node->safe_psql('postgres', "SELECT last_error FROM messaging.outbox WHERE id = '$id_late'"),
	'broker rejected the message', 'outbox row says why');
$mq->purge_queue('full-inbox');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'once the queue has room the event is published');
my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'full-inbox', '--count', '1', '--timeout-ms', '20000');
is((MessagingTest::decode_messages($out))[0]{properties}{messageId}, $id_late,
	'it arrives with its id');
isnt( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.failed_events WHERE event_id = '$id_late'"),
	'1', 'and is not in failed_events');

$node->stop;
done_testing();
