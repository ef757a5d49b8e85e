# MessagingTest: helpers for the messaging extension's TAP tests (test/t).
#
#   my $mq   = MessagingTest::start_broker();     # scratch RabbitMQ node
#   my $node = MessagingTest::new_cluster('main', $mq, 'messaging.app_name' => 'wrapper');
#   $node->safe_psql('postgres', 'CREATE EXTENSION messaging');
#   my ($rc, $out, $err) = MessagingTest::node('consume', '--url', $mq->url, ...);
#   my $bg = MessagingTest::node_bg('consume', ...); $bg->wait_ready; ...; $bg->finish;
#   my @rows = MessagingTest::decode_fields($out);   # output of consume.js --fields
#
# Brokers are driven through test/scripts/rabbitmq.sh, live in a temporary
# directory of the test, listen on 127.0.0.1 only and are stopped when the
# broker object goes away or the test ends. Everything here works as an
# unprivileged user (the TAP tests run as the postgres OS user).
#
# Environment knobs:
#   MESSAGING_TEST_NO_PRELOAD=1  new_cluster leaves messaging out of
#                                shared_preload_libraries (checks the
#                                harness itself where the library is absent)
#   MESSAGING_TEST_NODE          node.js binary (default: node from PATH)

package MessagingTest;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use IO::Socket::INET;
use IPC::Run ();
use JSON::PP ();
use Scalar::Util qw(weaken);
use Time::HiRes qw(time sleep);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils ();

our $ROOT = abs_path(dirname(__FILE__) . '/../..');
our $RABBITMQ_SH = "$ROOT/test/scripts/rabbitmq.sh";
our $INTEROP_DIR = "$ROOT/test/interop";

# Broker URL with nothing listening (port 1 on loopback): for clusters that
# must never reach a broker.
our $NO_BROKER_URL = 'amqp://guest:guest@127.0.0.1:1/%2f';

my @live_brokers;

sub _port_free
{
	my ($port) = @_;
	my $sock = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => $port,
		Proto => 'tcp',
		ReuseAddr => 0,
		Listen => 1);
	return 0 unless $sock;
	close $sock;
	return 1;
}

# An AMQP port whose derived ports (distribution +20000, epmd +21000, CLI
# +22000..+22009, see rabbitmq.sh) are all free on 127.0.0.1.
sub _pick_broker_port
{
	for (1 .. 200)
	{
		my $port = 10000 + int(rand(20000));
		my @all = ($port, $port + 20000, $port + 21000,
			map { $port + 22000 + $_ } 0 .. 9);
		return $port unless grep { !_port_free($_) } @all;
	}
	croak "no free port range found for a scratch broker";
}

=pod

=item MessagingTest::start_broker(%opts)

