# The consumer when things go wrong: the worker exits between the commit
# of a handled event and its ack (the redelivered copy is not handled
# again), the queue is deleted under the consumer, a delay queue is
# redeclared with other arguments (406), the broker restarts, a handler
# runs past messaging.handler_timeout, and a dead letter is replayed once
# its handler is fixed.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;
my $node = MessagingTest::new_cluster('consumer_recovery', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.retry_delay' => '200ms',
	'messaging.max_retries' => '1',
	'messaging.handler_timeout' => '1s',
	'messaging.reconnect_max_delay' => '1s',
	'messaging.poll_interval' => '200ms');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

sub query { return $node->safe_psql('postgres', $_[0]) }

sub publish_event
{
	my ($type, $data) = @_;
	my ($rc, $out, $err) = MessagingTest::node('publish', '--url', $url,
		'--exchange', 'inter-app-events', '--routing-key', "wrapper.$type",
		'--event', $type, '--data', $data, '--source', 'crm');
	is($rc, 0, "published $type $data") or diag($err);
}

sub consumer_status
{
	my ($col) = @_;
	return query("SELECT $col FROM messaging.connection_status WHERE worker = 'consumer'");
}

sub wait_connected
{
	return $node->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'consumer'");
}

ok(wait_connected(), 'consumer connected');

query(<<'SQL');
CREATE TABLE public.seen (id text, note text);
CREATE TABLE public.switch (on_ boolean);
INSERT INTO public.switch VALUES (false);
CREATE FUNCTION public.on_user(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.seen VALUES (event->'data'->>'user_id', current_setting('statement_timeout'));
END $$;
CREATE FUNCTION public.slow(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_sleep(5);
	INSERT INTO public.seen VALUES ('slow', 'finished');
END $$;
CREATE FUNCTION public.picky(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF NOT (SELECT on_ FROM public.switch) THEN
		RAISE EXCEPTION 'not ready for %', event->'data'->>'order_id';
	END IF;
	INSERT INTO public.seen VALUES (event->'data'->>'order_id', 'picky');
END $$;
SELECT messaging.register_handler('user.created', 'public.on_user(jsonb)');
SELECT messaging.register_handler('report.requested', 'public.slow(jsonb)');
SELECT messaging.register_handler('order.placed', 'public.picky(jsonb)');
SQL

publish_event('user.created', '{"user_id":"u-0"}');
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM public.seen"),
	'first event handled');
is(query("SELECT note FROM public.seen WHERE id = 'u-0'"), '1s',
	'handler ran with statement_timeout = messaging.handler_timeout');

# --- exit between commit and ack: redelivered, not handled twice ---
my $pid = consumer_status('pid');
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "messaging.debug_exit_before_ack = on\n");
$node->reload;
sleep 1;
publish_event('user.created', '{"user_id":"u-1"}');
ok($node->wait_for_log(qr/messaging consumer exiting before acknowledging event/, $log_offset),
	'worker exited after the commit, before the ack');
ok($node->poll_query_until('postgres',
		"SELECT pid <> $pid AND state = 'connected' FROM messaging.connection_status WHERE worker = 'consumer'"),
	'worker restarted and reconnected');
for (1 .. 100)
{
	my $q = $mq->queues->{'wrapper-events'};
	last if $q->{ready} == 0 && $q->{unacked} == 0;
	select(undef, undef, undef, 0.1);
}
is($mq->queues->{'wrapper-events'}{ready} + $mq->queues->{'wrapper-events'}{unacked},
	0, 'redelivered message acknowledged');
is(query("SELECT count(*) FROM public.seen WHERE id = 'u-1'"), '1',
	'the redelivered event did not run its handler again');
$node->append_conf('postgresql.conf', "messaging.debug_exit_before_ack = off\n");
$node->reload;

# --- the queue is deleted under the consumer ---
$log_offset = -s $node->logfile;
my $reconnects = consumer_status('reconnects');
$mq->delete_queue('wrapper-events');
ok($node->wait_for_log(qr/messaging consumer was cancelled by the broker/, $log_offset),
	'cancel noticed');
ok($node->poll_query_until('postgres',
		"SELECT state = 'connected' AND reconnects > $reconnects FROM messaging.connection_status WHERE worker = 'consumer'"),
	'consumer set up again');
is($mq->queues->{'wrapper-events'}{consumers}, 1, 'queue declared again, with a consumer');
publish_event('user.created', '{"user_id":"u-2"}');
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM public.seen WHERE id = 'u-2'"),
	'consumption resumed');

