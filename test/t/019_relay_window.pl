# The relay's confirm window at its extremes and its confirm timeout:
# with publish_window = 1 and publish_batch_size = 1, and with a window
# smaller than a batch, routable events arrive exactly once and
# unroutable ones are failed; connections closed by the broker in the
# middle of a stream lose nothing; a broker that stops answering without
# heartbeats (heartbeat = 0, SIGSTOP) is detected by
# messaging.confirm_timeout.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;
my $frozen_pid;

END
{
	kill 'CONT', $frozen_pid if $frozen_pid;
}

my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue declared and bound');

my $node = MessagingTest::new_cluster('window', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.publish_window' => '1',
	'messaging.publish_batch_size' => '1',
	'messaging.reconnect_max_delay' => '1s',
	'messaging.connect_timeout' => '2s',
	'messaging.heartbeat' => '0',
	'messaging.confirm_timeout' => '3s');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

sub relay
{
	my ($cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM messaging.connection_status WHERE worker = 'relay'");
}

sub set_conf
{
	my (%kv) = @_;
	$node->safe_psql('postgres',
		join('', map { "ALTER SYSTEM SET $_ = '$kv{$_}';\n" } sort keys %kv)
		  . 'SELECT pg_reload_conf();');
}

sub drained
{
	my ($name) = @_;
	ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
		"$name: outbox drained");
}

# Consumes everything queued for crm; returns { i => copies }.
sub consume_all
{
	my $n = $mq->queue_messages('crm-inbox');
	my ($rc, $out, $err) = MessagingTest::node({ timeout => 120 }, 'consume',
		'--url', $url, '--queue', 'crm-inbox', '--count', $n,
		'--timeout-ms', '90000', '--prefetch', '1000');
	is($rc, 0, "$n messages consumed") or diag($err);
	my %seen;
	$seen{ MessagingTest::decode_json($_->{body})->{data}{i} }++
	  for MessagingTest::decode_messages($out);
	return \%seen;
}

# Publishes events $from .. $to; every fifth goes to an app nobody binds.
sub publish_mixed
{
	my ($from, $to) = @_;
	$node->safe_psql('postgres', qq{
		SELECT messaging.publish_event('item.synced', jsonb_build_object('i', i),
			CASE WHEN i % 5 = 0 THEN 'nobody' ELSE 'crm' END)
		FROM generate_series($from, $to) i});
}

ok(MessagingTest::relay_connected($node), 'relay connected');

# 1. One event in flight at a time, one row per batch.
publish_mixed(1, 300);
drained('window 1');
my $seen = consume_all();
is_deeply([ sort { $a <=> $b } keys %$seen ], [ grep { $_ % 5 } 1 .. 300 ],
	'window 1: every routable event arrived');
is(scalar(grep { $_ != 1 } values %$seen), 0, 'window 1: each exactly once');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.failed_events WHERE reason = 'unroutable'"),
	'60', 'window 1: the 60 unroutable events failed');

# 2. A window smaller than the batch.
set_conf('messaging.publish_window' => 3, 'messaging.publish_batch_size' => 7);
ok( $node->poll_query_until('postgres',
		"SELECT current_setting('messaging.publish_window') = '3'"),
	'window 3, batch 7 in effect');
publish_mixed(301, 1300);
drained('window 3, batch 7');
$seen = consume_all();
is_deeply([ sort { $a <=> $b } keys %$seen ], [ grep { $_ % 5 } 301 .. 1300 ],
	'window 3, batch 7: every routable event arrived');
is(scalar(grep { $_ != 1 } values %$seen), 0, 'window 3, batch 7: each exactly once');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.failed_events WHERE reason = 'unroutable'"),
	'260', 'window 3, batch 7: the unroutable events failed');

# 3. The broker closes every connection while 3000 events are in flight
# (window and batch back to their defaults).
set_conf('messaging.publish_window' => 500, 'messaging.publish_batch_size' => 500);
ok( $node->poll_query_until('postgres',
		"SELECT current_setting('messaging.publish_window') = '500'"),
	'default window in effect');
my $reconnects = relay('reconnects');
for my $b (0 .. 2)
{
	$node->safe_psql('postgres', qq{
		SELECT messaging.publish_event('item.synced',
			jsonb_build_object('i', 2000 + $b * 1000 + k), 'crm')
		FROM generate_series(0, 999) k});
	$mq->close_all_connections('closed while publishing');
}
drained('connections closed');
ok(MessagingTest::relay_connected($node), 'relay connected again');
cmp_ok(relay('reconnects'), '>', $reconnects, 'reconnects counted');
$seen = consume_all();
is_deeply([ sort { $a <=> $b } keys %$seen ], [ 2000 .. 4999 ],
	'connections closed: no event lost');

# 4. No heartbeats and a frozen broker: only the confirm timeout notices.
($frozen_pid = slurp_file($mq->dir . '/rabbit.pid')) =~ s/\D//g;
ok(kill('STOP', $frozen_pid), 'broker frozen');
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced', jsonb_build_object('i', 5000 + k), 'crm')
	FROM generate_series(0, 49) k});
my $detected = $node->poll_query_until('postgres',
	"SELECT state <> 'connected' FROM messaging.connection_status WHERE worker = 'relay'");
my $error = relay('last_error');
ok(kill('CONT', $frozen_pid), 'broker resumed');
$frozen_pid = undef;
ok($detected, 'relay gave up on the silent connection');
like($error, qr/no publisher confirm from the broker within 3000 ms/,
	'last_error names the confirm timeout');
drained('after the freeze');
ok(MessagingTest::relay_connected($node), 'relay connected after the freeze');
$seen = consume_all();
is_deeply([ sort { $a <=> $b } keys %$seen ], [ 5000 .. 5049 ],
	'freeze: no event lost');

$node->stop;
done_testing();
