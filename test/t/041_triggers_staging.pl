# Staged events through the real broker. Statement-form triggers pack a
# statement's events into messaging.outbox_staged, and the relay moves
# them into the outbox before it publishes. What the receiving application
# must see is unchanged:
#
#  1. a transaction's events in the order it wrote them, whether they were
#     written directly (publish_event()) or staged: a marker event, 3 000
#     row events in row order, a second marker, each once, with increasing
#     ids; also for three sessions committing at once, in three rounds,
#     each while the relay still publishes the round before;
#  2. with the broker down, staged events are pending (pending_events,
#     sync_health.outbox_backlog, event_status()), and all arrive once it
#     is back;
#  3. the relay killed by SIGKILL in the middle of 20 000 staged events:
#     its successor publishes every one of them;
#  4. events too large for a staged row go to the outbox directly and still
#     arrive in row order among the small ones, payloads intact;
#  5. a database on version 1.0 (no staging table) writes to the outbox;
#     after ALTER EXTENSION messaging UPDATE its events are staged, and the
#     relay, running all along, publishes them.
#
# Duplicates are allowed where a failure was provoked (at-least-once), and
# counted; elsewhere every event must arrive exactly once.

use strict;
use warnings;

use Digest::MD5 qw(md5_hex);
use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

ok(MessagingTest::bind_queue($mq, 'crm-staged', 'inter-app-events:crm.#'),
	'crm queue declared and bound');

# restart_after_crash: the SIGKILL of part 3 needs the postmaster's crash
# restart, which the test framework turns off.
my $node = MessagingTest::new_cluster('staging', $mq,
	'messaging.app_name' => 'wrapper',
	'messaging.reconnect_max_delay' => '1s',
	'messaging.connect_timeout' => '2s',
	'restart_after_crash' => 'on');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok(MessagingTest::relay_connected($node), 'relay connected');

$node->safe_psql('postgres', q{
	CREATE TABLE items (id bigint PRIMARY KEY, tenant text, batch text, note text);
	SELECT messaging.create_event_trigger('items', 'item', 'crm', 'tenant');
});

# Waits until nothing is left to publish on cluster $n: no outbox row and,
# when $staged, no staged row.
sub drained
{
	my ($n, $name, $staged) = @_;
	my $query = 'SELECT NOT EXISTS (SELECT FROM messaging.outbox)';
	$query .= ' AND NOT EXISTS (SELECT FROM messaging.outbox_staged)' if $staged;
	return ok($n->poll_query_until('postgres', $query),
		"$name: nothing left to publish");
}

# Reads every message $queue holds, as consume.js --fields prints them:
# a list of hashes keyed by field name, in the order of arrival.
sub consume_all
{
	my ($queue, $name, @fields) = @_;
	my $count = $mq->queue_messages($queue);
	my ($rc, $out, $err) = MessagingTest::node({ timeout => 150 }, 'consume',
		'--url', $url, '--queue', $queue, '--count', $count,
		'--timeout-ms', '120000', '--prefetch', '1000',
		'--fields', join(',', @fields));
	is($rc, 0, "$name: the $count queued messages consumed") or diag($err);
	is($mq->queue_messages($queue), 0, "$name: queue empty afterwards");
	return map {
		my %m;
		@m{@fields} = @$_;
		\%m;
	} MessagingTest::decode_fields($out);
}

# The number of adjacent pairs in @ids (uuid strings) that do not increase.
sub not_increasing
{
	my @ids = @_;
	return scalar grep { $ids[ $_ - 1 ] ge $ids[$_] } 1 .. $#ids;
}

