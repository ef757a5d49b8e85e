-- Row-change events from triggers: payload shapes, change detection,
-- options, truncate, row and statement forms, rollback, bad arguments.
-- No broker is reachable, so events stay where they were written: the
-- row form's in messaging.outbox, the statement form's staged in
-- messaging.outbox_staged; messaging.pending_events shows both.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS messaging;
RESET client_min_messages;
SET timezone = 'UTC';
SET extra_float_digits = 0;
\set VERBOSITY default
TRUNCATE messaging.outbox, messaging.outbox_staged;

CREATE TYPE trg_addr AS (street text, zip integer);
CREATE TABLE trg_stmt (
	id bigint PRIMARY KEY,
	tenant text,
	email text,
	balance numeric(12,2),
	seen timestamptz,
	blob bytea,
	tags text[],
	home trg_addr,
	pw text,
	doubled bigint GENERATED ALWAYS AS (id * 2) STORED,
	js json
);
CREATE TABLE trg_row (LIKE trg_stmt INCLUDING ALL);

SELECT messaging.create_event_trigger('trg_stmt', 'account', 'billing', 'tenant', '{pw}');
SELECT messaging.create_event_trigger('trg_row', 'account', 'billing', 'tenant', '{pw}',
	for_each_row => true);
SELECT tgname, tgtype, pg_get_triggerdef(oid) ~ 'REFERENCING' AS transition
  FROM pg_trigger WHERE tgrelid IN ('trg_stmt'::regclass, 'trg_row'::regclass)
 ORDER BY tgrelid::regclass::text, tgname;

