# Row-change events through the real broker, as the receiving applications
# see them. A statement-form trigger directed at crm and a row-form trigger
# that broadcasts turn INSERT, UPDATE, DELETE and TRUNCATE into events;
# each arrives on the right exchange with routing key <target>.<entity>.<op>,
# the type property, the tenant and the payload shape of its operation, and
# never with an excluded column. A rolled-back change publishes nothing,
# an update of excluded columns only is no event, and a 2 000-row INSERT
# arrives complete, one message per row.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq = MessagingTest::start_broker();
my $url = $mq->url;

# crm's queue takes what is addressed to crm; another application's queue
# takes broadcasts.
my ($rc, $out, $err);
ok(MessagingTest::bind_queue($mq, 'crm-changes', 'inter-app-events:crm.#'), 'crm queue declared and bound');
($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
	'--queue', 'audit-broadcasts', '--declare-exchanges',
	'--bind', 'inter-app-broadcast:', '--setup-only');
is($rc, 0, 'broadcast queue declared and bound') or diag($err);

my $node = MessagingTest::new_cluster('triggers', $mq,
	'messaging.app_name' => 'wrapper');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'relay connected')
  or diag($node->safe_psql('postgres', 'TABLE messaging.connection_status'));

$node->safe_psql('postgres', q{
	CREATE TABLE accounts (
		id bigint PRIMARY KEY,
		tenant text,
		email text,
		balance numeric(12,2),
		password_hash text
	);
	SELECT messaging.create_event_trigger('accounts', 'account', 'crm',
		'tenant', exclude_columns => '{password_hash}');
	CREATE TABLE notes (id integer PRIMARY KEY, body text, pinned boolean);
	SELECT messaging.create_event_trigger('notes', 'note',
		for_each_row => true);
});

# Waits until the relay has published everything, then reads $count
# messages from $queue.
sub consume
{
	my ($queue, $count) = @_;
	ok( $node->poll_query_until('postgres',
			'SELECT count(*) = 0 FROM messaging.pending_events'),
		"outbox drained before reading $queue");
	my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $url,
		'--queue', $queue, '--count', $count, '--timeout-ms', '60000');
	is($rc, 0, "$count messages consumed from $queue") or diag($err);
	return MessagingTest::decode_messages($out);
}

# The changes, each in its own transaction, and some that must not arrive.
$node->safe_psql('postgres', $_) for (
	q{INSERT INTO accounts VALUES
		(1, 'acme', 'a@example.com', 10.50, 'h1'),
		(2, 'globex', 'b@example.com', NULL, 'h2')},
	q{UPDATE accounts SET email = 'a2@example.com', password_hash = 'h1b'
		WHERE id = 1},
	q{UPDATE accounts SET password_hash = 'h2b' WHERE id = 2},
	q{DELETE FROM accounts WHERE id = 2},
	q{BEGIN; INSERT INTO accounts VALUES (99, 'acme', 'ghost@example.com', 0, 'x');
		UPDATE accounts SET email = 'ghost@example.com' WHERE id = 1; ROLLBACK},
	q{TRUNCATE accounts},
	q{INSERT INTO notes VALUES (7, 'hello', false)},
	q{UPDATE notes SET pinned = true WHERE id = 7},
	q{BEGIN; DELETE FROM notes; ROLLBACK},
	q{DELETE FROM notes WHERE id = 7},
	q{TRUNCATE notes});

my @crm = consume('crm-changes', 5);
my @bc = consume('audit-broadcasts', 4);

# One message as received: routing, properties and envelope.
sub check_event
{
	my ($m, %want) = @_;
	my $name = $want{type};
	my $ce = MessagingTest::decode_json($m->{body});
	is($m->{exchange}, $want{exchange}, "$name: exchange");
	is($m->{routingKey}, $want{routing_key}, "$name: routing key");
	is($m->{properties}{type}, $want{type}, "$name: type property");
	is($m->{properties}{appId}, 'wrapper', "$name: appId");
	is($ce->{type}, $want{type}, "$name: envelope type");
	is($ce->{id}, $m->{properties}{messageId}, "$name: envelope id is the message id");
	is($ce->{tenantid}, $want{tenant}, "$name: tenantid");
	is($ce->{targetapp}, $want{target}, "$name: targetapp");
	is_deeply($ce->{data}, $want{data}, "$name: data");
	unlike($m->{body}, qr/password_hash|"h[12]b?"/,
		"$name: excluded column absent");
}