# Run-length encoding of the pending events in publishing order:
# "event_type staged count" per run, for checks inside the writing
# transaction.
my $pending_runs = q{
	SELECT string_agg(event_type || ' ' || staged || ' ' || n, ', ' ORDER BY first)
	  FROM (SELECT event_type, staged, count(*) AS n, min(pos) AS first
			  FROM (SELECT event_type, staged,
						   row_number() OVER (ORDER BY id) AS pos,
						   row_number() OVER (ORDER BY id) -
						   row_number() OVER (PARTITION BY event_type, staged ORDER BY id) AS run
					  FROM messaging.pending_events) p
			 GROUP BY event_type, staged, run) r};

my @item_fields = qw(messageId body.type body.tenantid body.data.batch body.data.id);

# Checks that the messages of one batch arrived as its transaction wrote
# them: batch.started, rows $first .. $last in order, batch.finished, each
# once, with increasing event ids.
sub check_batch
{
	my ($name, $msgs, $tenant, $first, $last) = @_;
	my $rows = $last - $first + 1;
	is(scalar @$msgs, $rows + 2, "$name: $rows row events and two markers, none twice");
	is_deeply(
		[ map { $_->{'body.type'} } @$msgs ],
		[ 'batch.started', ('item.created') x $rows, 'batch.finished' ],
		"$name: the markers frame the row events");
	is_deeply(
		[ map { $_->{'body.data.id'} } @$msgs[ 1 .. $#$msgs - 1 ] ],
		[ $first .. $last ],
		"$name: row events in row order");
	is(not_increasing(map { $_->{messageId} } @$msgs), 0,
		"$name: event ids increase");
	is(scalar(grep { ($_->{'body.tenantid'} // '') ne $tenant } @$msgs), 0,
		"$name: every event has tenant $tenant");
}

# 1. Order within a transaction, one session alone. Rows of 1 kB make the
# batch span more staged rows than the relay moves into the outbox in one
# pass (RELAY_UNSTAGE_ROWS, 256), so that the second marker, written to
# the outbox directly, must wait for the passes that follow.
my @out = split /\n/, $node->safe_psql('postgres', qq{
	BEGIN;
	SELECT messaging.publish_event('batch.started', '{"batch": "solo"}', 'crm', 'acme');
	INSERT INTO items SELECT g, 'acme', 'solo', repeat('n', 1000)
	  FROM generate_series(1, 3000) g;
	SELECT messaging.publish_event('batch.finished', '{"batch": "solo"}', 'crm', 'acme');
	$pending_runs;
	SELECT count(*) FROM messaging.outbox_staged;
	COMMIT;
});
my ($solo_a, $solo_b, $runs, $staged_rows) = @out;
is($runs, 'batch.started false 1, item.created true 3000, batch.finished false 1',
	'solo: before commit, the row events are staged between the two markers');
cmp_ok($staged_rows, '>', 256, 'solo: more staged rows than one pass moves');
drained($node, 'solo', 1);
my @solo = consume_all('crm-staged', 'solo', @item_fields);
check_batch('solo', \@solo, 'acme', 1, 3000);
is($solo[0]{messageId}, $solo_a, 'solo: the first message is the first marker');
is($solo[-1]{messageId}, $solo_b, 'solo: the last message is the second marker');

# Three sessions per round write a batch each and wait, before COMMIT, on a
# shared advisory lock that the test holds until all three are ready, so
# that they commit together. Each later round starts as soon as the one
# before has committed, while the relay publishes that one.
sub start_batch
{
	my ($batch, $tenant, $first, $rows, $lock) = @_;
	my $last = $first + $rows - 1;
	my $sql = qq{
		BEGIN;
		SELECT messaging.publish_event('batch.started',
			jsonb_build_object('batch', '$batch'), 'crm', '$tenant');
		INSERT INTO items SELECT g, '$tenant', '$batch', repeat('n', 1000)
		  FROM generate_series($first, $last) g;
		SELECT messaging.publish_event('batch.finished',
			jsonb_build_object('batch', '$batch'), 'crm', '$tenant');
		SELECT pg_advisory_xact_lock_shared($lock);
		COMMIT;
	};
	my ($o, $e) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-d', $node->connstr('postgres'), '-c', $sql ],
		'<', \undef, '>', \$o, '2>', \$e, IPC::Run::timeout(60));
	return { h => $h, err => \$e, batch => $batch };
}

my $barrier = $node->background_psql('postgres');
my %batches;					# batch => [tenant, first row, last row]
for my $round (1 .. 3)
{
	$barrier->query_safe("SELECT pg_advisory_lock($round)");
	my @sessions;
	for my $s (1 .. 3)
	{
		my $first = $round * 100000 + $s * 10000;
		my $batch = "r${round}s$s";
		$batches{$batch} = [ "t$s", $first, $first + 2999 ];
		push @sessions, start_batch($batch, "t$s", $first, 3000, $round);
	}
	ok( $node->poll_query_until('postgres', qq{
			SELECT count(*) = 3 FROM pg_locks
			 WHERE locktype = 'advisory' AND objid = $round AND NOT granted}),
		"round $round: three sessions wait to commit");
	note("round $round: events of earlier rounds still pending: "
		  . $node->safe_psql('postgres', 'SELECT count(*) FROM messaging.pending_events'));
	$barrier->query_safe("SELECT pg_advisory_unlock($round)");
	for my $sess (@sessions)
	{
		my $ok = eval { $sess->{h}->finish; 1 };
		ok($ok && $sess->{h}->result == 0, "$sess->{batch}: committed")
		  or diag(${ $sess->{err} } . ($@ // ''));
	}
}
$barrier->quit;
drained($node, 'concurrent', 1);
my @all = consume_all('crm-staged', 'concurrent', @item_fields);
is(scalar @all, 9 * 3002, 'concurrent: 9 batches of 3 002 events arrived');
my %of;
push @{ $of{ $_->{'body.data.batch'} // '' } }, $_ for @all;
is_deeply([ sort keys %of ], [ sort keys %batches ], 'concurrent: every batch, nothing else');
check_batch($_, $of{$_} // [], @{ $batches{$_} }) for sort keys %batches;

# How much the sessions' ids interleaved (informative: the order above must
# hold either way).
my %range = map {
	my @ids = map { $_->{messageId} } @{ $of{$_} // [] };
	($_ => [ $ids[0] // '', $ids[-1] // '' ])
} keys %batches;
my $overlaps = 0;
for my $x (keys %range)
{
	for my $y (keys %range)
	{
		$overlaps++
		  if $x lt $y
		  && $range{$x}[0] lt $range{$y}[1]
		  && $range{$y}[0] lt $range{$x}[1];
	}
}
note("concurrent: pairs of batches with interleaved ids: $overlaps of 36");

# 2. Broker down: a 5 000-row INSERT and an UPDATE of those rows, staged
# while the relay cannot publish.
$node->safe_psql('postgres', q{
	CREATE TABLE stock (id integer PRIMARY KEY, tenant text, qty integer);
	SELECT messaging.create_event_trigger('stock', 'stock', 'crm', 'tenant');
});
$mq->stop;
ok( $node->poll_query_until('postgres',
		"SELECT state <> 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'broker down: the relay noticed');
$node->safe_psql('postgres',
	q{INSERT INTO stock SELECT g, 't' || g % 4, g FROM generate_series(1, 5000) g});
$node->safe_psql('postgres', q{UPDATE stock SET qty = qty + 1});
is( $node->safe_psql('postgres', q{
		SELECT count(*) || ' ' || count(*) FILTER (WHERE staged)
		  FROM messaging.pending_events}),
	'10000 10000', 'broker down: 10 000 events pending, all of them staged');
my $backlog = $node->safe_psql('postgres',
	'SELECT outbox_backlog FROM messaging.sync_health');
cmp_ok($backlog, '>=', 10000, "broker down: sync_health counts them ($backlog)");
for my $case ([ 'stock.created', 'id' ], [ 'stock.updated', 'new,id' ])
{
	my ($type, $path) = @$case;
	is( $node->safe_psql('postgres', qq{
			SELECT (s).status || ' ' || (s).event_type || ' ' || (s).tenant_id
				   || ' ' || (s).target_app
			  FROM (SELECT messaging.event_status(id) AS s
					  FROM messaging.pending_events
					 WHERE staged AND event_type = '$type'
					   AND payload #>> '{$path}' = '4321') x}),
		"pending $type t1 crm",
		"broker down: event_status() of a staged $type event");
}
$mq->start;
ok(MessagingTest::relay_connected($node), 'broker back: relay connected');
drained($node, 'broker back', 1);
my @stock = consume_all('crm-staged', 'broker back',
	qw(messageId bodySha256 body.type body.data.id body.data.new.id body.data.new.qty));
my (%copies, %sha, %first_of, @first, $changed);
for my $m (@stock)
{
	my $id = $m->{messageId};
	$changed++ if exists $sha{$id} && $sha{$id} ne $m->{bodySha256};
	$sha{$id} = $m->{bodySha256};
	next if $copies{$id}++;
	my $row = $m->{'body.data.id'} // $m->{'body.data.new.id'} // 0;
	push @{ $first_of{ $m->{'body.type'} } }, $row;
	push @first, $id;
}
my $dups = @stock - keys %copies;
diag("broker down: duplicates (at-least-once): $dups") if $dups;
is(scalar keys %copies, 10000, 'broker back: 10 000 distinct events arrived');
ok(!$changed, 'broker back: a duplicate is the same message');
is_deeply($first_of{'stock.created'}, [ 1 .. 5000 ],
	'broker back: every row created, in row order');
is_deeply($first_of{'stock.updated'}, [ 1 .. 5000 ],
	'broker back: every row updated, in row order');
is(not_increasing(@first), 0,
	'broker back: first copies in id order, the INSERT\'s before the UPDATE\'s');
is(scalar(grep { $_ eq 'stock.created' } map { $_->{'body.type'} }
		  @stock[ 0 .. 4999 ]),
	5000, 'broker back: the 5 000 created events come first');
is(scalar(grep { ($_->{'body.data.new.qty'} // 0) != ($_->{'body.data.new.id'} // 0) + 1 }
		grep { $_->{'body.type'} eq 'stock.updated' } @stock),
	0, 'broker back: the updates carry the new quantities');
is( $node->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM messaging.outbox) || ' '
			   || (SELECT count(*) FROM messaging.outbox_staged)}),
	'0 0', 'broker back: outbox and outbox_staged empty');

# 3. The relay killed while it publishes 20 000 staged events. Smaller
# batches and confirm window make that take several passes, slowly
# enough: the kill comes once a pass has committed, while the relay is in
# another one with events left.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET messaging.publish_window = 20;
	ALTER SYSTEM SET messaging.publish_batch_size = 100;
	SELECT pg_reload_conf();
	CREATE TABLE bulk (id integer PRIMARY KEY, tenant text, note text);
	SELECT messaging.create_event_trigger('bulk', 'bulk', 'crm', 'tenant');
});
sleep 1;							# let the relay take in the reload
my ($pid, $before) = split /\|/, $node->safe_psql('postgres',
	"SELECT pid, published FROM messaging.connection_status WHERE worker = 'relay'");
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	INSERT INTO bulk SELECT g, 'acme', repeat('n', 100) FROM generate_series(1, 20000) g});
my $progress = q{
	SELECT r.published - %d, (SELECT count(*) FROM messaging.outbox)
			 + (SELECT coalesce(sum(events), 0) FROM messaging.outbox_staged),
		   (SELECT a.state FROM pg_stat_activity a WHERE a.pid = r.pid)
	  FROM messaging.connection_status r WHERE r.worker = 'relay'};
my ($published, $left, $state, $killed) = (0, 0, '', 0);
my $deadline = time + 60;
while (time < $deadline)
{
	($published, $left, $state) = split /\|/,
	  $node->safe_psql('postgres', sprintf($progress, $before));
	$state //= '';
	if ($published > 0 && $left > 0 && $state eq 'active')
	{
		$killed = kill 'KILL', $pid;
		last;
	}
	last if $left == 0;
	sleep 0.02;
}
ok($killed, "relay killed mid-stream ($published published, $left left)");
ok( $node->poll_query_until('postgres', qq{
		SELECT state = 'connected' AND pid <> $pid
		  FROM messaging.connection_status WHERE worker = 'relay'}),
	'relay killed: a new relay connected');
like(substr(slurp_file($node->logfile), $log_offset),
	qr/\(PID $pid\) was terminated by signal 9/,
	'relay killed: the server log shows the SIGKILL');
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET messaging.publish_window;
	ALTER SYSTEM RESET messaging.publish_batch_size;
	SELECT pg_reload_conf();
});
drained($node, 'relay killed', 1);
my @bulk = consume_all('crm-staged', 'relay killed', qw(messageId body.data.id));
my %rows;
%copies = ();
for my $m (@bulk)
{
	$copies{ $m->{messageId} }++;
	$rows{ $m->{'body.data.id'} // 0 } = 1;
}
$dups = @bulk - keys %copies;
diag("relay killed: duplicates (at-least-once): $dups") if $dups;
is(scalar keys %copies, 20000, 'relay killed: 20 000 distinct events arrived');
is_deeply([ sort { $a <=> $b } keys %rows ], [ 1 .. 20000 ],
	'relay killed: an event for every row');
is( $node->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM messaging.outbox) || ' '
			   || (SELECT count(*) FROM messaging.outbox_staged)}),
	'0 0', 'relay killed: outbox and outbox_staged empty');

# 4. One statement with 20 kB rows among small ones: the large events go to
# the outbox directly, in their place.
$node->safe_psql('postgres', q{
	CREATE TABLE docs (id integer PRIMARY KEY, tenant text, content text);
	SELECT messaging.create_event_trigger('docs', 'doc', 'crm', 'tenant');
});
is( $node->safe_psql('postgres', q{
		BEGIN;
		INSERT INTO docs
		SELECT g, 'acme', CASE WHEN g % 10 = 3 THEN repeat(md5(g::text), 625)
							   ELSE 'small ' || g END
		  FROM generate_series(1, 200) g;
		SELECT count(*) FILTER (WHERE staged) || ' '
			   || count(*) FILTER (WHERE NOT staged) || ' '
			   || bool_and(staged = (length(payload->>'content') < 1000))
		  FROM messaging.pending_events;
		COMMIT;}),
	'180 20 true', 'large and small: before commit, the small events staged, the large not');
drained($node, 'large and small', 1);
my @docs = consume_all('crm-staged', 'large and small',
	qw(messageId bodyLength body.data.id body.data.content));
my %want = map { my ($id, $md5, $len) = split /\|/; ($id => "$md5 $len") }
  split /\n/, $node->safe_psql('postgres',
	'SELECT id, md5(content), length(content) FROM docs ORDER BY id');
is_deeply([ map { $_->{'body.data.id'} } @docs ], [ 1 .. 200 ],
	'large and small: each once, in row order');
is(not_increasing(map { $_->{messageId} } @docs), 0,
	'large and small: event ids increase');
my @damaged = grep {
	my $c = $_->{'body.data.content'} // '';
	md5_hex($c) . ' ' . length($c) ne ($want{ $_->{'body.data.id'} // 0 } // '')
} @docs;
is(scalar @damaged, 0, 'large and small: every payload intact');
is(scalar(grep { $_->{bodyLength} > 20000 } @docs), 20,
	'large and small: twenty messages over 20 kB');
$node->stop;

# 5. Version 1.0, then ALTER EXTENSION messaging UPDATE with the relay
# running. One session stays open across the update.
ok(MessagingTest::bind_queue($mq, 'erp-staged', 'inter-app-events:erp.#'),
	'erp queue declared and bound');
my $old = MessagingTest::new_cluster('upgrade', $mq,
	'messaging.app_name' => 'ledger',
	'messaging.consumer_queue' => 'ledger-events');
$old->safe_psql('postgres', "CREATE EXTENSION messaging VERSION '1.0'");
ok(MessagingTest::relay_connected($old), '1.0: relay connected');
$old->safe_psql('postgres', q{
	CREATE TABLE entries (id integer PRIMARY KEY, tenant text, amount integer);
	SELECT messaging.create_event_trigger('entries', 'entry', 'erp', 'tenant');
});
my $session = $old->background_psql('postgres');
$session->query_safe('BEGIN');
$session->query_safe(
	q{INSERT INTO entries SELECT g, 'acme', g FROM generate_series(1, 500) g});
is( $session->query_safe(q{
		SELECT count(*) || ' ' || (to_regclass('messaging.outbox_staged') IS NULL)
		  FROM messaging.outbox}),
	'500 true', '1.0: before commit, the INSERT\'s events are in the outbox');
$session->query_safe('COMMIT');
$session->query_safe(q{UPDATE entries SET amount = amount + 1});
drained($old, '1.0', 0);

my @entry_fields = qw(messageId body.type body.data.id body.data.new.id);

# "type row" of each message, in the order of arrival.
sub entry_events
{
	return map {
		$_->{'body.type'} . ' '
		  . ($_->{'body.data.id'} // $_->{'body.data.new.id'} // '?')
	} @_;
}

my @v10 = consume_all('erp-staged', '1.0', @entry_fields);
is_deeply([ entry_events(@v10) ],
	[ (map { "entry.created $_" } 1 .. 500), (map { "entry.updated $_" } 1 .. 500) ],
	'1.0: each event once, in order');

$old->safe_psql('postgres', 'ALTER EXTENSION messaging UPDATE');
is( $old->safe_psql('postgres', q{
		SELECT e.extversion = a.default_version
		  FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
		 WHERE e.extname = 'messaging'}),
	't', 'updated to the default version');

# In the session that was open across the update, and in a new one.
$session->query_safe('BEGIN');
$session->query_safe(
	q{INSERT INTO entries SELECT g, 'acme', g FROM generate_series(501, 1000) g});
$session->query_safe(q{UPDATE entries SET amount = amount + 1 WHERE id > 500});
is($session->query_safe($pending_runs),
	'entry.created true 500, entry.updated true 500',
	'updated: the open session stages its INSERT and UPDATE');
$session->query_safe('COMMIT');
$session->quit;
drained($old, 'open session', 1);
is( $old->safe_psql('postgres', qq{
		BEGIN;
		UPDATE entries SET amount = amount + 1 WHERE id <= 500;
		$pending_runs;
		COMMIT;}),
	'entry.updated true 500', 'updated: a new session stages its UPDATE');
drained($old, 'updated', 1);
my @v11 = consume_all('erp-staged', 'updated', @entry_fields);
my @v11_events = entry_events(@v11);
# the last UPDATE's rows come in the order its scan met them
@v11_events[ 1000 .. $#v11_events ] = sort { (split / /, $a)[1] <=> (split / /, $b)[1] }
  @v11_events[ 1000 .. $#v11_events ];
is_deeply(\@v11_events,
	[ (map { "entry.created $_" } 501 .. 1000),
		(map { "entry.updated $_" } 501 .. 1000, 1 .. 500) ],
	'updated: the relay published the staged events, each once, in order');
is(not_increasing(map { $_->{messageId} } @v11), 0, 'updated: event ids increase');
$old->stop;

done_testing();
