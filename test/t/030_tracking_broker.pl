# Event tracking against a real broker: every status transition of an
# event (pending -> published -> acknowledged; delivered broadcasts; failed
# as unroutable, nacked, negatively acknowledged and unacknowledged in
# time), acknowledgements arriving through the consumer, the
# communication matrix over several tenants and applications, sync_health
# while connected and after the broker went away, track_success on and
# off, cleanup counts and per-role access.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

# Queues of the other applications: crm (also receives broadcasts),
# billing, and "full", whose policy rejects every message so that the
# broker nacks what is routed to it.
my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 't30-crm', '--declare-exchanges',
	'--bind', 'inter-app-events:crm.#', '--bind', 'inter-app-broadcast:',
	'--setup-only');
is($rc, 0, 'crm queue bound') or diag($err);
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 't30-billing', '--bind', 'inter-app-events:billing.#',
	'--setup-only');
is($rc, 0, 'billing queue bound') or diag($err);
$mq->ctl('set_policy', '--apply-to', 'queues', 't30-full', '^t30-full$',
	'{"max-length":0,"overflow":"reject-publish"}');
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 't30-full', '--bind', 'inter-app-events:full.#',
	'--setup-only');
is($rc, 0, 'rejecting queue bound') or diag($err);

my $node = MessagingTest::new_cluster('tracking', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.publish_max_attempts' => '2',
	'messaging.recent_events' => '1000');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok($node->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'relay connected');

sub sql { return $node->safe_psql('postgres', $_[0]) }

ok($node->poll_query_until('postgres',
		'SELECT last_cleanup_at IS NOT NULL AND last_cleanup_rows = 0 FROM messaging.maintenance_state'),
	'the relay ran the periodic cleanup');
ok($node->poll_query_until('postgres',
		'SELECT count(*) > 0 FROM messaging.relay_samples'),
	'the relay sampled its publish total');

sub publish
{
	my ($type, $target, $tenant) = @_;
	my $t = defined $target ? "'$target'" : 'NULL';
	my $n = defined $tenant ? "'$tenant'" : 'NULL';
	return sql("SELECT messaging.publish_event('$type', '{\"n\": 1}', $t, $n)");
}

sub status { return sql("SELECT status FROM messaging.event_status('$_[0]')") }

sub wait_status
{
	my ($id, $status) = @_;
	return $node->poll_query_until('postgres',
		"SELECT status FROM messaging.event_status('$id')", $status);
}

sub rows_for
{
	my ($id) = @_;
	return sql("SELECT (SELECT count(*) FROM messaging.outbox WHERE id = '$id')"
		  . " + (SELECT count(*) FROM messaging.awaiting_ack WHERE event_id = '$id')"
		  . " + (SELECT count(*) FROM messaging.failed_events WHERE event_id = '$id')"
		  . " + (SELECT count(*) FROM messaging.delivered_events WHERE event_id = '$id')");
}

# pending -> published -> acknowledged
my $inside = sql(q{BEGIN;
	SELECT messaging.publish_event('user.created', '{}', 'crm', 'acme') AS id \gset
	SELECT status FROM messaging.event_status(:'id');
	COMMIT;
	SELECT :'id';});
my ($pending_status, $directed) = split /\n/, $inside;
is($pending_status, 'pending', 'pending while in the outbox');
ok(wait_status($directed, 'published'), 'published once confirmed');
is(sql("SELECT target_app || ' ' || tenant_id || ' ' || (age >= interval '0')"
	  . " FROM messaging.unacknowledged_events WHERE event_id = '$directed'"),
	'crm acme true', 'listed as unacknowledged');
is(sql("SELECT messaging.acknowledge_event('$directed')"), 't', 'acknowledged');
is(sql("SELECT status || ' ' || (acknowledged_at IS NOT NULL) || ' ' || attempts"
	  . " FROM messaging.event_status('$directed')"),
	'acknowledged true 1', 'status from the record of recent events');
is(rows_for($directed), '0', 'an acknowledged event leaves no row');
is(sql("SELECT messaging.acknowledge_event('$directed')"), 'f',
	'second acknowledgement is refused');