-- every column type, in both forms
CREATE FUNCTION trg_fill(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format($q$
		INSERT INTO %s (id, tenant, email, balance, seen, blob, tags, home, pw, js) VALUES
		(1, 'acme', 'a@x', 10.50, '2026-01-02 03:04:05.123456+00', '\x0102',
		 '{a,"b c"}', ROW('Main St', 12345), 'secret', '{"k": [1, 2.0]}'),
		(2, NULL, 'b@x', NULL, NULL, NULL, NULL, NULL, 'h', NULL)$q$, tbl);
END
$$;
SELECT trg_fill('trg_stmt');
SELECT trg_fill('trg_row');

CREATE VIEW trg_events AS
	SELECT row_number() OVER (ORDER BY id) AS n, event_type, target_app,
		   tenant_id, source_app, correlation_id, payload
	  FROM messaging.pending_events;
SELECT n, event_type, target_app, tenant_id, source_app, correlation_id,
	   jsonb_pretty(payload) FROM trg_events;

-- both forms render the same payloads
SELECT count(*) AS events, count(DISTINCT payload) AS distinct_payloads
  FROM messaging.pending_events;
-- and exactly as to_jsonb() does
SELECT bool_and(o.payload = to_jsonb(r) - 'pw') AS same_as_to_jsonb
  FROM messaging.pending_events o JOIN trg_row r ON (o.payload->>'id')::bigint = r.id;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- the types rendered without to_jsonb(), and some that go through it,
-- match to_jsonb() in both forms: NaN and infinities are strings
CREATE DOMAIN trg_code AS text CHECK (VALUE <> '');
CREATE TABLE trg_types (
	id int2 PRIMARY KEY, i4 int4, i8 int8, vc varchar(5), ch char(4),
	ok boolean, d date, ts timestamp, tstz timestamptz, num numeric,
	f8 float8, f4 real, code trg_code, jb jsonb, jbs jsonb, j json, u uuid
);
CREATE TABLE trg_types_row (LIKE trg_types INCLUDING ALL);
SELECT messaging.create_event_trigger('trg_types', 'kind');
SELECT messaging.create_event_trigger('trg_types_row', 'kind', for_each_row => true);
CREATE FUNCTION trg_fill_types(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format($q$
		INSERT INTO %s VALUES
		(1, -2147483648, 9223372036854775807, 'ab"c', 'x', true, '2026-02-03',
		 '2026-02-03 04:05:06.5', '2026-02-03 04:05:06.5+02', 'NaN', 1.5e20,
		 0.1, 'c-1', '{"b": [true, null]}', '"scalar"', '[1, "two"]',
		 '00000000-0000-7000-8000-000000000001'),
		(2, 0, -1, '', '', false, 'infinity', '-infinity', 'infinity',
		 'Infinity', 'NaN', '-Infinity', 'é', '12.50', 'null', '"s"', NULL),
		(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '-Infinity',
		 NULL, NULL, NULL, NULL, NULL, NULL, NULL)$q$, tbl);
END
$$;
SELECT trg_fill_types('trg_types');
SELECT trg_fill_types('trg_types_row');
SELECT event_type, payload FROM messaging.pending_events ORDER BY id;
SELECT count(*) AS events, count(DISTINCT payload) AS distinct_payloads,
	   bool_and(o.payload = to_jsonb(r)) AS same_as_to_jsonb
  FROM messaging.pending_events o JOIN trg_types r ON (o.payload->>'id')::int2 = r.id;
DROP TABLE trg_types, trg_types_row;
DROP FUNCTION trg_fill_types(regclass);
DROP DOMAIN trg_code;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- an update: new row, old values of changed columns, changed list
UPDATE trg_stmt SET email = 'c@x', balance = 10.5, pw = 'new' WHERE id = 1;
UPDATE trg_row SET email = 'c@x', balance = 10.5, pw = 'new' WHERE id = 1;
SELECT n, event_type, tenant_id, payload->'old' AS old, payload->'changed' AS changed,
	   payload->'new'->>'email' AS new_email FROM trg_events;
SELECT count(DISTINCT payload) AS distinct_payloads FROM messaging.pending_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- no-op updates and updates of excluded columns only emit nothing
UPDATE trg_stmt SET email = email;
UPDATE trg_row SET email = email;
UPDATE trg_stmt SET pw = 'zzz';
UPDATE trg_row SET pw = 'zzz';
UPDATE trg_stmt SET js = '{"k":[1,2.0]}' WHERE id = 1;  -- same JSON value
UPDATE trg_row SET js = '{"k":[1,2.0]}' WHERE id = 1;
SELECT count(*) AS events FROM messaging.pending_events;

-- NULL to value and back; many columns at once
UPDATE trg_stmt SET tenant = 'acme', balance = 1, seen = '2026-05-06 07:08:09+00',
	blob = '\xff', tags = '{}', home = ROW(NULL, 1), js = 'null' WHERE id = 2;
UPDATE trg_row SET tenant = 'acme', balance = 1, seen = '2026-05-06 07:08:09+00',
	blob = '\xff', tags = '{}', home = ROW(NULL, 1), js = 'null' WHERE id = 2;
SELECT n, tenant_id, payload->'changed' AS changed, payload->'old' AS old FROM trg_events;
SELECT count(DISTINCT payload) AS distinct_payloads FROM messaging.pending_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- deletes carry the old row; truncate emits one event
DELETE FROM trg_stmt WHERE id = 2;
DELETE FROM trg_row WHERE id = 2;
TRUNCATE trg_stmt;
TRUNCATE trg_row;
SELECT n, event_type, tenant_id, payload FROM trg_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- an update of the primary key is an update of the row, in both forms
INSERT INTO trg_stmt (id, email) VALUES (1, 'a'), (3, 'b');
INSERT INTO trg_row (id, email) VALUES (1, 'a'), (3, 'b');
TRUNCATE messaging.outbox, messaging.outbox_staged;
UPDATE trg_stmt SET id = id + 1;
UPDATE trg_row SET id = id + 1;
SELECT n, event_type, payload->'new'->>'id' AS new_id, payload->'old'->>'id' AS old_id,
	   payload->'changed' AS changed FROM trg_events ORDER BY n;
SELECT count(DISTINCT payload) AS distinct_payloads FROM messaging.pending_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;
TRUNCATE trg_stmt, trg_row;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- watched columns: only their changes are events
CREATE TABLE trg_watch (id int PRIMARY KEY, status text, note text, tenant int);
CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE ON trg_watch FOR EACH ROW
	EXECUTE FUNCTION messaging.emit_event('order', '', 'tenant', 'watch=status');
INSERT INTO trg_watch VALUES (1, 'new', 'a', 7);
UPDATE trg_watch SET note = 'b';
UPDATE trg_watch SET status = 'paid', note = 'c';
SELECT n, event_type, target_app, tenant_id, payload FROM trg_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;
-- the same through the helper, statement form
DROP TRIGGER w ON trg_watch;
SELECT messaging.create_event_trigger('trg_watch', 'order', NULL, 'tenant',
	watch_columns => '{status}');
UPDATE trg_watch SET note = 'd';
UPDATE trg_watch SET status = 'shipped';
SELECT n, event_type, payload FROM trg_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- a rolled-back change emits nothing; a rolled-back savepoint neither
BEGIN;
INSERT INTO trg_watch VALUES (2, 'new', NULL, 7);
ROLLBACK;
BEGIN;
INSERT INTO trg_watch VALUES (3, 'new', NULL, 7);
SAVEPOINT s;
INSERT INTO trg_watch VALUES (4, 'new', NULL, 7);
ROLLBACK TO s;
COMMIT;
SELECT event_type, payload->>'id' AS id FROM trg_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- suppression lasts until the end of the transaction
BEGIN;
SELECT messaging.suppress_trigger_events();
UPDATE trg_watch SET status = 'lost';
COMMIT;
UPDATE trg_watch SET status = 'found' WHERE id = 1;
SELECT event_type, payload->'new'->>'status' AS status FROM trg_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- the source follows messaging.app_name
SELECT DISTINCT source_app FROM messaging.pending_events;

-- tenant ids are checked
INSERT INTO trg_stmt (id, tenant) VALUES (9, 'bad tenant');
INSERT INTO trg_row (id, tenant) VALUES (9, 'a*b');
INSERT INTO trg_watch VALUES (9, 'x', NULL, NULL);
SELECT event_type, tenant_id FROM trg_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;
DROP TABLE trg_watch;

-- bad arguments at the first firing, naming trigger and argument; the
-- first one with its detail and hint
CREATE TABLE trg_bad0 (id int);
CREATE TRIGGER b0 AFTER INSERT ON trg_bad0 FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', '', 'exclude=');
INSERT INTO trg_bad0 VALUES (1);
DROP TABLE trg_bad0;
-- (trg_try shows the SQLSTATE with the message)
CREATE FUNCTION trg_try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
CREATE TABLE trg_bad (id int PRIMARY KEY, t text);
CREATE TRIGGER b1 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event();
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b1 ON trg_bad;
CREATE TRIGGER b2 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('Account');
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b2 ON trg_bad;
CREATE TRIGGER b3 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', 'no such app');
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b3 ON trg_bad;
CREATE TRIGGER b4 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', 'tenant');
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b4 ON trg_bad;
CREATE TRIGGER b5 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', '', 'hide=t');
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b5 ON trg_bad;
CREATE TRIGGER b6 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', '', 'exclude=t,nope');
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b6 ON trg_bad;
CREATE TRIGGER b7 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', '', 'exclude=t', 'watch=t');
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b7 ON trg_bad;
CREATE TRIGGER b8 BEFORE INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account');
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b8 ON trg_bad;
CREATE TRIGGER b9 AFTER INSERT ON trg_bad FOR EACH STATEMENT EXECUTE FUNCTION messaging.emit_event('account');
SELECT trg_try('INSERT INTO trg_bad VALUES (1)');
DROP TRIGGER b9 ON trg_bad;
CREATE TABLE trg_nopk (id int, t text);
CREATE TRIGGER b10 AFTER UPDATE ON trg_nopk REFERENCING OLD TABLE AS o NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION messaging.emit_event('account');
INSERT INTO trg_nopk VALUES (1);
-- (a table without primary key is fine: rows pair by position)
SELECT trg_try('UPDATE trg_nopk SET t = ''x''');
SELECT event_type, payload FROM trg_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_bad'', ''account.'')');
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_bad'', ''account'', ''crm'', ''tenant'')');
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_bad'', ''account'', exclude_columns => ''{"a,b"}'')');
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_events'', ''account'')');
\set VERBOSITY default
-- (b10 on trg_nopk is the one trigger left)
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid IN ('trg_bad'::regclass, 'trg_nopk'::regclass) AND NOT tgisinternal;
SELECT count(*) AS events FROM messaging.pending_events;

