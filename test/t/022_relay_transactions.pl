# Transaction shapes around publish_event(): savepoints rolled back or
# released, prepared transactions committed or rolled back from another
# session (the publishing session is gone by then), and a publishing
# session that is terminated before it commits. Exactly the committed
# events arrive, each once.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-inbox', 'inter-app-events:crm.#'), 'crm queue declared and bound');

my $node = MessagingTest::new_cluster('transactions', $mq,
	'messaging.app_name' => 'wrapper',
	'max_prepared_transactions' => '5');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok(MessagingTest::relay_connected($node), 'relay connected');

sub drained
{
	my ($name) = @_;
	ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
		"$name: outbox drained");
}

# Savepoints; the last one is rolled back after an error.
my ($ret) = $node->psql('postgres', q{
	BEGIN;
	SELECT messaging.publish_event('item.synced', '{"k": "kept-1"}', 'crm');
	SAVEPOINT a;
	SELECT messaging.publish_event('item.synced', '{"k": "undone-1"}', 'crm');
	ROLLBACK TO SAVEPOINT a;
	SAVEPOINT b;
	SELECT messaging.publish_event('item.synced', '{"k": "kept-2"}', 'crm');
	RELEASE SAVEPOINT b;
	SAVEPOINT c;
	SELECT messaging.publish_event('item.synced', '{"k": "undone-2"}', 'crm');
	SELECT 1 / 0;
	ROLLBACK TO SAVEPOINT c;
	COMMIT;
}, on_error_stop => 0);
is($ret, 0, 'transaction with savepoints committed');
drained('savepoints');

# A prepared transaction: nothing goes out before COMMIT PREPARED, which
# another session runs.
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT messaging.publish_event('item.synced', '{"k": "prepared-commit"}', 'crm');
	PREPARE TRANSACTION 'pub-1';
	BEGIN;
	SELECT messaging.publish_event('item.synced', '{"k": "prepared-rollback"}', 'crm');
	PREPARE TRANSACTION 'pub-2';
});
sleep 2;
is($mq->queue_messages('crm-inbox'), 2, 'only the two savepoint survivors so far');
$node->safe_psql('postgres', "COMMIT PREPARED 'pub-1'");
$node->safe_psql('postgres', "ROLLBACK PREPARED 'pub-2'");
drained('prepared');

# A publishing session terminated before it commits.
my $victim = $node->background_psql('postgres', on_error_stop => 0);
$victim->query_safe('BEGIN');
$victim->query_safe(
	q{SELECT messaging.publish_event('item.synced', '{"k": "terminated"}', 'crm')});
my $pid = $victim->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
eval { $victim->quit; 1 };
$node->safe_psql('postgres',
	q{SELECT messaging.publish_event('item.synced', '{"k": "last"}', 'crm')});
drained('terminated session');

($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', '4', '--timeout-ms', '20000');
is($rc, 0, 'four messages consumed') or diag($err);
is_deeply(
	[ map { MessagingTest::decode_json($_->{body})->{data}{k} }
		  MessagingTest::decode_messages($out) ],
	[ 'kept-1', 'kept-2', 'prepared-commit', 'last' ],
	'exactly the committed events arrived, in order');
is($mq->queue_messages('crm-inbox'), 0, 'nothing else queued');
is( $node->safe_psql('postgres',
		"SELECT published FROM messaging.connection_status WHERE worker = 'relay'"),
	'4', 'connection_status: 4 published');

$node->stop;
done_testing();