# broadcasts are done once confirmed
my $broadcast = publish('org.created', undef, 'acme');
ok(wait_status($broadcast, 'delivered'), 'broadcast delivered');
is(rows_for($broadcast), '0', 'a delivered broadcast leaves no row');

# failures by return and by nack
my $unroutable = publish('user.created', 'nobody', 'beta');
ok(wait_status($unroutable, 'failed'), 'unroutable event failed');
like(sql("SELECT reason || ': ' || error FROM messaging.failed_events WHERE event_id = '$unroutable'"),
	qr/^unroutable: broker returned the message: 312 NO_ROUTE/, 'reason unroutable');
my $nacked = publish('invoice.paid', 'full', 'beta');
ok(wait_status($nacked, 'failed'), 'rejected event failed');
is(sql("SELECT reason || ' ' || attempts FROM messaging.failed_events WHERE event_id = '$nacked'"),
	'nacked 2', 'reason nacked after messaging.publish_max_attempts');

# negative acknowledgement, directly and through the consumer
my $negative = publish('user.updated', 'crm', 'acme');
ok(wait_status($negative, 'published'), 'published before its negative ack');
is(sql("SELECT messaging.acknowledge_event('$negative', false, 'crm: unknown user')"),
	't', 'negative acknowledgement accepted');
is(sql("SELECT status || ' / ' || last_error FROM messaging.event_status('$negative')"),
	'failed / crm: unknown user', 'failed with the application\'s error');
is(sql("SELECT reason FROM messaging.failed_events WHERE event_id = '$negative'"),
	'negative_ack', 'reason negative_ack');

ok($node->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'consumer'"),
	'consumer connected');
my $via_consumer = publish('user.renamed', 'crm', 'acme');
my $via_consumer_nack = publish('user.renamed', 'crm', 'acme');
ok(wait_status($via_consumer, 'published'), 'published, awaiting the consumer');
ok(wait_status($via_consumer_nack, 'published'), 'second one published');
($rc, $out, $err) = MessagingTest::node('publish', '--url', $url,
	'--exchange', 'inter-app-events', '--routing-key', 'wrapper.event.acknowledged',
	'--event', 'event.acknowledged', '--source', 'crm', '--tenant', 'acme',
	'--data', qq({"event_id":"$via_consumer","success":true}));
is($rc, 0, 'crm published its acknowledgement') or diag($err);
($rc, $out, $err) = MessagingTest::node('publish', '--url', $url,
	'--exchange', 'inter-app-events', '--routing-key', 'wrapper.event.acknowledged',
	'--event', 'event.acknowledged', '--source', 'crm', '--tenant', 'acme',
	'--data', qq({"event_id":"$via_consumer_nack","success":false,"error":"crm: locked"}));
is($rc, 0, 'crm published its negative acknowledgement') or diag($err);
ok(wait_status($via_consumer, 'acknowledged'), 'acknowledged through the consumer');
ok(wait_status($via_consumer_nack, 'failed'), 'failed through the consumer');
is(sql("SELECT error FROM messaging.failed_events WHERE event_id = '$via_consumer_nack'"),
	'crm: locked', 'error text carried from the acknowledgement');

# acknowledgement timeout (the relay checks about every ten seconds)
$node->safe_psql('postgres', "ALTER SYSTEM SET messaging.ack_timeout = 2");
$node->reload;
my $late = publish('user.merged', 'billing', 'gamma');
ok(wait_status($late, 'failed'), 'unacknowledged event failed');
like(sql("SELECT reason || ': ' || error FROM messaging.failed_events WHERE event_id = '$late'"),
	qr/^ack_timeout: acknowledgement timeout: application "billing" did not acknowledge the event within 2 seconds/,
	'reason ack_timeout, and the error says so');
is(sql("SELECT messaging.acknowledge_event('$late')"), 'f', 'a late acknowledgement is refused');
$node->safe_psql('postgres', "ALTER SYSTEM RESET messaging.ack_timeout");
$node->reload;
ok($node->poll_query_until('postgres', "SHOW messaging.ack_timeout", '5min'),
	'timeout back to its default');

