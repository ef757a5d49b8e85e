# Identifiers at their length limits fill the AMQP short strings exactly
# (routing key "<63-byte app>.<191-byte type>" is 255 bytes) and arrive
# intact. An outbox row that cannot be published at all (written into the
# table directly, bypassing publish_event()'s checks, with a routing key
# longer than AMQP allows) must not stop the relay from publishing the
# events after it.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

my $app = 'a' x 63;
my $type = join('.', ('t' x 63) x 3);    # 191 bytes
my $corr = 'c' x 255;
is(length($app) + 1 + length($type), 255, 'routing key of 255 bytes');

my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'long-inbox', '--declare-exchanges',
	'--bind', "inter-app-events:$app.#", '--setup-only');
is($rc, 0, 'queue for the long app name bound') or diag($err);
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--bind', 'inter-app-events:crm.#', '--setup-only');
is($rc, 0, 'crm queue bound') or diag($err);

my $node = MessagingTest::new_cluster('limits', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.reconnect_max_delay' => '1s');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok(MessagingTest::relay_connected($node), 'relay connected');

my $id = $node->safe_psql('postgres', qq{
	SELECT messaging.publish_event('$type', '{"long": true}', '$app',
		tenant_id => '${\('t' x 128)}', source_app => '$app',
		correlation_id => '$corr')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'event with identifiers at their limits published');
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'long-inbox', '--count', '1', '--timeout-ms', '20000');
is($rc, 0, 'it arrived') or diag($err);
my ($m) = MessagingTest::decode_messages($out);
is($m->{routingKey}, "$app.$type", '255-byte routing key');
is($m->{properties}{type}, $type, 'type property');
is($m->{properties}{appId}, $app, 'appId property');
is($m->{properties}{correlationId}, $corr, '255-byte correlationId');
is($m->{properties}{messageId}, $id, 'messageId');

# A row no AMQP client can send, then an ordinary event.
$node->safe_psql('postgres', q{
	INSERT INTO messaging.outbox (id, event_type, payload, target_app,
		source_app, created_at)
	VALUES (messaging.uuid_generate_v7(), 'poison.' || repeat('p', 300),
		'{"poison": true}', 'crm', 'wrapper', now())});
my $id_after = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('user.created', '{"after": true}', 'crm')});
# Bounded wait (30 s): the relay needs well under a second for this.
my $published = 0;
for (1 .. 300)
{
	$published = $node->safe_psql('postgres',
		"SELECT count(*) = 0 FROM messaging.outbox WHERE id = '$id_after'") eq 't';
	last if $published;
	select(undef, undef, undef, 0.1);
}
ok($published, 'the event after an unpublishable row is published');
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', '1', '--timeout-ms', '5000');
my @got = MessagingTest::decode_messages($out);
is(($got[0] // {})->{properties}{messageId} // '', $id_after, 'and arrives');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.outbox WHERE event_type LIKE 'poison.%'"),
	'0', 'the unpublishable row left the outbox');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.failed_events WHERE event_type LIKE 'poison.%'"),
	'1', 'and is recorded in failed_events');
my $log = slurp_file($node->logfile);
my $lost = () = $log =~ /messaging relay lost its connection/g;
cmp_ok($lost, '<=', 1, "the unpublishable row does not make the relay reconnect over and over ($lost)");

# A broker whose max_message_size is below the envelope of an allowed
# payload closes the channel on that message: the same must hold.
$node->safe_psql('postgres', q{DELETE FROM messaging.outbox WHERE event_type LIKE 'poison.%'});
$mq->stop;
open my $fh, '>', $mq->dir . '/advanced.config' or die $!;
print $fh "[{rabbit, [{max_message_size, 262144}]}].\n";
close $fh;
$mq->start;
ok(MessagingTest::relay_connected($node), 'relay connected to the broker with a 256 kB message limit');
my $offset = -s $node->logfile;
my $id_big = $node->safe_psql('postgres', q{
	SELECT messaging.publish_event('blob.stored',
		jsonb_build_object('s', repeat('x', 300000)), 'crm')});
