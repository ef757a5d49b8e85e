# Large and many events: payloads at exactly messaging.max_payload_bytes
# (bigger than the AMQP frame, so the body is split across frames) arrive
# intact; one byte more is refused; 10 000 events of one transaction
# arrive exactly once; dropping and recreating the extension while the
# relay works leaves the relay able to publish.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue declared and bound');

my $node = MessagingTest::new_cluster('volume', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.reconnect_max_delay' => '1s');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok(MessagingTest::relay_connected($node), 'relay connected');

sub consume
{
	my ($n) = @_;
	my ($rc, $out, $err) = MessagingTest::node({ timeout => 180 }, 'consume',
		'--url', $url, '--queue', 'crm-inbox', '--count', $n,
		'--timeout-ms', '120000', '--prefetch', '500');
	is($rc, 0, "$n messages consumed") or diag($err);
	return MessagingTest::decode_messages($out);
}

# 1. Twenty payloads of exactly the limit: {"k": k, "s": "€xxx..."}.
my $limit = $node->safe_psql('postgres',
	"SELECT setting FROM pg_settings WHERE name = 'messaging.max_payload_bytes'");
is($limit, 1024 * 1024, 'default payload limit is 1 MB');
my $overhead = $node->safe_psql('postgres',
	"SELECT pg_column_size(jsonb_build_object('k', 1, 's', repeat('x', 1000))) - 4 - 1000");
my $n = $limit - $overhead - 3;    # the euro sign is three bytes
my $expr = "jsonb_build_object('k', k, 's', '€' || repeat('x', $n))";
is( $node->safe_psql('postgres',
		"SELECT min(pg_column_size($expr) - 4) || ' ' || max(pg_column_size($expr) - 4) FROM generate_series(1, 20) k"),
	"$limit $limit", 'each payload has exactly max_payload_bytes');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT messaging.publish_event('blob.stored', jsonb_build_object('k', 1, 's', '€' || repeat('x', $n + 1)), 'crm')",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($stderr, qr/54000/, 'one byte more is refused (program_limit_exceeded)');

my @ids = split /\n/, $node->safe_psql('postgres', qq{
	SELECT messaging.publish_event('blob.stored', $expr, 'crm')
	FROM generate_series(1, 20) k});
is(scalar @ids, 20, 'twenty 1 MB events in one transaction');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'large events published');
is($mq->queue_messages('crm-inbox'), 20, 'exactly 20 messages queued');
my @msgs = consume(20);
my @bad;
for my $m (@msgs)
{
	my $ce = MessagingTest::decode_json($m->{body});
	push @bad, $ce->{data}{k}
	  unless length($ce->{data}{s}) == $n + 3
	  && $ce->{data}{s} =~ /^€x+$/
	  && $m->{properties}{messageId} eq $ce->{id};
}
is_deeply([ sort map { $_->{properties}{messageId} } @msgs ], [ sort @ids ],
	'every large event arrived with its id');
is_deeply(\@bad, [], 'every large payload arrived intact');
cmp_ok($msgs[0]{bodyLength}, '>', $limit, 'the envelope is bigger than the payload limit');

# 2. 10 000 events in one transaction.
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced', jsonb_build_object('i', i), 'crm')
	FROM generate_series(1, 10000) i});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'10 000 events published');
is($mq->queue_messages('crm-inbox'), 10000, 'exactly 10 000 messages queued');
my %seen;
$seen{ MessagingTest::decode_json($_->{body})->{data}{i} }++ for consume(10000);
is(scalar(keys %seen), 10000, 'each of the 10 000 events arrived');
is(scalar(grep { $_ != 1 } values %seen), 0, 'each exactly once');
is( $node->safe_psql('postgres',
		"SELECT published FROM messaging.connection_status WHERE worker = 'relay'"),
	'10020', 'connection_status: 10 020 published');

# 3. The extension dropped while the relay works through 5000 events,
# then created again: the dropped outbox is gone, new events flow.
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced', jsonb_build_object('i', -i), 'crm')
	FROM generate_series(1, 5000) i});
$node->safe_psql('postgres', 'DROP EXTENSION messaging CASCADE');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
my $id = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('item.synced', '{"i": "after"}', 'crm')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'event published after the extension was created again');
ok(MessagingTest::relay_connected($node), 'relay connected');
my $queued = $mq->queue_messages('crm-inbox');
my @after = grep { $_->{properties}{messageId} eq $id } consume($queued);
is(scalar @after, 1, 'the new event arrived once');

# The same again, but the extension is dropped and created in one
# transaction, so the relay never sees it missing.
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced', jsonb_build_object('i', -i), 'crm')
	FROM generate_series(1, 5000) i});
$node->safe_psql('postgres',
	'BEGIN; DROP EXTENSION messaging CASCADE; CREATE EXTENSION messaging; COMMIT');
$id = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('item.synced', '{"i": "after2"}', 'crm')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'event published after drop and create in one transaction');
$queued = $mq->queue_messages('crm-inbox');
@after = grep { $_->{properties}{messageId} eq $id } consume($queued);
is(scalar @after, 1, 'the new event arrived once');

$node->stop;
my $log = slurp_file($node->logfile);
my $errors = () = $log =~ /messaging relay could not publish the outbox/g;
note("relay errors logged around the drops: $errors");
cmp_ok($errors, '<=', 4, 'the drops cause a few logged errors, not a flood');
unlike($log, qr/PANIC|terminated by signal/, 'no crash');

done_testing();