Starts a scratch RabbitMQ node and returns a MessagingTest::Broker.
Options: port (default: a free one), dir (default: a new temporary
directory of the test), wait_seconds (default 60), extra_conf (text
appended to the node's rabbitmq.conf, e.g. a TLS listener).

=cut

sub start_broker
{
	my (%opts) = @_;
	my $port = $opts{port} // _pick_broker_port();
	my $dir = $opts{dir} // PostgreSQL::Test::Utils::tempdir('rabbitmq');
	if (defined $opts{extra_conf})
	{
		# appended to the node's rabbitmq.conf by rabbitmq.sh
		open(my $fh, '>', "$dir/extra.conf") or die "extra.conf: $!";
		print $fh $opts{extra_conf};
		close($fh);
	}
	my $self = bless {
		port => $port,
		dir => $dir,
		wait_seconds => $opts{wait_seconds} // 60,
		owner_pid => $$,
		running => 0,
	}, 'MessagingTest::Broker';
	$self->start;
	push @live_brokers, $self;
	weaken($live_brokers[-1]);
	return $self;
}

=pod

=item MessagingTest::node($script, @args)

Runs test/interop/$script.js with node and returns ($exit_status, $stdout,
$stderr). Bounded by PostgreSQL::Test::Utils::timeout_default seconds
(exit status 124 when that runs out). An optional first argument hashref
gives { timeout => SECONDS }.

=cut

sub _node_cmd
{
	my ($script, @args) = @_;
	$script .= '.js' unless $script =~ /\.js$/;
	my $file = "$INTEROP_DIR/$script";
	croak "no interop script $file" unless -f $file;
	return [ $ENV{MESSAGING_TEST_NODE} // 'node', $file, @args ];
}

sub node
{
	my $opts = ref $_[0] eq 'HASH' ? shift : {};
	my ($script, @args) = @_;
	my $cmd = _node_cmd($script, @args);
	my $limit = $opts->{timeout} // $PostgreSQL::Test::Utils::timeout_default;
	my ($out, $err) = ('', '');
	my $exit;
	eval {
		IPC::Run::run($cmd, '<', \undef, '>', \$out, '2>', \$err,
			IPC::Run::timeout($limit));
		$exit = $? >> 8;
		1;
	} or do {
		die $@ unless $@ =~ /timeout/i;
		$exit = 124;
		$err .= "\n[MessagingTest: node $script killed after ${limit}s]\n";
	};
	return ($exit, $out, $err);
}

=pod

=item MessagingTest::node_bg($script, @args)

Starts test/interop/$script.js in the background; returns a
MessagingTest::Background with wait_ready, wait_lines, stdout, stderr,
messages, finish and kill. It is killed when it goes out of scope.

=cut

sub node_bg
{
	my $opts = ref $_[0] eq 'HASH' ? shift : {};
	my ($script, @args) = @_;
	my $cmd = _node_cmd($script, @args);
	my $self = bless {
		script => $script,
		out => '',
		err => '',
		limit => $opts->{timeout} // $PostgreSQL::Test::Utils::timeout_default,
		owner_pid => $$,
	}, 'MessagingTest::Background';
	$self->{timer} = IPC::Run::timeout($self->{limit});
	$self->{h} = IPC::Run::start($cmd, '<', \undef, '>', \$self->{out},
		'2>', \$self->{err}, $self->{timer});
	return $self;
}

=pod

=item MessagingTest::decode_messages($stdout)

Decodes consume.js output (one JSON object a line) into a list of hashrefs.
Strings stay UTF-8 encoded byte strings, so they compare equal to what
safe_psql returns and to byte-string literals in test files.

=item MessagingTest::decode_json($text)

Decodes one JSON document (e.g. a message body) the same way.

=cut

sub decode_json
{
	my ($text) = @_;
	return JSON::PP->new->decode($text);
}

sub decode_messages
{
	my ($text) = @_;
	return map { decode_json($_) } grep { /\S/ } split /\n/, ($text // '');
}

=pod

=item MessagingTest::decode_fields($stdout)

Decodes consume.js --fields output into a list of arrayrefs, one a message,
holding the values in the order the fields were named (undef for null).
Plain strings and integers skip the JSON decoder, which keeps tens of
thousands of lines cheap.

=cut

sub decode_fields
{
	my ($text) = @_;
	my $json = JSON::PP->new->allow_nonref;
	my @rows;
	for my $line (grep { /\S/ } split /\n/, ($text // ''))
	{
		push @rows, [
			map {
				    /^"([^"\\]*)"\z/ ? $1
				  : /^-?[0-9]+\z/ ? $_ + 0
				  : $_ eq 'null' ? undef
				  : $json->decode($_)
			} split /\t/, $line, -1
		];
	}
	return @rows;
}

=pod

=item MessagingTest::new_cluster($name, $broker, %extra_conf)

Creates, configures and starts a PostgreSQL::Test::Cluster with
shared_preload_libraries = 'messaging', messaging.broker_url pointing at
$broker (a MessagingTest::Broker, a URL string, or undef for a URL where
nothing listens) and messaging.database = 'postgres'. Each %extra_conf
pair becomes a quoted setting. The caller runs CREATE EXTENSION.

=cut

sub _quote_conf
{
	my ($v) = @_;
	$v =~ s/'/''/g;
	return "'$v'";
}

sub new_cluster
{
	my ($name, $broker, %extra) = @_;
	my $url =
	    !defined $broker ? $NO_BROKER_URL
	  : ref $broker ? $broker->url
	  : $broker;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	my $conf = "# messaging test settings\n";
	$conf .= "shared_preload_libraries = 'messaging'\n"
	  unless $ENV{MESSAGING_TEST_NO_PRELOAD};
	$conf .= "messaging.broker_url = " . _quote_conf($url) . "\n";
	$conf .= "messaging.database = 'postgres'\n";
	for my $k (sort keys %extra)
	{
		$conf .= "$k = " . _quote_conf($extra{$k}) . "\n";
	}
	$node->append_conf('postgresql.conf', $conf);
	$node->start;
	return $node;
}

END
{
	local $?;
	for my $b (grep { defined } @live_brokers)
	{
		eval { $b->stop if $b->{running} && $b->{owner_pid} == $$; 1 }
		  or warn "stopping scratch broker: $@";
	}
}

=pod

=item MessagingTest::bind_queue($broker, $queue, @bindings)

Plays the other application setting up its inbox: declares both exchanges
and the durable queue $queue, bound as each "EXCHANGE:ROUTING_KEY" says.
Returns true on success (and diagnoses the failure otherwise).

=cut

sub bind_queue
{
	my ($broker, $queue, @bindings) = @_;
	my ($rc, $out, $err) = node('consume', '--url', $broker->url,
		'--queue', $queue, '--declare-exchanges',
		(map { ('--bind', $_) } @bindings), '--setup-only');
	Test::More::diag("consume.js: $err") if $rc != 0;
	return $rc == 0;
}

=pod

=item MessagingTest::relay_connected($node)

Waits (PostgreSQL::Test::Cluster's poll timeout) until the relay of $node
reports a connection to its broker; true when it does.

=cut

sub relay_connected
{
	my ($node) = @_;
	return $node->poll_query_until('postgres',
		"SELECT state = 'connected' FROM messaging.connection_status WHERE worker = 'relay'");
}

package MessagingTest::Broker;

use strict;
use warnings;

use Carp;
use IPC::Run ();

sub url { return "amqp://guest:guest\@127.0.0.1:$_[0]{port}/%2f" }
sub port { return $_[0]{port} }
sub dir { return $_[0]{dir} }

sub _script
{
	my ($self, @args) = @_;
	my ($out, $err) = ('', '');
	local $ENV{MQ_DIR} = $self->{dir};
	local $ENV{MQ_PORT} = $self->{port};
	local $ENV{MQ_WAIT_SECONDS} = $self->{wait_seconds};
	my $ok = IPC::Run::run([ $MessagingTest::RABBITMQ_SH, @args ],
		'<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout(3 * $self->{wait_seconds}));
	return ($ok, $out, $err);
}

sub _script_or_die
{
	my ($self, @args) = @_;
	my ($ok, $out, $err) = $self->_script(@args);
	croak "rabbitmq.sh @args failed: $out$err" unless $ok;
	return $out;
}

# start/stop/kill: their one-line report (with timings) goes to the TAP log.
sub _lifecycle
{
	my ($self, $what) = @_;
	my $out = $self->_script_or_die($what);
	Test::More::note($out) if $out =~ /\S/ && $INC{'Test/More.pm'};
	return $out;
}

# Starts the node (again) on the same directory: durable queues and
# persistent messages survive stop/kill9 + start.
sub start
{
	my ($self) = @_;
	$self->_lifecycle('start');
	$self->{running} = 1;
	return $self;
}

# Graceful shutdown.
sub stop
{
	my ($self) = @_;
	$self->_lifecycle('stop');
	$self->{running} = 0;
	return $self;
}

# kill -9 of the Erlang VM: a broker crash.
sub kill9
{
	my ($self) = @_;
	$self->_lifecycle('kill');
	$self->{running} = 0;
	return $self;
}

sub restart
{
	my ($self) = @_;
	$self->stop;
	return $self->start;
}

sub is_running
{
	my ($self) = @_;
	my ($ok) = $self->_script('status');
	return $ok ? 1 : 0;
}

# rabbitmqctl against this node; returns its stdout, dies on failure.
sub ctl
{
	my ($self, @args) = @_;
	return $self->_script_or_die('ctl', @args);
}

# { queue_name => { ready => N, unacked => N, consumers => N, durable => 0|1 } }
sub queues
{
	my ($self) = @_;
	my $out = $self->ctl('--quiet', 'list_queues', '--no-table-headers',
		'name', 'messages_ready', 'messages_unacknowledged', 'consumers',
		'durable');
	my %q;
	for my $line (split /\n/, $out)
	{
		my ($name, $ready, $unacked, $consumers, $durable) = split /\t/, $line;
		next unless defined $durable;
		$q{$name} = {
			ready => $ready + 0,
			unacked => $unacked + 0,
			consumers => $consumers + 0,
			durable => $durable eq 'true' ? 1 : 0,
		};
	}
	return \%q;
}

# Ready message count of a queue, undef when the queue does not exist.
sub queue_messages
{
	my ($self, $queue) = @_;
	my $q = $self->queues->{$queue};
	return $q ? $q->{ready} : undef;
}

sub delete_queue
{
	my ($self, $queue) = @_;
	return $self->ctl('delete_queue', $queue);
}

sub purge_queue
{
	my ($self, $queue) = @_;
	return $self->ctl('purge_queue', $queue);
}

# Number of client connections the broker has open.
sub connection_count
{
	my ($self) = @_;
	my $out = $self->ctl('--quiet', 'list_connections', '--no-table-headers', 'pid');
	return scalar grep { /\S/ } split /\n/, $out;
}

# Forcibly closes every client connection (the broker keeps running).
sub close_all_connections
{
	my ($self, $reason) = @_;
	return $self->ctl('close_all_connections', $reason // 'closed by test');
}

sub DESTROY
{
	my ($self) = @_;
	local ($@, $?);
	return unless $self->{running} && $self->{owner_pid} == $$;
	eval { $self->stop; 1 } or warn "stopping scratch broker: $@";
}

package MessagingTest::Background;

use strict;
use warnings;

use Carp;
use Time::HiRes qw(time sleep);

sub _pump
{
	my ($self) = @_;
	my $h = $self->{h};
	eval { $h->pump_nb if $h->pumpable; 1 } or do {
		die $@ unless $@ =~ /timeout/i;
		$self->kill;
	};
}

sub _until
{
	my ($self, $cond, $seconds) = @_;
	my $deadline = time + ($seconds // $self->{limit});
	while (time < $deadline)
	{
		$self->_pump;
		return 1 if $cond->();
		return $cond->() ? 1 : 0 unless $self->{h}->pumpable;
		sleep 0.05;
	}
	return 0;
}

# Waits until stderr matches $re (default: consume.js's "consuming" line).
sub wait_ready
{
	my ($self, $re, $seconds) = @_;
	$re //= qr/consume\.js: consuming/;
	return $self->_until(sub { $self->{err} =~ $re }, $seconds);
}

# Waits until stdout holds at least $n complete lines.
sub wait_lines
{
	my ($self, $n, $seconds) = @_;
	return $self->_until(sub { ($self->{out} =~ tr/\n//) >= $n }, $seconds);
}

sub stdout { $_[0]->_pump; return $_[0]{out} }
sub stderr { $_[0]->_pump; return $_[0]{err} }

# consume.js output so far, decoded.
sub messages { return MessagingTest::decode_messages($_[0]->stdout) }

# Waits for the program to end by itself (bounded) and returns
# ($exit_status, $stdout, $stderr); 124 when it had to be killed.
sub finish
{
	my ($self, $seconds) = @_;
	unless (exists $self->{exit})
	{
		my $ended = $self->_until(sub { 0 }, $seconds);
		if ($self->{h}->pumpable)
		{
			$self->kill;
		}
		else
		{
			my $ok = eval { $self->{h}->finish; 1 };
			$self->{exit} = $ok ? ($self->{h}->results)[0] : 124;
		}
	}
	return ($self->{exit}, $self->{out}, $self->{err});
}

sub kill
{
	my ($self) = @_;
	return if exists $self->{exit};
	eval { $self->{h}->kill_kill(grace => 2); 1 };
	$self->{exit} = 124;
}

sub DESTROY
{
	my ($self) = @_;
	local ($@, $?);
	$self->kill if $self->{h} && $self->{owner_pid} == $$;
}

1;