my @crm_types = map { $_->{properties}{type} } @crm;
is_deeply(\@crm_types,
	[qw(account.created account.created account.updated account.deleted account.truncated)],
	'crm: one event per change, in commit order, nothing rolled back');

# numeric 10.50 keeps its scale in the payload; compare it as text
for my $m (@crm)
{
	$m->{body} =~ s/"balance": ?10\.50/"balance":"10.50"/g;
}
my %tenant_of = (1 => 'acme', 2 => 'globex');
for my $m (@crm[0, 1])
{
	my $id = MessagingTest::decode_json($m->{body})->{data}{id};
	check_event($m,
		exchange => 'inter-app-events',
		routing_key => 'crm.account.created',
		type => 'account.created',
		tenant => $tenant_of{$id},
		target => 'crm',
		data => $id == 1
		? { id => 1, tenant => 'acme', email => 'a@example.com', balance => '10.50' }
		: { id => 2, tenant => 'globex', email => 'b@example.com', balance => undef });
}
check_event($crm[2],
	exchange => 'inter-app-events',
	routing_key => 'crm.account.updated',
	type => 'account.updated',
	tenant => 'acme',
	target => 'crm',
	data => {
		new => { id => 1, tenant => 'acme', email => 'a2@example.com', balance => '10.50' },
		old => { email => 'a@example.com' },
		changed => ['email'],
	});
check_event($crm[3],
	exchange => 'inter-app-events',
	routing_key => 'crm.account.deleted',
	type => 'account.deleted',
	tenant => 'globex',
	target => 'crm',
	data => { id => 2, tenant => 'globex', email => 'b@example.com', balance => undef });
check_event($crm[4],
	exchange => 'inter-app-events',
	routing_key => 'crm.account.truncated',
	type => 'account.truncated',
	tenant => undef,
	target => 'crm',
	data => {});

my @bc_types = map { $_->{properties}{type} } @bc;
is_deeply(\@bc_types, [qw(note.created note.updated note.deleted note.truncated)],
	'broadcast: one event per change, nothing rolled back');
my $note = { id => 7, body => 'hello', pinned => JSON::PP::false };
check_event($bc[0],
	exchange => 'inter-app-broadcast',
	routing_key => 'note.created',
	type => 'note.created',
	data => $note);
check_event($bc[1],
	exchange => 'inter-app-broadcast',
	routing_key => 'note.updated',
	type => 'note.updated',
	data => {
		new => { %$note, pinned => JSON::PP::true },
		old => { pinned => JSON::PP::false },
		changed => ['pinned'],
	});
check_event($bc[2],
	exchange => 'inter-app-broadcast',
	routing_key => 'note.deleted',
	type => 'note.deleted',
	data => { %$note, pinned => JSON::PP::true });
check_event($bc[3],
	exchange => 'inter-app-broadcast',
	routing_key => 'note.truncated',
	type => 'note.truncated',
	data => {});

is($mq->queue_messages('crm-changes'), 0,
	'crm: nothing else queued (rolled-back and excluded-only changes)');
is($mq->queue_messages('audit-broadcasts'), 0,
	'broadcast: nothing else queued (rolled-back delete)');

# A bulk INSERT: one event per row, each with its own id.
$node->safe_psql('postgres', q{
	INSERT INTO accounts (id, tenant, email, balance, password_hash)
	SELECT g, 'acme', 'user' || g || '@example.com', g, 'secret'
	  FROM generate_series(1, 2000) g});
my @bulk = consume('crm-changes', 2000);
is(scalar @bulk, 2000, 'bulk: 2000 messages');
my %ids = map { ($_->{properties}{messageId} // '') => 1 } @bulk;
is(scalar keys %ids, 2000, 'bulk: 2000 distinct event ids');
my %rows;
my $bad = 0;
for my $m (@bulk)
{
	my $ce = MessagingTest::decode_json($m->{body});
	$bad++
	  unless $m->{routingKey} eq 'crm.account.created'
	  && ($ce->{tenantid} // '') eq 'acme'
	  && !exists $ce->{data}{password_hash};
	$rows{ $ce->{data}{id} } = 1;
}
is($bad, 0, 'bulk: every message is crm.account.created for acme, without the excluded column');
is_deeply([ sort { $a <=> $b } keys %rows ], [ 1 .. 2000 ],
	'bulk: every row arrived once');
is($mq->queue_messages('crm-changes'), 0, 'bulk: nothing more queued');
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.failed_events'),
	'0', 'no failed events');

$node->stop;
done_testing();
