# Application transactions that stay open must not stop the relay. An
# application acknowledges a directed event inside a long transaction
# (acknowledge_event() bumps the hourly counter row of its tenant, source,
# target and event type); events with the same counter key, and events
# with other keys, published meanwhile must still leave the outbox while
# that transaction is open. A long transaction that merely reads the
# outbox must not hold the relay up either.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue declared and bound');

my $node = MessagingTest::new_cluster('contention', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.heartbeat' => '2s');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok(MessagingTest::relay_connected($node), 'relay connected');

# Waits (at most $seconds) until the outbox is empty; true when it is.
sub drained_within
{
	my ($seconds) = @_;
	my $deadline = time + $seconds;
	while (time < $deadline)
	{
		return 1
		  if $node->safe_psql('postgres', 'SELECT count(*) = 0 FROM messaging.outbox') eq 't';
		sleep 0.1;
	}
	return 0;
}

my $id = $node->safe_psql('postgres', q{
	SELECT messaging.publish_event('user.created', '{"n": 1}', 'crm', 'acme')});
ok(drained_within(30), 'first event published');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM messaging.awaiting_ack WHERE event_id = '$id'"),
	'1', 'it awaits its acknowledgement');

# The application acknowledges it and keeps its transaction open.
my $app = $node->background_psql('postgres');
$app->query_safe('BEGIN');
is($app->query_safe("SELECT messaging.acknowledge_event('$id')"), 't',
	'acknowledged inside an open transaction');

my $reconnects = $node->safe_psql('postgres',
	"SELECT reconnects FROM messaging.connection_status WHERE worker = 'relay'");
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('user.created', '{"n": 2}', 'crm', 'acme')});
my $same_key = drained_within(10);
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('user.updated', '{"n": 3}', 'crm', 'other')});
my $other_key = drained_within(10);
my $relay_wait = $node->safe_psql('postgres', q{
	SELECT coalesce(wait_event_type || ':' || wait_event, '-')
	FROM pg_stat_activity WHERE application_name = 'messaging relay'});
ok($same_key,
	'an event with the same counter key is published while the acknowledging transaction is open')
  or diag("relay waits on $relay_wait");
ok($other_key,
	'an event with another key is published while the acknowledging transaction is open')
  or diag("relay waits on $relay_wait");

$app->query_safe('COMMIT');
ok(drained_within(30), 'everything published once the transaction ended');
is( $node->safe_psql('postgres', q{
		SELECT format('%s/%s', sum(published), sum(acknowledged))
		FROM messaging.event_counters WHERE target_app = 'crm'}),
	'3/1', 'counters: 3 published, 1 acknowledged');
is($mq->queue_messages('crm-inbox'), 3, 'three messages queued, none twice');
note('relay reconnects during the open transaction: '
	  . ($node->safe_psql('postgres',
			"SELECT reconnects FROM messaging.connection_status WHERE worker = 'relay'")
		  - $reconnects));

# A reader with a long transaction over the outbox.
$app->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$app->query_safe('SELECT count(*) FROM messaging.outbox');
$node->safe_psql('postgres', q{
	SELECT messaging.publish_event('user.created', jsonb_build_object('n', 10 + k), 'crm', 'acme')
	FROM generate_series(1, 100) k});
ok(drained_within(10), 'events are published while a reader holds a snapshot');
$app->query_safe('COMMIT');
$app->quit;

is($mq->queue_messages('crm-inbox'), 103, 'all 103 messages queued');

$node->stop;
done_testing();