-- a fixed trigger works after CREATE OR REPLACE (the cache follows it)
CREATE TRIGGER b11 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', 'nope');
INSERT INTO trg_bad VALUES (1);
CREATE OR REPLACE TRIGGER b11 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', 't');
INSERT INTO trg_bad VALUES (1, 'acme');
ALTER TABLE trg_bad ADD COLUMN extra int DEFAULT 5;
INSERT INTO trg_bad VALUES (2, 'acme');
SELECT event_type, tenant_id, payload FROM trg_events;
TRUNCATE messaging.outbox, messaging.outbox_staged;

-- switching forms and dropping
SELECT messaging.create_event_trigger('trg_row', 'account');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'trg_row'::regclass ORDER BY 1;
SELECT messaging.drop_event_trigger('trg_row');
SELECT messaging.drop_event_trigger('trg_row');

-- Staging: the statement form's events are packed into rows of
-- messaging.outbox_staged, which stay below a page, in the order of the
-- rows; the relay moves them to the outbox before it publishes.
CREATE TABLE trg_bulk (id int PRIMARY KEY, tenant text, note text);
SELECT messaging.create_event_trigger('trg_bulk', 'note', 'crm', 'tenant');
INSERT INTO trg_bulk SELECT g, 't' || (g % 3), repeat('x', 100) FROM generate_series(1, 1000) g;
SELECT count(*) > 1 AS several_rows, sum(events) AS events,
	   max(octet_length(body)) < 8192 AS below_a_page,
	   bool_and(first_id <= last_id) AS ranges_ordered,
	   bool_and(shape IS NOT NULL) AS shapes_shared
  FROM messaging.outbox_staged;