# the matrix over several tenants and applications
my @acme_crm = map { publish('user.created', 'crm', 'acme') } 1 .. 3;
my @beta_crm = map { publish('user.created', 'crm', 'beta') } 1 .. 2;
my $acme_billing = publish('invoice.sent', 'billing', 'acme');
my $beta_all = publish('org.created', undef, 'beta');
ok(wait_status($_, 'published'), 'published') for @acme_crm, @beta_crm, $acme_billing;
ok(wait_status($beta_all, 'delivered'), 'broadcast delivered');
sql("SELECT messaging.acknowledge_event(id) FROM unnest(ARRAY['$acme_crm[0]', '$acme_crm[1]', '$beta_crm[0]']::uuid[]) id");
is(sql(q{SELECT string_agg(concat_ws(' ', coalesce(tenant_id, '-'), source_app, target_app,
		published, acknowledged, failed, pending, coalesce(success_rate::text, '-')), E'\n'
		ORDER BY tenant_id, source_app, target_app)
	FROM messaging.communication_matrix
	WHERE source_app = 'wrapper' AND target_app <> 'wrapper'}),
	join("\n",
		'acme wrapper * 1 1 0 0 1.0000',
		'acme wrapper billing 1 0 0 1 0.0000',
		'acme wrapper crm 7 4 2 1 0.5714',
		'beta wrapper * 1 1 0 0 1.0000',
		'beta wrapper crm 2 1 0 1 0.5000',
		'beta wrapper full 0 0 1 0 -',
		'beta wrapper nobody 0 0 1 0 -',
		'gamma wrapper billing 1 0 1 0 0.0000'),
	'matrix of outgoing events');
like(sql(q{SELECT published || ' ' || acknowledged FROM messaging.communication_matrix
	WHERE source_app = 'crm' AND target_app = 'wrapper' AND tenant_id = 'acme'}),
	qr/^2 2$/, 'acknowledgements received from crm counted as incoming events');

# health while connected: 5 of the 14 events settled this hour failed
my $health = sql("SELECT status || ' ' || relay_state || ' ' || outbox_backlog || ' ' || unacknowledged"
	  . " FROM messaging.sync_health");
is($health, 'unhealthy connected 0 3', 'unhealthy with a failure ratio over 25%')
  or diag(sql('SELECT reasons FROM messaging.sync_health'));
is(sql(q{SELECT string_agg(r, ',') FROM messaging.sync_health, unnest(reasons) r
	WHERE r NOT LIKE 'consumer%' AND r NOT LIKE '%dead-letter%'}),
	'at least 25% of the events settled in the last hour failed',
	'the failure ratio is the only problem');
my @more = map { publish('org.updated', undef, 'acme') } 1 .. 10;
ok(wait_status($more[-1], 'delivered'), 'ten more broadcasts delivered');
is(sql(q{SELECT status || ' ' || ('at least 1% of the events settled in the last hour failed' = ANY (reasons))
	FROM messaging.sync_health}),
	'degraded true', 'degraded with a failure ratio between 1% and 25%');
is(sql(q{SELECT count(*) FROM messaging.sync_health, unnest(reasons) r
	WHERE r LIKE 'relay%' OR r LIKE '%unpublished%'}), '0', 'no relay problem');
ok($node->poll_query_until('postgres',
		'SELECT publish_rate_5m > 0 FROM messaging.sync_health'),
	'publish rate derived from the relay samples');
is(sql("SELECT failed_last_hour FROM messaging.sync_health"), '5',
	'failures of the last hour');

# track_success keeps audit rows
$node->safe_psql('postgres', "ALTER SYSTEM SET messaging.track_success = on");
$node->reload;
ok($node->poll_query_until('postgres', "SHOW messaging.track_success", 'on'),
	'track_success on');
my $audited_broadcast = publish('org.audited', undef, 'acme');
my $audited = publish('user.audited', 'crm', 'acme');
ok(wait_status($audited, 'published'), 'audited event published');
ok(wait_status($audited_broadcast, 'delivered'), 'audited broadcast delivered');
sql("SELECT messaging.acknowledge_event('$audited')");
is(sql("SELECT string_agg(event_type || ' ' || status, ',' ORDER BY event_type)"
	  . " FROM messaging.delivered_events"),
	'org.audited delivered,user.audited acknowledged', 'audit rows for both successes');
