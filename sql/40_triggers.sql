-- Row-change events from triggers: payload shapes, change detection,
-- options, truncate, row and statement forms, rollback, bad arguments.
-- No broker is reachable, so events stay in messaging.outbox.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS messaging;
RESET client_min_messages;
SET timezone = 'UTC';
SET extra_float_digits = 0;
\set VERBOSITY default
TRUNCATE messaging.outbox;

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
	  FROM messaging.outbox;
SELECT n, event_type, target_app, tenant_id, source_app, correlation_id,
	   jsonb_pretty(payload) FROM trg_events;

-- both forms render the same payloads
SELECT count(*) AS events, count(DISTINCT payload) AS distinct_payloads
  FROM messaging.outbox;
-- and exactly as to_jsonb() does
SELECT bool_and(o.payload = to_jsonb(r) - 'pw') AS same_as_to_jsonb
  FROM messaging.outbox o JOIN trg_row r ON (o.payload->>'id')::bigint = r.id;
TRUNCATE messaging.outbox;

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
SELECT event_type, payload FROM messaging.outbox ORDER BY id;
SELECT count(*) AS events, count(DISTINCT payload) AS distinct_payloads,
	   bool_and(o.payload = to_jsonb(r)) AS same_as_to_jsonb
  FROM messaging.outbox o JOIN trg_types r ON (o.payload->>'id')::int2 = r.id;
DROP TABLE trg_types, trg_types_row;
DROP FUNCTION trg_fill_types(regclass);
DROP DOMAIN trg_code;
TRUNCATE messaging.outbox;

-- an update: new row, old values of changed columns, changed list
UPDATE trg_stmt SET email = 'c@x', balance = 10.5, pw = 'new' WHERE id = 1;
UPDATE trg_row SET email = 'c@x', balance = 10.5, pw = 'new' WHERE id = 1;
SELECT n, event_type, tenant_id, payload->'old' AS old, payload->'changed' AS changed,
	   payload->'new'->>'email' AS new_email FROM trg_events;
SELECT count(DISTINCT payload) AS distinct_payloads FROM messaging.outbox;
TRUNCATE messaging.outbox;

-- no-op updates and updates of excluded columns only emit nothing
UPDATE trg_stmt SET email = email;
UPDATE trg_row SET email = email;
UPDATE trg_stmt SET pw = 'zzz';
UPDATE trg_row SET pw = 'zzz';
UPDATE trg_stmt SET js = '{"k":[1,2.0]}' WHERE id = 1;  -- same JSON value
UPDATE trg_row SET js = '{"k":[1,2.0]}' WHERE id = 1;
SELECT count(*) AS events FROM messaging.outbox;

-- NULL to value and back; many columns at once
UPDATE trg_stmt SET tenant = 'acme', balance = 1, seen = '2026-05-06 07:08:09+00',
	blob = '\xff', tags = '{}', home = ROW(NULL, 1), js = 'null' WHERE id = 2;
UPDATE trg_row SET tenant = 'acme', balance = 1, seen = '2026-05-06 07:08:09+00',
	blob = '\xff', tags = '{}', home = ROW(NULL, 1), js = 'null' WHERE id = 2;
SELECT n, tenant_id, payload->'changed' AS changed, payload->'old' AS old FROM trg_events;
SELECT count(DISTINCT payload) AS distinct_payloads FROM messaging.outbox;
TRUNCATE messaging.outbox;

-- deletes carry the old row; truncate emits one event
DELETE FROM trg_stmt WHERE id = 2;
DELETE FROM trg_row WHERE id = 2;
TRUNCATE trg_stmt;
TRUNCATE trg_row;
SELECT n, event_type, tenant_id, payload FROM trg_events;
TRUNCATE messaging.outbox;

-- the statement form describes an update per primary key value
INSERT INTO trg_stmt (id, email) VALUES (1, 'a'), (3, 'b');
TRUNCATE messaging.outbox;
UPDATE trg_stmt SET id = id + 1;
SELECT n, event_type, payload->'new'->>'id' AS new_id, payload->>'id' AS id,
	   payload->'changed' AS changed FROM trg_events ORDER BY event_type, n;
