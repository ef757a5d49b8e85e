# Events the broker cannot route (no queue bound for their routing key)
# come back as basic.return: the relay records them in
# messaging.failed_events with reason 'unroutable', their exchange, routing
# key and envelope, and goes on publishing. Returns interleaved with
# routable events in one large pass must neither lose nor duplicate the
# routable ones.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue declared and bound');

# DEBUG1 shows the relay's per-pass summary, checked at the end.
my $node = MessagingTest::new_cluster('unroutable', $mq,
	'messaging.app_name' => 'wrapper', 'log_min_messages' => 'debug1');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok(MessagingTest::relay_connected($node), 'relay connected');

# before / unroutable / after, each in its own transaction.
my $id_before = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('user.created', '{"n": 1}', 'crm')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'first event relayed');
my $id_lost = $node->safe_psql('postgres', q{
	SELECT messaging.publish_event('user.created', '{"n": 2, "who": "nobody"}',
		target_app => 'nobody', tenant_id => 't-1', correlation_id => 'c-1')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'unroutable event left the outbox');
my $id_after = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('user.created', '{"n": 3}', 'crm')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'event after it relayed');

($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', '2', '--timeout-ms', '20000');
is($rc, 0, 'two messages for crm') or diag($err);
is_deeply([ map { $_->{properties}{messageId} } MessagingTest::decode_messages($out) ],
	[ $id_before, $id_after ], 'the events before and after the unroutable one arrived');

my $row = $node->safe_psql('postgres', qq{
	SELECT event_type, source_app, target_app, tenant_id, correlation_id,
		   exchange, routing_key, reason, attempts,
		   envelope = messaging.event_envelope(event_id, event_type, source_app,
				created_at, '{"n": 2, "who": "nobody"}', target_app, tenant_id,
				correlation_id),
		   envelope ->> 'id' = event_id::text,
		   envelope -> 'data' = '{"n": 2, "who": "nobody"}'::jsonb
	FROM messaging.failed_events WHERE event_id = '$id_lost'});
is($row,
	'user.created|wrapper|nobody|t-1|c-1|inter-app-events|nobody.user.created|unroutable|1|t|t|t',
	'failed_events row: reason unroutable, exchange, routing key, envelope');
like( $node->safe_psql('postgres',
		"SELECT error FROM messaging.failed_events WHERE event_id = '$id_lost'"),
	qr/312 NO_ROUTE.*inter-app-events.*nobody\.user\.created/,
	'error names the broker reply, exchange and routing key');
is( $node->safe_psql('postgres', q{
		SELECT format('%s/%s', published, failed) FROM messaging.event_counters
		WHERE target_app = 'nobody'}),
	'0/1', 'counted as failed, not published');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.awaiting_ack WHERE event_id = '$id_lost'"),
	'0', 'an unroutable event does not await an acknowledgement');
is( $node->safe_psql('postgres', q{
		SELECT format('%s %s %s', state, published, failed)
		FROM messaging.connection_status WHERE worker = 'relay'}),
	'connected 2 1', 'connection_status counts 2 published, 1 failed');

# One transaction of 1500 events, every third one unroutable: the broker's
# returns and (often multiple) acks interleave within one pass.
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced', jsonb_build_object('i', i),
		CASE WHEN i % 3 = 0 THEN 'nobody' ELSE 'crm' END)
	FROM generate_series(1, 1500) i});
ok( $node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'mixed batch left the outbox');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM messaging.failed_events
		WHERE event_type = 'item.synced' AND reason = 'unroutable'
		  AND routing_key = 'nobody.item.synced'}),
	'500', 'the 500 unroutable events are in failed_events');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM messaging.failed_events
		WHERE event_type = 'item.synced' AND target_app <> 'nobody'}),
	'0', 'no routable event in failed_events');

($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', '1000', '--timeout-ms', '60000');
is($rc, 0, '1000 routable events consumed') or diag($err);
my %seen;
for my $m (MessagingTest::decode_messages($out))
{
	my $ce = MessagingTest::decode_json($m->{body});
	$seen{ $ce->{data}{i} }++;
}
is_deeply([ sort { $a <=> $b } keys %seen ],
	[ grep { $_ % 3 != 0 } 1 .. 1500 ], 'every routable event arrived');
is($mq->queue_messages('crm-inbox'), 0,
	'no duplicate copies queued (nothing failed, so each event is published once)');
is( $node->safe_psql('postgres', q{
		SELECT format('%s %s', published, failed)
		FROM messaging.connection_status WHERE worker = 'relay'}),
	'1002 501', 'connection_status counts every outcome once');
is( $node->safe_psql('postgres', q{
		SELECT format('%s/%s', sum(published), sum(failed)) FROM messaging.event_counters
		WHERE event_type = 'item.synced'}),
	'1000/500', 'counters: 1000 published, 500 failed');

# Each pass reports how many of its events were still unconfirmed when it
# committed: never negative (a return followed by its ack and then a
# multiple ack covering it must settle the event once).
$node->stop;
my @unsettled = slurp_file($node->logfile) =~ /messaging relay published \d+ events, \d+ failed, (-?\d+) unsettled/g;
ok(scalar @unsettled, 'relay reported its passes');
is_deeply([ grep { $_ < 0 } @unsettled ], [],
	'the count of unconfirmed events never goes negative');

done_testing();
