# The relay keeps messaging.staging_reserve of empty pages ready in
# messaging.outbox_staged, so that a bulk change through a statement-level
# trigger fills pages the free space map offers instead of extending the
# file.  No broker is needed: the relay does this while disconnected.
#
# Checks: the reserve appears after CREATE EXTENSION (the relay's
# maintenance); a bulk change that fits in it does not grow the file; the
# relay tops the reserve up again after its next maintenance; a reserve of
# 0 adds nothing; a bulk change larger than the reserve still works (the
# file grows); the reserved pages hold no rows and pending_events and
# sync_health see only real events.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use MessagingTest;

my $node = MessagingTest::new_cluster('reserve', undef,
	'messaging.staging_reserve' => '2MB');
$node->safe_psql('postgres', 'CREATE EXTENSION messaging');

my $reserve_pages = 2 * 1024 * 1024 / 8192;
my $size_sql =
  "SELECT pg_relation_size('messaging.outbox_staged') / current_setting('block_size')::int";

# The relay's maintenance runs when it first finds the extension, then
# every 10 seconds.
ok( $node->poll_query_until('postgres', "$size_sql >= $reserve_pages"),
	'relay added the reserve of empty pages after CREATE EXTENSION');
my $pages = $node->safe_psql('postgres', $size_sql);
cmp_ok($pages, '<', 2 * $reserve_pages, "no more than the reserve was added ($pages pages)");
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.outbox_staged'),
	'0', 'the reserved pages hold no rows');

# A bulk change of about 1 MB of staged rows fits in 2 MB of reserve.
$node->safe_psql('postgres', q{
	CREATE TABLE accounts (id bigint PRIMARY KEY, tenant text, email text,
						   note text);
	SELECT messaging.create_event_trigger('accounts', 'account', 'crm', 'tenant');
	INSERT INTO accounts SELECT g, 'acme', 'user' || g || '@example.com',
		repeat('n', 40) FROM generate_series(1, 8000) g;
});
my $staged = $node->safe_psql('postgres',
	'SELECT count(*) FROM messaging.outbox_staged');
cmp_ok($staged, '>', 64, "the INSERT staged its events in $staged rows");
# (the rows' block numbers rather than the file size: the relay may top
# the reserve up meanwhile)
cmp_ok(
	$node->safe_psql('postgres',
		'SELECT max((ctid::text::point)[0])::int FROM messaging.outbox_staged'),
	'<', $pages,
	'the bulk change filled reserved pages, none added by the writer');
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.pending_events'),
	'8000', 'pending_events shows the 8000 events, nothing from empty pages');
is($node->safe_psql('postgres', 'SELECT outbox_backlog FROM messaging.sync_health'),
	'8000', 'sync_health counts the 8000 staged events');

# The relay, disconnected, does not move the rows; its next maintenance
# adds pages again, since those it had kept are now in use.
ok( $node->poll_query_until('postgres', "$size_sql > $pages"),
	'relay topped the reserve up after the bulk change used it');

# A change larger than the reserve extends the file for the rest.
$pages = $node->safe_psql('postgres', $size_sql);
$node->safe_psql('postgres', q{
	INSERT INTO accounts SELECT g, 'acme', 'user' || g || '@example.com',
		repeat('m', 200) FROM generate_series(10001, 60000) g;
});
cmp_ok($node->safe_psql('postgres', $size_sql), '>', $pages,
	'a change larger than the reserve grew the file');
is($node->safe_psql('postgres', 'SELECT count(*) FROM messaging.pending_events'),
	'58000', 'all 58000 events are pending');

# With a reserve of 0 the relay adds nothing.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET messaging.staging_reserve = 0;
	SELECT pg_reload_conf();
});
$node->safe_psql('postgres', 'TRUNCATE messaging.outbox, messaging.outbox_staged');
# two maintenance ticks
sleep 21;
is($node->safe_psql('postgres', $size_sql), '0',
	'with messaging.staging_reserve = 0 the relay adds no pages');

# And with it back, pages come back.
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET messaging.staging_reserve;
	SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres', "$size_sql >= $reserve_pages"),
	'the reserve is added again once the setting is back (2MB)');

$node->stop;
done_testing();