TRUNCATE messaging.outbox;
TRUNCATE trg_stmt;
TRUNCATE messaging.outbox;

-- watched columns: only their changes are events
CREATE TABLE trg_watch (id int PRIMARY KEY, status text, note text, tenant int);
CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE ON trg_watch FOR EACH ROW
	EXECUTE FUNCTION messaging.emit_event('order', '', 'tenant', 'watch=status');
INSERT INTO trg_watch VALUES (1, 'new', 'a', 7);
UPDATE trg_watch SET note = 'b';
UPDATE trg_watch SET status = 'paid', note = 'c';
SELECT n, event_type, target_app, tenant_id, payload FROM trg_events;
TRUNCATE messaging.outbox;
-- the same through the helper, statement form
DROP TRIGGER w ON trg_watch;
SELECT messaging.create_event_trigger('trg_watch', 'order', NULL, 'tenant',
	watch_columns => '{status}');
UPDATE trg_watch SET note = 'd';
UPDATE trg_watch SET status = 'shipped';
SELECT n, event_type, payload FROM trg_events;
TRUNCATE messaging.outbox;

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
TRUNCATE messaging.outbox;

-- suppression lasts until the end of the transaction
BEGIN;
SELECT messaging.suppress_trigger_events();
UPDATE trg_watch SET status = 'lost';
COMMIT;
UPDATE trg_watch SET status = 'found' WHERE id = 1;
SELECT event_type, payload->'new'->>'status' AS status FROM trg_events;
TRUNCATE messaging.outbox;

-- the source follows messaging.app_name
SELECT DISTINCT source_app FROM messaging.outbox;

-- tenant ids are checked
INSERT INTO trg_stmt (id, tenant) VALUES (9, 'bad tenant');
INSERT INTO trg_row (id, tenant) VALUES (9, 'a*b');
INSERT INTO trg_watch VALUES (9, 'x', NULL, NULL);
SELECT event_type, tenant_id FROM trg_events;
TRUNCATE messaging.outbox;
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
SELECT trg_try('UPDATE trg_nopk SET t = ''x''');
-- the helper checks the same before creating anything
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_nopk'', ''account'')');
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_bad'', ''account.'')');
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_bad'', ''account'', ''crm'', ''tenant'')');
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_bad'', ''account'', exclude_columns => ''{"a,b"}'')');
SELECT trg_try('SELECT messaging.create_event_trigger(''trg_events'', ''account'')');
\set VERBOSITY default
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid IN ('trg_bad'::regclass, 'trg_nopk'::regclass) AND NOT tgisinternal;
SELECT count(*) AS events FROM messaging.outbox;

-- a fixed trigger works after CREATE OR REPLACE (the cache follows it)
CREATE TRIGGER b11 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', 'nope');
INSERT INTO trg_bad VALUES (1);
CREATE OR REPLACE TRIGGER b11 AFTER INSERT ON trg_bad FOR EACH ROW EXECUTE FUNCTION messaging.emit_event('account', '', 't');
INSERT INTO trg_bad VALUES (1, 'acme');
ALTER TABLE trg_bad ADD COLUMN extra int DEFAULT 5;
INSERT INTO trg_bad VALUES (2, 'acme');
SELECT event_type, tenant_id, payload FROM trg_events;
TRUNCATE messaging.outbox;

-- switching forms and dropping
SELECT messaging.create_event_trigger('trg_row', 'account');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'trg_row'::regclass ORDER BY 1;
SELECT messaging.drop_event_trigger('trg_row');
SELECT messaging.drop_event_trigger('trg_row');

DROP VIEW trg_events;
DROP TABLE trg_stmt, trg_row, trg_bad, trg_nopk;
DROP FUNCTION trg_fill(regclass), trg_try(text);
DROP TYPE trg_addr;
