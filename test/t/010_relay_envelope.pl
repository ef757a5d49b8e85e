# The relay as another application sees it: events published in SQL arrive
# on inter-app-events (directed, routing key <target>.<type>) and
# inter-app-broadcast (no target) with the AMQP properties and the
# CloudEvents 1.0 structured envelope the platform expects. A rolled-back
# transaction publishes nothing; afterwards the outbox is empty, the
# counters and connection_status agree with what was sent, and the status
# view names the broker without any credential.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

# The other application: one queue for everything addressed to crm and
# for broadcasts.
my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--declare-exchanges',
	'--bind', 'inter-app-events:crm.#', '--bind', 'inter-app-broadcast:',
	'--setup-only');
is($rc, 0, 'crm queue declared and bound') or diag($err);

my $node = MessagingTest::new_cluster('envelope', $mq,
	'messaging.app_name' => 'wrapper');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'relay connected')
  or diag($node->safe_psql('postgres', 'TABLE messaging.connection_status'));

# Payload with non-ASCII text, escapes, nesting, arrays and every JSON
# scalar kind.
my $payload = '{"name": "Zoë Ω 日本 😀", "quote": "say \"hi\"\n\ttab\\\\", '
  . '"nested": {"list": [1, 2.5, -3e2, null, true, false, {"deep": ["x"]}], '
  . '"empty": {}, "none": []}, "id": 12345678901234567890}';

my $before = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
my $ids = $node->safe_psql('postgres', qq{
	BEGIN;
	SELECT messaging.publish_event('user.created', \$p\$$payload\$p\$::jsonb,
		target_app => 'crm', tenant_id => 'acme', correlation_id => 'corr-42');
	SELECT messaging.publish_event('org.created', '{"org_id": "o-1"}');
	SELECT messaging.publish_event('user.deleted', '{"user_id": "u-9"}',
		target_app => 'crm', source_app => 'billing');
	COMMIT;
});
my ($id_directed, $id_broadcast, $id_plain) = split /\n/, $ids;
like($_, qr/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
	"event id $_ is a UUIDv7")
  for ($id_directed, $id_broadcast, $id_plain);

# A rolled-back transaction's event must never reach the broker.
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT messaging.publish_event('user.created', '{"ghost": true}',
		target_app => 'crm', tenant_id => 'acme');
	ROLLBACK;
});
my $after = $node->safe_psql('postgres', 'SELECT clock_timestamp()');

ok( $node->poll_query_until('postgres',
		'SELECT count(*) = 0 FROM messaging.outbox'),
	'outbox drained');

