# Heartbeats on an idle relay connection (messaging.heartbeat = 2 s): the
# connection survives several intervals without traffic and still
# publishes. A broker frozen with SIGSTOP stops answering; the relay must
# declare the connection dead, reconnect once the broker runs again, and
# lose none of the events published meanwhile.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;
my $frozen_pid;

# Whatever happens, a frozen broker is resumed (before MessagingTest's own
# END block stops it).
END
{
	kill 'CONT', $frozen_pid if $frozen_pid;
}

my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue declared and bound');

my $node = MessagingTest::new_cluster('heartbeat', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.heartbeat' => '2s',
	'messaging.connect_timeout' => '2s',
	'messaging.reconnect_max_delay' => '1s');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

sub relay
{
	my ($cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM messaging.connection_status WHERE worker = 'relay'");
}

# The relay's connection as the broker lists it: "name<TAB>timeout".
sub broker_relay_connection
{
	my $out = $mq->ctl('--quiet', 'list_connections', '--no-table-headers',
		'name', 'timeout', 'client_properties');
	my @relay = grep { /messaging relay/ } split /\n/, $out;
	return join("\n", map { join "\t", (split /\t/)[ 0, 1 ] } @relay);
}

ok(MessagingTest::relay_connected($node), 'relay connected');
my $id = $node->safe_psql('postgres',
	q{SELECT messaging.publish_event('user.created', '{"i": 0}', 'crm')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'first event published');

my $before = broker_relay_connection();
like($before, qr/\t2$/, 'broker agreed on a 2 s heartbeat with the relay');
my $reconnects = relay('reconnects');
my $since = relay('connected_since');

# Four heartbeat intervals without traffic.
sleep 8;
is(relay('state'), 'connected', 'still connected after 8 s idle');
is(relay('reconnects'), $reconnects, 'no reconnect while idle');
is(relay('connected_since'), $since, 'same connection (connected_since unchanged)');
is(broker_relay_connection(), $before, 'broker still lists the same relay connection');
$node->safe_psql('postgres',
	q{SELECT messaging.publish_event('user.created', '{"i": 1}', 'crm')});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'publishing works after the idle period');

# Freeze the broker for 7 s (about three heartbeat intervals), publishing
# 100 events meanwhile.
my $pid_file = $mq->dir . '/rabbit.pid';
($frozen_pid = slurp_file($pid_file)) =~ s/\D//g;
ok(kill('STOP', $frozen_pid), "broker (pid $frozen_pid) frozen");
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('user.created', jsonb_build_object('i', 2 + k), 'crm')
	FROM generate_series(0, 99) k});
my $detected = $node->poll_query_until('postgres',
	"SELECT state <> 'connected' FROM messaging.connection_status WHERE worker = 'relay'");
sleep 1;
my $error = relay('last_error');
ok(kill('CONT', $frozen_pid), 'broker resumed');
$frozen_pid = undef;
ok($detected, 'relay declared the frozen broker\'s connection dead');
like($error, qr/heartbeat timeout|no data from the broker|no publisher confirm/,
	"last_error says why: $error");

ok(MessagingTest::relay_connected($node), 'relay reconnected after the broker resumed');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'events published during the freeze left the outbox');
cmp_ok(relay('reconnects'), '>', $reconnects, 'reconnect counted');

my $queued = $mq->queue_messages('crm-inbox');
cmp_ok($queued, '>=', 102, "at least 102 messages queued ($queued)");
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', $queued, '--timeout-ms', '30000');
is($rc, 0, 'all queued messages consumed') or diag($err);
my %seen;
$seen{ MessagingTest::decode_json($_->{body})->{data}{i} }++
  for MessagingTest::decode_messages($out);
is_deeply([ sort { $a <=> $b } keys %seen ], [ 0 .. 101 ], 'no event lost');

$node->stop;
my $log = slurp_file($node->logfile);
my $lost = () = $log =~ /messaging relay lost its connection/g;
is($lost, 1, 'the dead connection is logged once');

done_testing();