$node->safe_psql('postgres', "ALTER SYSTEM RESET messaging.track_success");
$node->reload;
ok($node->poll_query_until('postgres', "SHOW messaging.track_success", 'off'),
	'track_success off again');

# roles: a publisher's events are relayed; a reader sees status and views
$node->safe_psql('postgres', q{
	CREATE ROLE t30_pub LOGIN IN ROLE messaging_publisher;
	CREATE ROLE t30_read LOGIN IN ROLE messaging_reader;
	CREATE ROLE t30_none LOGIN;});
my $by_publisher = $node->safe_psql('postgres',
	"SELECT messaging.publish_event('user.created', '{}', 'crm', 'acme')",
	extra_params => [ '-U', 't30_pub' ]);
ok(wait_status($by_publisher, 'published'), 'a publisher\'s event is relayed');
is($node->safe_psql('postgres',
		"SELECT status FROM messaging.event_status('$by_publisher')",
		extra_params => [ '-U', 't30_read' ]),
	'published', 'a reader sees its status');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT messaging.acknowledge_event('$by_publisher')",
	extra_params => [ '-U', 't30_read' ]);
like($stderr, qr/permission denied for function acknowledge_event/, 'a reader cannot acknowledge');
($ret, $stdout, $stderr) = $node->psql('postgres',
	'SELECT * FROM messaging.sync_health', extra_params => [ '-U', 't30_none' ]);
like($stderr, qr/permission denied/, 'a role without grants sees nothing');

# cleanup counts what it removes
my $expected = sql(q{SELECT (SELECT count(*) FROM messaging.failed_events)
	+ (SELECT count(*) FROM messaging.delivered_events)
	+ (SELECT count(*) FROM messaging.event_counters WHERE bucket < date_trunc('hour', now()))});
is($expected, '7', 'rows to clean up: five failures, two audit rows');
my $cleaned = sql(q{BEGIN;
	SELECT (SELECT count(*) FROM messaging.handled_events WHERE handled_at < now())
		 + (SELECT count(*) FROM messaging.dead_letters
			 WHERE failed_at < now() AND replay_requested_at IS NULL)
		 + (SELECT count(*) FROM messaging.failed_events WHERE failed_at < now())
		 + (SELECT count(*) FROM messaging.delivered_events WHERE completed_at < now())
		 + (SELECT count(*) FROM messaging.event_counters
			 WHERE bucket < date_trunc('hour', now())) AS expected \gset
	SELECT messaging.cleanup(interval '0') = :expected;
	COMMIT;});
is($cleaned, 't', 'cleanup returns the number of rows it removed');
is(sql("SELECT count(*) FROM messaging.failed_events"), '0', 'failures gone');
is(sql("SELECT count(*) FROM messaging.delivered_events"), '0', 'audit rows gone');

# successes stay visible only while the record of recent events (1000
# entries here) holds them
my $last_bulk = sql(q{SELECT max(messaging.publish_event('bulk.event', '{}', NULL, 'acme')::text)
	FROM generate_series(1, 1000)});
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'a thousand broadcasts published');
is(status($last_bulk), 'delivered', 'the newest success is remembered');
is(status($directed), 'unknown', 'an old acknowledged event is no longer known');
is(status($broadcast), 'unknown', 'an old broadcast is no longer known');
is(rows_for($directed) + rows_for($broadcast), 0, 'and neither left a row');

# the broker goes away: unhealthy
$mq->stop;
ok($node->poll_query_until('postgres',
		"SELECT status = 'unhealthy' AND 'relay is not connected to the broker' = ANY (reasons)"
		  . " FROM messaging.sync_health"),
	'unhealthy without a broker');
my $stuck = publish('user.created', 'crm', 'acme');
is(status($stuck), 'pending', 'events wait in the outbox');
is(sql("SELECT outbox_backlog FROM messaging.sync_health"), '1', 'backlog counted');

$node->stop;
done_testing();