($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'crm-inbox', '--count', '3', '--timeout-ms', '30000');
is($rc, 0, 'three messages consumed') or diag($err);
my %by_id = map { ($_->{properties}{messageId} // '?') => $_ }
  MessagingTest::decode_messages($out);
is_deeply([ sort keys %by_id ], [ sort $id_directed, $id_broadcast, $id_plain ],
	'messageId of each message is the id publish_event() returned');

# The rolled-back event would be the fourth message.
is($mq->queue_messages('crm-inbox'), 0,
	'nothing else queued: the rolled-back event was not published');

my $app_name = $node->safe_psql('postgres', 'SHOW messaging.app_name');
is($app_name, 'wrapper', 'messaging.app_name as configured');

# Checks one delivered message against what was published.
sub check_message
{
	my ($name, $m, %want) = @_;
	my $p = $m->{properties};
	is($m->{exchange}, $want{exchange}, "$name: exchange");
	is($m->{routingKey}, $want{routing_key}, "$name: routing key");
	is($p->{contentType}, 'application/cloudevents+json', "$name: content type");
	is($p->{type}, $want{type}, "$name: type property");
	is($p->{appId}, $want{source}, "$name: appId is the source application");
	is($p->{deliveryMode}, 2, "$name: persistent");
	is($p->{correlationId}, $want{correlation_id}, "$name: correlationId");
	ok(!defined $p->{contentEncoding}, "$name: no content encoding");

	my $ce = MessagingTest::decode_json($m->{body});
	my @keys = qw(specversion id source type time datacontenttype data);
	push @keys, 'tenantid' if defined $want{tenant};
	push @keys, 'targetapp' if defined $want{target};
	push @keys, 'correlationid' if defined $want{correlation_id};
	is_deeply([ sort keys %$ce ], [ sort @keys ],
		"$name: envelope attributes, extensions only when set");
	is($ce->{specversion}, '1.0', "$name: specversion");
	is($ce->{id}, $p->{messageId}, "$name: envelope id is the message id");
	is($ce->{source}, $want{source}, "$name: source");
	is($ce->{type}, $want{type}, "$name: type");
	is($ce->{datacontenttype}, 'application/json', "$name: datacontenttype");
	is($ce->{tenantid}, $want{tenant}, "$name: tenantid");
	is($ce->{targetapp}, $want{target}, "$name: targetapp");
	is($ce->{correlationid}, $want{correlation_id}, "$name: correlationid");
	like($ce->{time},
		qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/,
		"$name: time is RFC 3339 in UTC");

	# time lies within the publishing statement, and the AMQP timestamp
	# (seconds) is the same instant.
	my ($in_range, $epoch) = split /\|/, $node->safe_psql('postgres', qq{
		SELECT '$ce->{time}'::timestamptz BETWEEN '$before' AND '$after',
			   floor(extract(epoch FROM '$ce->{time}'::timestamptz))::bigint});
	is($in_range, 't', "$name: time is when the event was published");
	is($p->{timestamp}, $epoch, "$name: AMQP timestamp matches time");

	# data is the payload, compared both as jsonb and decoded here.
	(my $body_sql = $m->{body}) =~ s/'/''/g;
	is( $node->safe_psql('postgres',
			"SELECT ('$body_sql'::jsonb -> 'data') = \$p\$$want{data}\$p\$::jsonb"),
		't', "$name: data equals the payload (jsonb)");
	is_deeply($ce->{data}, MessagingTest::decode_json($want{data}),
		"$name: data equals the payload (decoded)");
}

check_message('directed', $by_id{$id_directed} // {},
	exchange => 'inter-app-events',
	routing_key => 'crm.user.created',
	type => 'user.created',
	source => 'wrapper',
	target => 'crm',
	tenant => 'acme',
	correlation_id => 'corr-42',
	data => $payload);
# Non-ASCII text arrives as UTF-8 bytes, unchanged.
my $delivered = MessagingTest::decode_json(($by_id{$id_directed} // {})->{body} // '{}');
is($delivered->{data}{name}, 'Zoë Ω 日本 😀', 'non-ASCII text round trip');
is($delivered->{data}{quote}, "say \"hi\"\n\ttab\\", 'escaped characters round trip');

check_message('broadcast', $by_id{$id_broadcast} // {},
	exchange => 'inter-app-broadcast',
	routing_key => 'org.created',
	type => 'org.created',
	source => 'wrapper',
	data => '{"org_id": "o-1"}');

check_message('explicit source', $by_id{$id_plain} // {},
	exchange => 'inter-app-events',
	routing_key => 'crm.user.deleted',
	type => 'user.deleted',
	source => 'billing',
	target => 'crm',
	data => '{"user_id": "u-9"}');

# What the relay left behind.
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox'),
	'0', 'outbox empty');
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.failed_events'),
	'0', 'no failed events');
is( $node->safe_psql('postgres', q{
		SELECT string_agg(format('%s/%s/%s/%s p=%s a=%s f=%s',
				tenant_id, source_app, target_app, event_type,
				published, acknowledged, failed), ',' ORDER BY event_type)
		FROM messaging.event_counters
		-- the local consumer counts the broadcast it received itself
		WHERE target_app <> 'wrapper'}),
	'/wrapper//org.created p=1 a=1 f=0,'
	  . 'acme/wrapper/crm/user.created p=1 a=0 f=0,'
	  . '/billing/crm/user.deleted p=1 a=0 f=0',
	'event_counters: one published per key; a broadcast counts as acknowledged');
is( $node->safe_psql('postgres',
		'SELECT string_agg(event_id::text, \',\' ORDER BY event_id) FROM messaging.awaiting_ack'),
	join(',', sort $id_directed, $id_plain),
	'directed events await their acknowledgement');

my $status = $node->safe_psql('postgres', q{
	SELECT state, broker_host, broker_port, published, failed, backlog,
		   connected_since IS NOT NULL, last_success IS NOT NULL,
		   pid IS NOT NULL
	FROM messaging.connection_status WHERE worker = 'relay'});
is($status, join('|', 'connected', '127.0.0.1', $mq->port, 3, 0, 0, 't', 't', 't'),
	'connection_status: relay connected to 127.0.0.1 at the broker port, 3 published');
my $all_status = $node->safe_psql('postgres',
	'SELECT string_agg(row_to_json(s)::text, E\'\n\') FROM messaging.connection_status s');
unlike($all_status, qr/guest/, 'no user name or password in connection_status');

# The relay's row in pg_stat_activity.
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'messaging relay'"),
	'1', 'relay visible in pg_stat_activity');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/guest/, 'no credential in the server log');
like($log, qr/messaging relay connected to RabbitMQ at 127\.0\.0\.1:\d+/,
	'server log names the broker endpoint');

done_testing();
