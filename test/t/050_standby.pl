# On a standby the workers do not run: the outbox replicates like any
# table, and only a primary publishes it.  After a failover the promoted
# standby's relay publishes what the old primary committed but had not
# yet published.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $mq->url,
	'--queue', 'standby-crm', '--bind', 'inter-app-events:crm.#',
	'--declare-exchanges', '--setup-only');
is($rc, 0, 'consumer queue declared') or diag($err);

my $primary = MessagingTest::new_cluster('primary', $mq,
	'messaging.reconnect_max_delay' => '500ms',
	'wal_level' => 'replica', 'max_wal_senders' => '4');
$primary->safe_psql('postgres', 'CREATE EXTENSION messaging');
$primary->safe_psql('postgres',
	"SELECT messaging.publish_event('user.created', '{\"n\": 1}', 'crm', 'acme')");
ok($primary->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'primary publishes');

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

# With the broker gone, the primary's new events stay in its outbox and
# replicate to the standby.
$mq->stop;
$primary->safe_psql('postgres',
	"SELECT messaging.publish_event('user.created', jsonb_build_object('n', g), 'crm', 'acme')
	   FROM generate_series(2, 51) g");
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox'),
	'50', 'the outbox replicated to the standby');
is($standby->safe_psql('postgres',
		"SELECT count(*) FROM messaging.connection_status WHERE pid IS NOT NULL"),
	'0', 'no messaging worker runs on the standby');
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't',
	'standby in recovery');

# Failover: the primary dies, the broker comes back, the standby is promoted.
$primary->stop('immediate');
$mq->start;
$standby->promote;
ok( $standby->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'relay starts on the promoted standby and connects');
ok($standby->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'the promoted standby publishes the outbox');

($rc, $out, $err) = MessagingTest::node('consume', '--url', $mq->url,
	'--queue', 'standby-crm', '--count', '51', '--timeout-ms', '20000');
is($rc, 0, 'the consumer got every event') or diag($err);
my %n = map { (MessagingTest::decode_json($_->{body})->{data}{n} => 1) }
  MessagingTest::decode_messages($out);
is(scalar(keys %n), 51, 'each of the 51 events, before and after the failover');

$standby->stop;
done_testing();