SELECT count(*) AS events, count(DISTINCT id) AS ids, bool_and(staged) AS all_staged,
	   bool_and(tenant_id = 't' || ((payload->>'id')::int % 3)) AS tenants_right,
	   bool_and(target_app = 'crm' AND event_type = 'note.created') AS shared_right,
	   bool_and(payload = jsonb_build_object('id', (payload->>'id')::int,
			'tenant', 't' || ((payload->>'id')::int % 3), 'note', repeat('x', 100))) AS payloads_right
  FROM messaging.pending_events;
-- payloads of different shapes in one statement: the rows with a
-- container value take the general path, and all come out as to_jsonb()
CREATE TABLE trg_mixed (id int, doc jsonb);
SELECT messaging.create_event_trigger('trg_mixed', 'doc');
INSERT INTO trg_mixed VALUES (1, '{"a": 1}'), (2, '[1, 2]'), (3, NULL), (4, '"s"'), (5, '{"a": 1}');
SELECT payload FROM messaging.pending_events WHERE event_type = 'doc.created' ORDER BY id;
SELECT bool_and(p.payload = to_jsonb(m)) AS same_as_to_jsonb
  FROM messaging.pending_events p JOIN trg_mixed m ON (p.payload->>'id')::int = m.id
 WHERE p.event_type = 'doc.created';
DELETE FROM messaging.outbox_staged WHERE event_type = 'doc.created';
DROP TABLE trg_mixed;
-- ids follow the rows
SELECT bool_and(id_order = row_order) AS ids_follow_rows
  FROM (SELECT row_number() OVER (ORDER BY id) AS id_order,
			   row_number() OVER (ORDER BY (payload->>'id')::int) AS row_order
		  FROM messaging.pending_events) x;
-- event_status() finds a staged event, with its tenant
SELECT (s).status, (s).event_type, (s).tenant_id, (s).target_app
  FROM (SELECT messaging.event_status(id) AS s FROM messaging.pending_events
		 WHERE payload->>'id' = '500') x;
