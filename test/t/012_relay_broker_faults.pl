# The broker goes away while events stream in: a graceful stop, then a
# kill -9, each followed by a start on the same state directory. Every
# committed event must reach the consumer at least once (duplicates are
# allowed and counted, and keep their message id and body), the outbox
# must end empty and the relay connected again. A longer outage must not
# flood the server log: the change of state is logged, the retries are not.

use strict;
use warnings;

use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue declared and bound');

my $node = MessagingTest::new_cluster('faults', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.reconnect_max_delay' => '1s',
	'messaging.connect_timeout' => '2s');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

sub relay_status
{
	my ($cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM messaging.connection_status WHERE worker = 'relay'");
}

ok(MessagingTest::relay_connected($node), 'relay connected');

# Publishes $batches transactions of $per events, 0.1 s apart, in the
# background; event i carries {"i": i} with i from $first on.
sub start_load
{
	my ($first, $batches, $per) = @_;
	my $sql = qq{
		DO \$\$
		BEGIN
			FOR b IN 0 .. $batches - 1 LOOP
				PERFORM messaging.publish_event('item.synced',
					jsonb_build_object('i', $first + b * $per + k), 'crm')
				FROM generate_series(0, $per - 1) k;
				COMMIT;
				PERFORM pg_sleep(0.1);
			END LOOP;
		END
		\$\$;};
	my ($o, $e) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'), '-c', $sql ],
		'<', \undef, '>', \$o, '2>', \$e,
		IPC::Run::timeout(120));
	return { h => $h, out => \$o, err => \$e };
}

sub finish_load
{
	my ($load, $name) = @_;
	my $ok = eval { $load->{h}->finish; 1 };
	ok($ok && $load->{h}->result == 0, "$name: background load committed")
	  or diag(${ $load->{err} } . ($@ // ''));
}

# (a) graceful stop and start while 3000 events stream in.
my $load = start_load(0, 60, 50);
sleep 1;
$mq->stop;
sleep 2;
$mq->start;
finish_load($load, 'graceful stop');
ok( $node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'graceful stop: outbox drained after the broker came back');
ok(MessagingTest::relay_connected($node), 'graceful stop: relay connected again');
my $reconnects_a = relay_status('reconnects');
cmp_ok($reconnects_a, '>=', 1, 'graceful stop: reconnect counted');

# (b) kill -9 and start while 3000 more stream in.
$load = start_load(3000, 60, 50);
sleep 1;
$mq->kill9;
sleep 2;
$mq->start;
finish_load($load, 'kill -9');
ok( $node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'kill -9: outbox drained after the broker came back');
ok(MessagingTest::relay_connected($node), 'kill -9: relay connected again');
cmp_ok(relay_status('reconnects'), '>', $reconnects_a, 'kill -9: reconnect counted');

# Everything the broker holds for crm, duplicates included.
my $queued = $mq->queue_messages('crm-inbox');
cmp_ok($queued, '>=', 6000, "queue holds at least 6000 messages ($queued)");
($rc, $out, $err) = MessagingTest::node({ timeout => 180 }, 'consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', $queued, '--timeout-ms', '120000',
	'--prefetch', '1000');
is($rc, 0, "all $queued messages consumed") or diag($err);

my (%count, %body, $bad_id, $changed);
for my $m (MessagingTest::decode_messages($out))
{
	my $ce = MessagingTest::decode_json($m->{body});
	my $i = $ce->{data}{i};
	$bad_id++ if ($m->{properties}{messageId} // '') ne $ce->{id};
	$changed++ if exists $body{$i} && $body{$i} ne $m->{body};
	$body{$i} = $m->{body};
	$count{$i}++;
}
my @missing = grep { !$count{$_} } 0 .. 5999;
is(scalar @missing, 0, 'no event lost across both broker outages')
  or diag("missing: @missing[0 .. ($#missing < 20 ? $#missing : 19)]");
is(scalar(keys %count), 6000, 'no unexpected event');
my $dups = 0;
$dups += $_ - 1 for values %count;
note("duplicates (at-least-once): $dups");
ok(!$bad_id, 'every message id is its envelope id');
ok(!$changed, 'a republished event is the same message (same id, time and body)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.failed_events'),
	'0', 'no event failed');
is(relay_status('published'), '6000',
	'connection_status counts each event once as published');

# A 10 s outage with reconnect_max_delay = 1 s: about ten attempts, but
# the log tells of the outage once, not once per attempt.
my $offset = -s $node->logfile;
$mq->stop;
ok( $node->poll_query_until('postgres',
		"SELECT state <> 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'relay noticed the outage');
sleep 10;
like(relay_status('last_error'), qr/\S/, 'last_error says why');
$mq->start;
ok(MessagingTest::relay_connected($node), 'relay connected after the long outage');
my $log = substr(slurp_file($node->logfile), $offset);
my $lost = () = $log =~ /messaging relay lost its connection/g;
my $failed = () = $log =~ /messaging relay could not connect/g;
my $connected = () = $log =~ /messaging relay connected to RabbitMQ/g;
note("relay log lines during the outage: lost=$lost could-not-connect=$failed connected=$connected");
cmp_ok($lost + $failed, '>=', 1, 'the outage is logged');
# each distinct reason once (refused while down, perhaps a reset while the
# broker starts), never once per attempt
cmp_ok($lost + $failed, '<=', 3, 'the outage is logged once per reason, not once per attempt');
is($connected, 1, 'the recovery is logged once');
like($log, qr/Connected after \d+ failed attempts?\./,
	'the recovery line counts the failed attempts');

$node->stop;
done_testing();
