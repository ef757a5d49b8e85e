# Checks the test harness the other TAP tests stand on: a scratch RabbitMQ
# node, the node.js interop clients (publish.js / consume.js), and that a
# durable queue keeps persistent messages across a graceful broker restart
# and a kill -9. Finally starts a PostgreSQL cluster configured by
# MessagingTest::new_cluster.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;
like($url, qr{^amqp://guest:guest\@127\.0\.0\.1:\d+/%2f$}, 'broker URL on loopback');
ok($mq->is_running, 'scratch broker running');

my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'harness-q', '--setup-only');
is($rc, 0, 'consume.js declares the queue') or diag($err);
is($mq->queue_messages('harness-q'), 0, 'queue starts empty');
is($mq->queues->{'harness-q'}{durable}, 1, 'queue is durable');

my $body = '{"hello":"wörld","n":1}';
($rc, $out, $err) = MessagingTest::node('publish', '--url', $url,
	'--routing-key', 'harness-q', '--body', $body,
	'--message-id', 'harness-1', '--type', 'harness.checked',
	'--app-id', 'harness', '--header', 'x-tenant=acme');
is($rc, 0, 'publish.js exits 0') or diag($err);
like($out, qr/^confirmed 1$/m, 'publish.js got the confirm');
is($mq->queue_messages('harness-q'), 1, 'message is in the queue');

$mq->restart;
is($mq->queue_messages('harness-q'), 1, 'message survives a graceful restart');

$mq->kill9;
ok(!$mq->is_running, 'broker down after kill -9');
$mq->start;
is($mq->queue_messages('harness-q'), 1, 'message survives kill -9 and start');

my $bg = MessagingTest::node_bg('consume', '--url', $url,
	'--queue', 'harness-q', '--count', '1', '--timeout-ms', '30000');
ok($bg->wait_ready(undef, 60), 'background consumer is consuming')
  or diag($bg->stderr);
my ($exit, $stdout, $stderr) = $bg->finish(60);
is($exit, 0, 'consume.js exits 0 after one message') or diag($stderr);
my @msgs = MessagingTest::decode_messages($stdout);
is(scalar @msgs, 1, 'one message consumed');
my $m = $msgs[0] // {};
is($m->{properties}{messageId}, 'harness-1', 'same messageId');
is($m->{body}, $body, 'same body (UTF-8 round trip)');
is($m->{properties}{type}, 'harness.checked', 'type property');
is($m->{properties}{appId}, 'harness', 'appId property');
is($m->{properties}{deliveryMode}, 2, 'persistent delivery mode');
is($m->{properties}{headers}{'x-tenant'}, 'acme', 'header');
is($mq->queue_messages('harness-q'), 0, 'queue drained after ack');

# Exchanges as the extension uses them: topic routing per target app and a
# fanout for broadcasts; the body is a CloudEvents envelope.
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'harness-crm', '--declare-exchanges',
	'--bind', 'inter-app-events:crm.#', '--bind', 'inter-app-broadcast:',
	'--setup-only');
is($rc, 0, 'exchanges declared and queue bound') or diag($err);
($rc, $out, $err) = MessagingTest::node('publish', '--url', $url,
	'--exchange', 'inter-app-events', '--routing-key', 'crm.user.created',
	'--event', 'user.created', '--data', '{"user_id":"u-1"}',
	'--tenant', 'acme', '--source', 'wrapper');
is($rc, 0, 'topic publish confirmed') or diag($err);
($rc, $out, $err) = MessagingTest::node('publish', '--url', $url,
	'--exchange', 'inter-app-events', '--routing-key', 'billing.user.created',
	'--body', '{}', '--mandatory');
like($out, qr/^returned 1$/m, 'key for another app is not routed here');
($rc, $out, $err) = MessagingTest::node('publish', '--url', $url,
	'--exchange', 'inter-app-broadcast', '--routing-key', '',
	'--event', 'org.created', '--data', '{"org_id":"o-1"}');
is($rc, 0, 'fanout publish confirmed') or diag($err);
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'harness-crm', '--count', '2', '--timeout-ms', '20000');
is($rc, 0, 'both routed messages consumed') or diag($err);
@msgs = MessagingTest::decode_messages($out);
is_deeply([ map { "$_->{exchange} $_->{routingKey}" } @msgs ],
	[ 'inter-app-events crm.user.created', 'inter-app-broadcast ' ],
	'exchange and routing key of each message');
my $ce = MessagingTest::decode_json($msgs[0]{body} // '{}');
is($ce->{specversion}, '1.0', 'CloudEvents specversion');
is($ce->{tenantid}, 'acme', 'CloudEvents tenantid');
is($msgs[0]{properties}{messageId}, $ce->{id}, 'messageId is the event id');

# Timeout path, purge and delete.
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'harness-crm', '--count', '1', '--timeout-ms', '300');
is($rc, 1, 'consume.js exits 1 at timeout');
($rc, $out, $err) = MessagingTest::node('publish', '--url', $url,
	'--routing-key', 'harness-q', '--raw-hex', 'c328ff', '--count', '3');
like($out, qr/^confirmed 3$/m, 'raw bytes published');
is($mq->queue_messages('harness-q'), 3, 'three messages queued');
$mq->purge_queue('harness-q');
is($mq->queue_messages('harness-q'), 0, 'purge_queue empties the queue');
$mq->delete_queue('harness-q');
ok(!defined $mq->queue_messages('harness-q'), 'delete_queue removes it');

# Cluster helper. The library is preloaded unless the harness is checked
# where it is not installed yet (MESSAGING_TEST_NO_PRELOAD).
my $pkglibdir = `pg_config --pkglibdir`;
chomp $pkglibdir;
SKIP:
{
	skip 'messaging library not installed', 2
	  unless $ENV{MESSAGING_TEST_NO_PRELOAD} || -f "$pkglibdir/messaging.so";
	my $node = MessagingTest::new_cluster('harness', $mq);
	is($node->safe_psql('postgres', 'SELECT 1'), '1', 'cluster accepts queries');
	is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'),
		$ENV{MESSAGING_TEST_NO_PRELOAD} ? '' : 'messaging',
		'preload setting');
	$node->stop;
}

$mq->stop;
ok(!$mq->is_running, 'broker stopped');

done_testing();