SELECT (messaging.event_status(messaging.uuid_generate_v7())).status AS never_seen;
TRUNCATE messaging.outbox, messaging.outbox_staged;
-- an event too large for a staged row goes to the outbox itself, in its
-- place among the others
UPDATE trg_bulk SET note = CASE WHEN id = 2 THEN repeat('y', 9000) ELSE 'z' END
 WHERE id <= 3;
SELECT row_number() OVER (ORDER BY id) AS n, payload->'new'->>'id' AS row_id, staged,
	   length(payload->'new'->>'note') AS note_length
  FROM messaging.pending_events ORDER BY id;
TRUNCATE messaging.outbox, messaging.outbox_staged;
-- updates pair old and new rows also when rows move between partitions
CREATE TABLE trg_part (id int, region text, v int) PARTITION BY LIST (region);
CREATE TABLE trg_part_eu PARTITION OF trg_part FOR VALUES IN ('eu');
CREATE TABLE trg_part_us PARTITION OF trg_part FOR VALUES IN ('us');
INSERT INTO trg_part SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g
  FROM generate_series(1, 6) g;
SELECT messaging.create_event_trigger('trg_part', 'item');
UPDATE trg_part SET region = CASE WHEN id <= 3 THEN 'eu' ELSE region END, v = v * 10;
SELECT payload->'new'->>'id' AS id, payload->'old' AS old, payload->'changed' AS changed,
	   payload->'new'->>'region' AS region
  FROM messaging.pending_events ORDER BY (payload->'new'->>'id')::int;
TRUNCATE messaging.outbox, messaging.outbox_staged;
DROP TABLE trg_bulk, trg_part;
-- an UPDATE whose moved rows a BEFORE trigger drops on the way: the old
-- and new tables differ in length, so rows pair by primary key; a row
-- that is gone is a delete
CREATE TABLE trg_mv (id int, region text NOT NULL, v int, PRIMARY KEY (id, region))
  PARTITION BY LIST (region);
CREATE TABLE trg_mv_eu PARTITION OF trg_mv FOR VALUES IN ('eu');
CREATE TABLE trg_mv_us PARTITION OF trg_mv FOR VALUES IN ('us');
CREATE FUNCTION trg_skip_odd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF new.id % 2 = 1 THEN RETURN NULL; END IF;
	RETURN new;
END
$$;
CREATE TRIGGER skip_odd BEFORE INSERT ON trg_mv_us FOR EACH ROW EXECUTE FUNCTION trg_skip_odd();
INSERT INTO trg_mv SELECT g, 'eu', g FROM generate_series(1, 4) g;
SELECT messaging.create_event_trigger('trg_mv', 'mv');
TRUNCATE messaging.outbox, messaging.outbox_staged;
UPDATE trg_mv SET region = 'us', v = v + 100;
SELECT event_type, payload FROM messaging.pending_events ORDER BY id;
TRUNCATE messaging.outbox, messaging.outbox_staged;
-- without a primary key the rows cannot be paired: a clear error
CREATE TABLE trg_mv2 (id int, region text NOT NULL) PARTITION BY LIST (region);
CREATE TABLE trg_mv2_eu PARTITION OF trg_mv2 FOR VALUES IN ('eu');
CREATE TABLE trg_mv2_us PARTITION OF trg_mv2 FOR VALUES IN ('us');
CREATE TRIGGER skip_odd BEFORE INSERT ON trg_mv2_us FOR EACH ROW EXECUTE FUNCTION trg_skip_odd();
INSERT INTO trg_mv2 VALUES (1, 'eu'), (2, 'eu');
SELECT messaging.create_event_trigger('trg_mv2', 'mv');
UPDATE trg_mv2 SET region = 'us';
SELECT count(*) AS rows_still_in_eu FROM trg_mv2_eu;
DROP TABLE trg_mv, trg_mv2;
DROP FUNCTION trg_skip_odd();

DROP VIEW trg_events;
DROP TABLE trg_stmt, trg_row, trg_bad, trg_nopk;
DROP FUNCTION trg_fill(regclass), trg_try(text);
DROP TYPE trg_addr;