$id_after = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('user.created', '{"after": "big"}', 'crm')});
$published = 0;
for (1 .. 300)
{
	$published = $node->safe_psql('postgres',
		"SELECT count(*) = 0 FROM messaging.outbox WHERE id = '$id_after'") eq 't';
	last if $published;
	select(undef, undef, undef, 0.1);
}
ok($published, 'the event after one the broker refuses as too large is published');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.failed_events WHERE event_id = '$id_big'"),
	'1', 'the refused event is recorded in failed_events');
$log = substr(slurp_file($node->logfile), $offset);
$lost = () = $log =~ /messaging relay lost its connection/g;
cmp_ok($lost, '<=', 1, "the refused event does not make the relay reconnect over and over ($lost)");
like($log, qr/message size|PRECONDITION_FAILED/i, 'the broker\'s reason is logged');

# Many refused events scattered through a large stream, and rows no AMQP
# message can carry among them: every other event arrives, every refused
# one fails, and the log does not grow with the stream.
my ($rc2, $out2, $err2) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', '1', '--timeout-ms', '5000');
$mq->purge_queue('crm-inbox');
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced',
		CASE WHEN i % 100 = 50
			 THEN jsonb_build_object('i', i, 'pad', repeat('x', 300000))
			 ELSE jsonb_build_object('i', i) END, 'crm')
	FROM generate_series(1, 3000) i});
$node->safe_psql('postgres', q{
	INSERT INTO messaging.outbox (id, event_type, payload, target_app,
		source_app, created_at)
	SELECT messaging.uuid_generate_v7(), 'poison.' || repeat('p', 300),
		jsonb_build_object('poison', i), 'crm', 'wrapper', now()
	FROM generate_series(1, 10) i});
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced', jsonb_build_object('i', 3000 + i), 'crm')
	FROM generate_series(1, 1000) i});
my $drained = 0;
for (1 .. 1200)
{
	$drained = $node->safe_psql('postgres', 'SELECT count(*) = 0 FROM messaging.outbox') eq 't';
	last if $drained;
	select(undef, undef, undef, 0.1);
}
ok($drained, 'the outbox drains (within 120 s)');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM messaging.failed_events
		WHERE reason = 'unpublishable'
		  AND (envelope -> 'data' ? 'pad' OR event_type LIKE 'poison.%')
		  AND failed_at > now() - interval '10 minutes'}),
	'41', 'the 30 refused and 10 uncarriable events failed as unpublishable (plus the first uncarriable one)');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM messaging.failed_events WHERE event_type = 'item.synced'
		  AND NOT envelope -> 'data' ? 'pad'}),
	'0', 'no other event failed');
my $queued = $mq->queue_messages('crm-inbox');
($rc2, $out2, $err2) = MessagingTest::node({ timeout => 120 }, 'consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', $queued, '--timeout-ms', '60000',
	'--prefetch', '1000');
my %seen;
$seen{ MessagingTest::decode_json($_->{body})->{data}{i} }++
  for MessagingTest::decode_messages($out2);
is_deeply([ sort { $a <=> $b } keys %seen ],
	[ (grep { $_ % 100 != 50 } 1 .. 3000), 3001 .. 4000 ], 'every other event arrived');
my $dups = 0;
$dups += $_ - 1 for values %seen;
note("duplicates (messages in flight when the broker closed the channel): $dups");
$log = substr(slurp_file($node->logfile), $offset);
my $relay_lines = () = $log =~ /^\S+ \S+ \S+ \[\d+\] LOG:  messaging relay/mg;
note("relay LOG lines for the stream: $relay_lines");
cmp_ok($relay_lines, '<=', 200, 'relay log lines stay proportionate to the refused events');

$node->stop;

done_testing();
