# The relay across PostgreSQL failures: events committed while the broker
# was down survive an immediate shutdown (crash) and are all published
# once both are back; a fast shutdown completes promptly while the broker
# is down, refuses connections, or accepts TCP and never answers; the relay
# killed by SIGKILL or terminated is restarted and goes on publishing.

use strict;
use warnings;

use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue declared and bound');

my $node = MessagingTest::new_cluster('crash', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.reconnect_max_delay' => '1s');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

sub wait_connected
{
	my ($name) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
		"$name: relay connected")
	  or diag($node->safe_psql('postgres', 'TABLE messaging.connection_status'));
}

# Consumes exactly $n messages from crm-inbox and returns { i => copies }.
sub consume_all
{
	my ($n) = @_;
	my ($rc, $out, $err) = MessagingTest::node({ timeout => 120 }, 'consume',
		'--url', $url, '--queue', 'crm-inbox', '--count', $n,
		'--timeout-ms', '90000', '--prefetch', '1000');
	is($rc, 0, "$n messages consumed") or diag($err);
	my %seen;
	$seen{ MessagingTest::decode_json($_->{body})->{data}{i} }++
	  for MessagingTest::decode_messages($out);
	return \%seen;
}

wait_connected('start');

# 1. Outbox filled while the broker is down, then a crash of PostgreSQL.
$mq->stop;
ok( $node->poll_query_until('postgres',
		"SELECT state <> 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'relay noticed the broker is gone');
for my $b (0 .. 3)
{
	$node->safe_psql('postgres', qq{
		SELECT messaging.publish_event('item.synced',
			jsonb_build_object('i', $b * 500 + k), 'crm')
		FROM generate_series(0, 499) k});
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox'),
	'2000', '2000 events wait in the outbox');
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox'),
	'2000', 'the outbox survives an immediate shutdown');
$mq->start;
wait_connected('after crash');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'outbox drained once the broker is back');
is($mq->queue_messages('crm-inbox'), 2000, 'exactly 2000 messages queued');
my $seen = consume_all(2000);
is_deeply([ sort { $a <=> $b } keys %$seen ], [ 0 .. 1999 ],
	'every event committed before the crash is published');

# 2. Fast shutdown with the broker down must not wait for the broker.
$mq->stop;
ok( $node->poll_query_until('postgres',
		"SELECT state <> 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'broker down');
$node->safe_psql('postgres',
	q{SELECT messaging.publish_event('item.synced', '{"i": 2000}', 'crm')});
my $t0 = time;
$node->stop('fast');
my $took = time - $t0;
cmp_ok($took, '<', 20, sprintf('fast shutdown with the broker down (%.1f s)', $took));

# ... nor with a URL to a closed port ...
my $closed = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
	Proto => 'tcp', Listen => 1) or die "no socket: $!";
my $closed_port = $closed->sockport;
close $closed;
$node->append_conf('postgresql.conf',
	"messaging.broker_url = 'amqp://guest:guest\@127.0.0.1:$closed_port/%2f'\n");
$node->start;
ok( $node->poll_query_until('postgres', qq{
		SELECT state = 'disconnected' AND broker_port = $closed_port
		   AND last_error IS NOT NULL
		FROM messaging.connection_status WHERE worker = 'relay'}),
	'relay reports the closed port');
$t0 = time;
$node->stop('fast');
$took = time - $t0;
cmp_ok($took, '<', 20, sprintf('fast shutdown with the port closed (%.1f s)', $took));

# ... nor with a peer that accepts TCP and never speaks AMQP, with a long
# connect timeout: the kernel completes the handshake on a listening
# socket that nobody accepts from.
my $silent = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
	Proto => 'tcp', Listen => 16) or die "no socket: $!";
my $silent_port = $silent->sockport;
$node->append_conf('postgresql.conf',
	"messaging.broker_url = 'amqp://guest:guest\@127.0.0.1:$silent_port/%2f'\n"
	  . "messaging.connect_timeout = '30s'\n");
$node->start;
ok( $node->poll_query_until('postgres', qq{
		SELECT state = 'connecting' AND broker_port = $silent_port
		FROM messaging.connection_status WHERE worker = 'relay'}),
	'relay is stuck logging in to a silent peer');
sleep 1;
$t0 = time;
$node->stop('fast');
$took = time - $t0;
cmp_ok($took, '<', 20,
	sprintf('fast shutdown while the relay waits for a silent peer (%.1f s)', $took));
close $silent;

# 3. Back to the broker; the event published before the fast shutdown
# goes out.
# The test framework turns restart_after_crash off; the SIGKILL case below
# needs the postmaster's usual crash restart.
$node->append_conf('postgresql.conf',
	"messaging.broker_url = '$url'\nmessaging.connect_timeout = '5s'\n"
	  . "restart_after_crash = on\n");
$mq->start;
$node->start;
wait_connected('after fast shutdowns');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'event from before the fast shutdown published');

# 4. SIGKILL of the relay: the postmaster restarts the server processes
# and the relay, which goes on publishing.
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM messaging.connection_status WHERE worker = 'relay'");
like($pid, qr/^\d+$/, 'relay pid from connection_status');
kill 'KILL', $pid;
ok( $node->poll_query_until('postgres', qq{
		SELECT state = 'connected' AND pid <> $pid
		FROM messaging.connection_status WHERE worker = 'relay'}),
	'a new relay process is connected after SIGKILL');
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced', jsonb_build_object('i', 2001 + k), 'crm')
	FROM generate_series(0, 99) k});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'the new relay publishes');

# 5. pg_terminate_backend(): the relay exits and is started again.
$pid = $node->safe_psql('postgres',
	"SELECT pid FROM messaging.connection_status WHERE worker = 'relay'");
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't',
	'relay terminated');
ok( $node->poll_query_until('postgres', qq{
		SELECT state = 'connected' AND pid <> $pid
		FROM messaging.connection_status WHERE worker = 'relay'}),
	'relay restarted after termination');
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('item.synced', jsonb_build_object('i', 2101 + k), 'crm')
	FROM generate_series(0, 99) k});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'the restarted relay publishes');

my $queued = $mq->queue_messages('crm-inbox');
cmp_ok($queued, '>=', 201, "events after the restarts queued ($queued)");
$seen = consume_all($queued);
is_deeply([ sort { $a <=> $b } keys %$seen ], [ 2000 .. 2200 ],
	'every event of the restart phases arrived');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/guest\@|:guest/, 'no credential in the server log');

done_testing();
