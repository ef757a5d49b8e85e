# The relay over amqps://: the broker's certificate must chain to
# messaging.broker_ca_file and name the host of the broker URL.  A scratch
# CA signs two server certificates, one for "localhost" and one for another
# host; the broker listens with TLS on loopback.  With the right
# certificate events flow; with the wrong host name, or without the CA,
# the relay refuses the connection, says why, and keeps the events.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $certs = PostgreSQL::Test::Utils::tempdir('certs');

sub openssl
{
	my @args = @_;
	my ($stdout, $stderr);
	my $ok = IPC::Run::run([ 'openssl', @args ], '>', \$stdout, '2>', \$stderr);
	die "openssl @args: $stderr" unless $ok;
	return $stdout;
}

# A scratch CA and two server certificates signed by it.
openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
	'-subj', '/CN=messaging test CA', '-keyout', "$certs/ca.key",
	'-out', "$certs/ca.pem");
foreach my $host ('localhost', 'wrong.example')
{
	open(my $ext, '>', "$certs/$host.ext") or die $!;
	print $ext "subjectAltName = DNS:$host\n";
	close($ext);
	openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', "/CN=$host",
		'-keyout', "$certs/$host.key", '-out', "$certs/$host.csr");
	openssl('x509', '-req', '-in', "$certs/$host.csr", '-CA', "$certs/ca.pem",
		'-CAkey', "$certs/ca.key", '-CAcreateserial', '-days', '2',
		'-extfile', "$certs/$host.ext", '-out', "$certs/$host.pem");
}
chmod 0644, glob("$certs/*");

my $tls_port = PostgreSQL::Test::Cluster::get_free_port();

sub tls_conf
{
	my ($host) = @_;
	return <<"CONF";
listeners.ssl.default = 127.0.0.1:$tls_port
ssl_options.cacertfile = $certs/ca.pem
ssl_options.certfile = $certs/$host.pem
ssl_options.keyfile = $certs/$host.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
}

my $mq = MessagingTest::start_broker(extra_conf => tls_conf('localhost'));

my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $mq->url,
	'--queue', 'tls-crm', '--bind', 'inter-app-events:crm.#',
	'--declare-exchanges', '--setup-only');
is($rc, 0, 'consumer queue declared over plain AMQP') or diag($err);

my $node = PostgreSQL::Test::Cluster->new('tls');
$node->init;
$node->append_conf('postgresql.conf', <<"CONF");
shared_preload_libraries = 'messaging'
messaging.database = 'postgres'
messaging.broker_url = 'amqps://guest:guest\@localhost:$tls_port/%2f'
messaging.broker_ca_file = '$certs/ca.pem'
messaging.reconnect_max_delay = '500ms'
CONF
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

sub relay_status
{
	return $node->safe_psql('postgres',
		"SELECT state || '|' || coalesce(last_error, '') FROM messaging.connection_status WHERE worker = 'relay'");
}

ok($node->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'relay'"),
	'relay connects over TLS with the CA file')
  or diag(relay_status());

my $id = $node->safe_psql('postgres',
	"SELECT messaging.publish_event('user.created', '{\"user_id\": 1}', 'crm', 'acme')");
($rc, $out, $err) = MessagingTest::node('consume', '--url', $mq->url,
	'--queue', 'tls-crm', '--count', '1', '--timeout-ms', '15000');
is($rc, 0, 'event published over TLS arrives') or diag($err);
my ($msg) = MessagingTest::decode_messages($out);
is($msg->{properties}{messageId}, $id, 'with its id');
is($msg->{routingKey}, 'crm.user.created', 'and its routing key');

# A certificate for another host: the name check must refuse it.
$mq->stop;
open(my $fh, '>', $mq->dir . '/extra.conf') or die $!;
print $fh tls_conf('wrong.example');
close($fh);
$mq->start;

$node->safe_psql('postgres',
	"SELECT messaging.publish_event('user.created', '{\"user_id\": 2}', 'crm', 'acme')");
ok($node->poll_query_until('postgres',
		"SELECT last_error_at > now() - interval '30 s' AND state <> 'connected'
		   FROM messaging.connection_status WHERE worker = 'relay'
		  AND last_error ~* 'certificate|verif|ssl|tls|handshake'"),
	'certificate for another host is refused')
  or diag(relay_status());
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox'),
	'1', 'the event waits in the outbox');
is($mq->queue_messages('tls-crm'), 0, 'and nothing reached the queue');

# The right certificate again, but no CA configured: the system store does
# not know the scratch CA.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET messaging.broker_ca_file = ''; SELECT pg_reload_conf();");
$mq->stop;
open($fh, '>', $mq->dir . '/extra.conf') or die $!;
print $fh tls_conf('localhost');
close($fh);
$mq->start;
sleep 3;
isnt($node->safe_psql('postgres',
		"SELECT state FROM messaging.connection_status WHERE worker = 'relay'"),
	'connected', 'unknown CA is refused');
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox'),
	'1', 'the event still waits');

# Back to the CA file: the waiting event goes out.
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET messaging.broker_ca_file; SELECT pg_reload_conf();");
$node->safe_psql('postgres',
	"ALTER SYSTEM SET messaging.broker_ca_file = '$certs/ca.pem'; SELECT pg_reload_conf();");
ok($node->poll_query_until('postgres',
		'SELECT count(*) = 0 FROM messaging.outbox'),
	'with the CA file again the waiting event is published');
is($mq->queue_messages('tls-crm'), 1, 'and reaches the queue');

my $log = slurp_file($node->logfile);
unlike($log, qr/guest:guest/, 'no credentials in the server log');

$node->stop;
done_testing();
