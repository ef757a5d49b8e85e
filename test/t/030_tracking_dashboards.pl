# Checks the monitoring files under dashboards/ against a real database
# with the extension: the Grafana dashboard (JSON) and the postgres_exporter
# query file (a plain subset of YAML, parsed here).  Every SQL statement
# they contain is run as a member of messaging_reader, the role they are
# meant for, and every column name they refer to (field overrides, metric
# names) must be a column of that statement's result, with a numeric type
# where a number is expected.  No broker is needed.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $dir = "$MessagingTest::ROOT/dashboards";

my $node = MessagingTest::new_cluster('dashboards', undef);
$node->safe_psql('postgres', q{
	CREATE EXTENSION messaging;
	CREATE ROLE t30_dash LOGIN IN ROLE messaging_reader;
	-- a little of everything, so that the statements return rows
	SELECT messaging.publish_event('user.created', '{}', 'crm', 'acme');
	SELECT messaging._bump_counters('{acme,NULL}', '{wrapper,crm}', '{crm,wrapper}',
		'{user.created,invoice.sent}', '{3,0}', '{2,1}', '{1,0}', '{0,1}', '{0,0}');
	INSERT INTO messaging.awaiting_ack (event_id, event_type, source_app, target_app, tenant_id, created_at)
	VALUES (messaging.uuid_generate_v7(), 'user.created', 'wrapper', 'crm', 'acme', now());
});

my %numeric = map { $_ => 1 }
  ('smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision');

# Runs a statement as the reader and returns its result columns as
# [ [name, type], ... ] (types from a temporary view of the statement).
sub result_columns
{
	my ($sql, $what) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => [ '-U', 't30_dash' ]);
	is($ret, 0, "$what runs as a messaging_reader member") or diag($err);
	my $cols = $node->safe_psql('postgres',
		"BEGIN;\nCREATE TEMP VIEW t30_check AS $sql;\n"
		  . "SELECT attname || ':' || format_type(atttypid, atttypmod) FROM pg_attribute"
		  . " WHERE attrelid = 't30_check'::regclass AND attnum > 0 ORDER BY attnum;\n"
		  . "ROLLBACK;");
	return [ map { [ split /:/, $_, 2 ] } split /\n/, $cols ];
}

# --- Grafana -------------------------------------------------------------
my $text = slurp_file("$dir/messaging.json");
my $dash = eval { JSON::PP->new->decode($text) };
ok($dash, 'dashboard JSON parses') or diag($@);
ok($dash->{uid} && $dash->{title} && $dash->{schemaVersion}, 'uid, title, schemaVersion');
my ($dsvar) = grep { $_->{type} eq 'datasource' } @{ $dash->{templating}{list} // [] };
is($dsvar && $dsvar->{query}, 'grafana-postgresql-datasource', 'PostgreSQL data source variable');

my %seen_id;
my %views_shown;
for my $panel (@{ $dash->{panels} // [] })
{
	my $name = "panel \"$panel->{title}\"";
	ok(!$seen_id{ $panel->{id} }++, "$name has a unique id");
	is($panel->{datasource}{uid}, '${datasource}', "$name uses the data source variable");
	my @targets = @{ $panel->{targets} // [] };
	ok(@targets > 0, "$name has a query");
	my %columns;
	for my $t (@targets)
	{
		ok($t->{rawQuery} && $t->{format} eq 'table', "$name: raw SQL in table format");
		my $sql = $t->{rawSql} // '';
		$views_shown{$1} = 1 while $sql =~ /messaging\.(\w+)/g;
		$columns{ $_->[0] } = $_->[1] for @{ result_columns($sql, $name) };
	}
	for my $o (@{ $panel->{fieldConfig}{overrides} // [] })
	{
		next unless $o->{matcher}{id} eq 'byName';
		ok(exists $columns{ $o->{matcher}{options} },
			"$name: override column \"$o->{matcher}{options}\" exists");
	}
}
ok($views_shown{$_}, "a panel shows messaging.$_")
  for qw(sync_health communication_matrix unacknowledged_events connection_status);

# --- postgres_exporter ---------------------------------------------------
# Accepted form: top-level "name:" blocks holding  query: "..."  and
# metrics: a list of "- column:" entries with usage: "..." and
# description: "...".  Anything else is an error.
sub parse_queries
{
	my ($file) = @_;
	my (@blocks, $block, $metric);
	my $n = 0;
	for my $line (split /\n/, slurp_file($file))
	{
		$n++;
		next if $line =~ /^\s*(#.*)?$/;
		if ($line =~ /^(\w+):$/)
		{
			push @blocks, $block = { name => $1, metrics => [] };
			undef $metric;
		}
		elsif ($block && $line =~ /^  query: "((?:[^"\\]|\\.)*)"$/)
		{
			($block->{query} = $1) =~ s/\\(.)/$1/g;
		}
		elsif ($block && $line =~ /^  master: (true|false)$/)
		{
			$block->{master} = $1;
		}
		elsif ($block && $line =~ /^  metrics:$/)
		{
			$block->{in_metrics} = 1;
		}
		elsif ($block && $block->{in_metrics} && $line =~ /^    - (\w+):$/)
		{
			push @{ $block->{metrics} }, $metric = { column => $1 };
		}
		elsif ($metric && $line =~ /^        (usage|description): "((?:[^"\\]|\\.)*)"$/)
		{
			$metric->{$1} = $2;
		}
		else
		{
			die "$file line $n: unrecognized line: $line\n";
		}
	}
	return @blocks;
}

my @blocks = eval { parse_queries("$dir/queries.yaml") };
ok(!$@ && @blocks, 'postgres_exporter query file parses') or diag($@);
my %usages = map { $_ => 1 } qw(LABEL GAUGE COUNTER DURATION DISCARD);
for my $b (@blocks)
{
	my $name = "query $b->{name}";
	ok($b->{query}, "$name has SQL");
	my %columns = map { $_->[0] => $_->[1] } @{ result_columns($b->{query}, $name) };
	my %mapped;
	for my $m (@{ $b->{metrics} })
	{
		my $c = $m->{column};
		$mapped{$c} = 1;
		ok($usages{ $m->{usage} // '' } && $m->{description},
			"$name: $c has a usage and a description");
		ok(exists $columns{$c}, "$name: column $c exists");
		if (($m->{usage} // '') eq 'LABEL')
		{
			is($columns{$c}, 'text', "$name: label $c is text");
		}
		else
		{
			ok($numeric{ $columns{$c} // '' }, "$name: metric $c is numeric")
			  or diag("type: " . ($columns{$c} // 'none'));
		}
	}
	is_deeply([ sort grep { !$mapped{$_} } keys %columns ], [],
		"$name: every column is mapped");
	ok((grep { $_->{usage} ne 'LABEL' } @{ $b->{metrics} }), "$name has a metric");
}

$node->stop;
done_testing();
