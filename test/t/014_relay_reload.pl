# Changing messaging.broker_url with ALTER SYSTEM and pg_reload_conf()
# moves the relay to another broker; events published afterwards arrive
# there. The new URL's user and password carry characters that must be
# percent-encoded. Neither the password nor a wrong one tried later shows
# in the server log, connection_status, pg_stat_activity or error
# messages, and non-superusers cannot read the URL.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $mq1 = MessagingTest::start_broker();
my $mq2 = MessagingTest::start_broker();

my $user = 'app user';
my $password = 'p@ss:w/rd';
my $wrong = 'n0t-p@ss:w/rd#2';
$mq2->ctl('add_user', $user, $password);
$mq2->ctl('set_permissions', '-p', '/', $user, '.*', '.*', '.*');

sub encode
{
	my ($s) = @_;
	$s =~ s/([^A-Za-z0-9._~-])/sprintf('%%%02X', ord $1)/ge;
	return $s;
}
my $url2 = sprintf('amqp://%s:%s@127.0.0.1:%d/%%2f',
	encode($user), encode($password), $mq2->port);
my $url2_wrong = sprintf('amqp://%s:%s@127.0.0.1:%d/%%2f',
	encode($user), encode($wrong), $mq2->port);
is($url2, "amqp://app%20user:p%40ss%3Aw%2Frd\@127.0.0.1:" . $mq2->port . '/%2f',
	'URL with percent-encoded user and password');

for my $mq ($mq1, $mq2)
{
	my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $mq->url,
		'--queue', 'crm-inbox', '--declare-exchanges',
		'--bind', 'inter-app-events:crm.#', '--setup-only');
	is($rc, 0, 'crm queue on broker port ' . $mq->port) or diag($err);
}

my $node = MessagingTest::new_cluster('reload', $mq1,
	'messaging.app_name' => 'wrapper',
	'messaging.reconnect_max_delay' => '1s');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

sub wait_relay
{
	my ($cond, $name) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT $cond FROM messaging.connection_status WHERE worker = 'relay'"),
		$name)
	  or diag($node->safe_psql('postgres',
		"SELECT row_to_json(s) FROM messaging.connection_status s WHERE worker = 'relay'"));
}

# Sets the URL without the statement (and so the URL) being logged by the
# test framework's log_statement = all.
sub set_url
{
	my ($new) = @_;
	$node->safe_psql('postgres', qq{
		SET log_statement = 'none';
		ALTER SYSTEM SET messaging.broker_url = '$new';
		SELECT pg_reload_conf();});
}

sub publish
{
	my ($n) = @_;
	return $node->safe_psql('postgres',
		"SELECT messaging.publish_event('user.created', '{\"n\": $n}', 'crm')");
}

wait_relay("state = 'connected' AND broker_port = " . $mq1->port,
	'relay connected to the first broker');
my $id1 = publish(1);
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'first event published');
is($mq1->queue_messages('crm-inbox'), 1, 'first event on the first broker');
my $reconnects = $node->safe_psql('postgres',
	"SELECT reconnects FROM messaging.connection_status WHERE worker = 'relay'");

# Move to the second broker.
set_url($url2);
wait_relay("state = 'connected' AND broker_port = " . $mq2->port,
	'relay reconnected to the second broker after the reload');
my $id2 = publish(2);
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'second event published');
is($mq2->queue_messages('crm-inbox'), 1, 'second event on the second broker');
is($mq1->queue_messages('crm-inbox'), 1, 'nothing more on the first broker');
my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $mq2->url,
	'--queue', 'crm-inbox', '--count', '1', '--timeout-ms', '20000');
is(MessagingTest::decode_json((MessagingTest::decode_messages($out))[0]{body} // '{}')->{id},
	$id2, 'the second broker has the second event');
like($mq2->ctl('--quiet', 'list_connections', '--no-table-headers', 'user', 'client_properties'),
	qr/app user.*messaging relay/, 'the relay logged in as "app user"');
is($mq1->connection_count, 0, 'no connection left on the first broker')
  or diag($mq1->ctl('list_connections', 'user', 'client_properties'));

# A wrong password: the login fails, the events wait.
set_url($url2_wrong);
wait_relay("state <> 'connected' AND last_error IS NOT NULL",
	'relay cannot log in with the wrong password');
my $id3 = publish(3);
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox'),
	'1', 'the event waits in the outbox');