# --- a delay queue redeclared with other arguments ---
$mq->delete_queue('wrapper-events.retry.200ms');
my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'wrapper-events.retry.200ms', '--setup-only');
is($rc, 0, 'conflicting queue declared') or diag($err);
$log_offset = -s $node->logfile;
$mq->close_all_connections('test drops connections');
ok($node->wait_for_log(qr/406 PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'wrapper-events.retry.200ms'/,
		$log_offset),
	'the conflict is logged with the queue and the argument');
ok($node->poll_query_until('postgres',
		"SELECT last_error ~ 'could not declare queue \"wrapper-events.retry.200ms\".*x-message-ttl' FROM messaging.connection_status WHERE worker = 'consumer'"),
	'and shown in connection_status.last_error');
like(consumer_status('state'), qr/^(disconnected|connecting)$/, 'consumer waits');
$mq->delete_queue('wrapper-events.retry.200ms');
ok(wait_connected(), 'consumer connects once the conflict is gone');
ok(exists $mq->queues->{'wrapper-events.retry.200ms'}, 'delay queue declared again');

# --- broker restart ---
$reconnects = consumer_status('reconnects');
$mq->restart;
ok($node->poll_query_until('postgres',
		"SELECT state = 'connected' AND reconnects > $reconnects FROM messaging.connection_status WHERE worker = 'consumer'"),
	'consumer reconnected after a broker restart');
publish_event('user.created', '{"user_id":"u-3"}');
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM public.seen WHERE id = 'u-3'"),
	'events handled after the restart');

# --- a handler past messaging.handler_timeout ---
publish_event('report.requested', '{}');
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM messaging.dead_letters WHERE event_type = 'report.requested'"),
	'slow handler dead-lettered');
like(query("SELECT attempts || ' ' || error FROM messaging.dead_letters WHERE event_type = 'report.requested'"),
	qr/^2 slow\(jsonb\) failed: canceling statement due to statement timeout$/,
	'cancelled by the timeout on each of its two attempts');
is(query("SELECT count(*) FROM public.seen WHERE id = 'slow'"), '0',
	'the slow handler never committed');

# --- replay of a dead letter once the handler is fixed ---
publish_event('order.placed', '{"order_id":"o-7"}');
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM messaging.dead_letters WHERE event_type = 'order.placed'"),
	'failing handler dead-lettered');
my $dl = query("SELECT id FROM messaging.dead_letters WHERE event_type = 'order.placed'");
like(query("SELECT error FROM messaging.dead_letters WHERE id = $dl"),
	qr/not ready for o-7/, 'with its error');
query("UPDATE public.switch SET on_ = true");
is(query("SELECT messaging.replay_dead_letter($dl)"), 't', 'replay requested');
is(query("SELECT messaging.replay_dead_letter(-5)"), 'f', 'unknown id: false');
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM public.seen WHERE id = 'o-7'"),
	'replayed event handled');
is(query("SELECT count(*) FROM messaging.dead_letters WHERE id = $dl"), '0',
	'dead letter removed once replayed');

my ($failed, $handled) = split /\|/, consumer_status("failed || '|' || published");
is($failed, 2, 'two messages dead-lettered in total');
ok($handled >= 4, "handled events counted ($handled)");

$node->stop;
$mq->stop;
done_testing();