my $status = $node->safe_psql('postgres',
	'SELECT string_agg(row_to_json(s)::text, E\'\n\') FROM messaging.connection_status s');
like($status, qr/ACCESS_REFUSED|log in/i, 'last_error tells the login was refused');

# Back to the right password.
set_url($url2);
wait_relay("state = 'connected'", 'relay connected again');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM messaging.outbox'),
	'the waiting event published');
cmp_ok($node->safe_psql('postgres',
		"SELECT reconnects FROM messaging.connection_status WHERE worker = 'relay'"),
	'>', $reconnects, 'reconnects counted');

# An unparsable URL is refused and leaves the working one in place.
my ($ret, $stdout, $stderr) = $node->psql('postgres', qq{
	SET log_statement = 'none';
	ALTER SYSTEM SET messaging.broker_url = 'amqp://x:s3cr3t-1nvalid\@127.0.0.1:notaport/%2f';});
isnt($ret, 0, 'ALTER SYSTEM refuses an invalid URL');
like($stderr, qr/invalid value for parameter "messaging\.broker_url"/, 'error names the setting');
unlike($stderr, qr/s3cr3t/, 'the refused URL\'s password is not in the error');

# Passwords somebody forgot to percent-encode, and an upper-case scheme.
# Whether or not the URL is accepted, no part of the password may show.
# The setting is not reloaded; the working URL is put back afterwards.
my @forgotten = (
	'amqp://x:f0rg0t/sl4sh@127.0.0.1:5672/%2f',
	'amqp://x:f0rg0t@4t@127.0.0.1:5672/%2f',
	'amqp://x:f0rg0t sp4ce@127.0.0.1:5672/%2f',
	"amqp://x:f0rg0t'qu0te\@127.0.0.1:5672/%2f",
	'AMQP://x:upp3rc4se@127.0.0.1:5672/%2f');
for my $bad (@forgotten)
{
	(my $lit = $bad) =~ s/'/''/g;
	($ret, $stdout, $stderr) = $node->psql('postgres', qq{
		SET log_statement = 'none';
		ALTER SYSTEM SET messaging.broker_url = '$lit';});
	unlike($stderr, qr/f0rg0t|sl4sh|4t\@|sp4ce|qu0te|upp3rc4se/,
		"no part of the password of \"$bad\" in the client's error");
}
$node->safe_psql('postgres', qq{
	SET log_statement = 'none';
	ALTER SYSTEM SET messaging.broker_url = '$url2';});

# What a non-superuser can see.
$node->safe_psql('postgres', 'CREATE ROLE watcher LOGIN; GRANT messaging_reader TO watcher');
($ret, $stdout, $stderr) = $node->psql('postgres', 'SHOW messaging.broker_url',
	extra_params => [ '-U', 'watcher' ]);
isnt($ret, 0, 'non-superuser cannot SHOW the broker URL');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_settings WHERE name = 'messaging.broker_url'",
		extra_params => [ '-U', 'watcher' ]),
	'0', 'nor see it in pg_settings');
$status .= "\n" . $node->safe_psql('postgres',
	'SELECT string_agg(row_to_json(s)::text, E\'\n\') FROM messaging.connection_status s',
	extra_params => [ '-U', 'watcher' ]);
$status .= "\n" . $node->safe_psql('postgres',
	"SELECT string_agg(row_to_json(a)::text, E'\n') FROM pg_stat_activity a");

my @secrets = ($password, encode($password), $wrong, encode($wrong), 's3cr3t',
	'f0rg0t', 'sl4sh', '4t@', 'sp4ce', 'qu0te', 'upp3rc4se');
for my $s (@secrets)
{
	unlike($status, qr/\Q$s\E/, "\"$s\" not in connection_status or pg_stat_activity");
}

$node->stop;
my $log = slurp_file($node->logfile);
like($log, qr/messaging relay reconnecting because "messaging\.broker_url" changed/,
	'the reconnect is logged with its reason');
for my $s (@secrets)
{
	my @lines = grep { /\Q$s\E/ } split /\n/, $log;
	is_deeply(\@lines, [], "\"$s\" not in the server log");
}

done_testing();
