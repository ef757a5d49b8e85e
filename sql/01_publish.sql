--
-- publish_event(): the outbox row it writes, its validation errors and
-- their SQLSTATEs, and how it follows the caller's transaction.  The
-- regression instance has no reachable broker, so rows stay in the
-- outbox where the test can see them.
--
CREATE EXTENSION IF NOT EXISTS messaging;

-- Reports the outcome of a statement: 'ok', or SQLSTATE and message.
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- defaults of the settings a user sees first
SELECT name, setting, unit, context FROM pg_settings
 WHERE name IN ('messaging.app_name', 'messaging.database',
				'messaging.max_payload_bytes', 'messaging.heartbeat',
				'messaging.reconnect_max_delay', 'messaging.publish_batch_size',
				'messaging.consumer_queue', 'messaging.consumer_prefetch',
				'messaging.retry_delay', 'messaging.max_retries',
				'messaging.ack_timeout', 'messaging.track_success')
 ORDER BY name;

-- a published event: one outbox row, time-ordered version 7 id
SELECT messaging.publish_event('user.created',
							   '{"user_id": 42, "email": "ada@example.com"}',
							   'crm', 'acme', NULL, 'req-1') AS id \gset
SELECT substr(:'id', 15, 1) AS uuid_version,
	   substr(:'id', 20, 1) IN ('8', '9', 'a', 'b') AS rfc_variant;
SELECT id = :'id' AS same_id, event_type, payload, target_app, tenant_id,
	   source_app, correlation_id, attempts, last_error,
	   created_at <= clock_timestamp() AS created_in_past
  FROM messaging.outbox;

-- defaults: broadcast, no tenant, source from messaging.app_name
SELECT messaging.publish_event('org.created', '{"org_id": 7}') IS NOT NULL AS published;
SELECT event_type, target_app, tenant_id, source_app, correlation_id
  FROM messaging.outbox ORDER BY id;

-- ids from one session sort in call order
SELECT bool_and(a < b) AS ordered
  FROM (SELECT id AS a, lead(id) OVER (ORDER BY created_at, id) AS b
		  FROM (SELECT messaging.publish_event('credit.allocated',
											   jsonb_build_object('n', g),
											   'billing') AS id,
					   clock_timestamp() AS created_at
				  FROM generate_series(1, 1000) g) s) t
 WHERE b IS NOT NULL;
SELECT count(*) FROM messaging.outbox WHERE event_type = 'credit.allocated';
TRUNCATE messaging.outbox;

-- event types: dotted lower-case words, at least two
SELECT t, pg_temp.try(format('SELECT messaging.publish_event(%L, ''{}'')', t))
  FROM unnest(ARRAY['user.created', 'role.permissions_updated',
					'org.assignment.created', 'a1.b_2', 'user', 'User.Created',
					'user..created', '.user.created', 'user.created.',
					'user.*', 'user.#', 'user created', '1user.created',
					'user.2fa_enabled', '']) AS t;
SELECT pg_temp.try('SELECT messaging.publish_event(NULL, ''{}'')');
SELECT pg_temp.try(format('SELECT messaging.publish_event(%L, ''{}'')',
						  'a.' || repeat('b', 190)));

-- payload: not null, bounded by messaging.max_payload_bytes
SELECT pg_temp.try('SELECT messaging.publish_event(''user.created'', NULL)');
SELECT pg_temp.try('SELECT messaging.publish_event(''user.created'', ''null'')');
SELECT pg_temp.try('SELECT messaging.publish_event(''user.created'', ''[1, 2]'')');
SELECT regexp_replace(pg_temp.try(
	'SELECT messaging.publish_event(''user.created'', jsonb_build_object(''blob'', repeat(''x'', 1100000)))'),
	'[0-9]+ bytes', 'N bytes') AS oversize;

-- application names: bounded, no dots, no wildcards
SELECT a, pg_temp.try(format('SELECT messaging.publish_event(''user.created'', ''{}'', %L)', a))
  FROM unnest(ARRAY['crm', 'billing-v2', 'CRM_2', 'crm.eu', 'crm*', '#', '',
					'crm app', repeat('a', 63), repeat('a', 64)]) AS a;
SELECT pg_temp.try('SELECT messaging.publish_event(''user.created'', ''{}'', source_app => ''bad.app'')');

-- tenant ids: printable, no wildcards, bounded
SELECT left(t, 20) AS tenant, pg_temp.try(format(
		'SELECT messaging.publish_event(''user.created'', ''{}'', NULL, %L)', t))
  FROM unnest(ARRAY['acme', 'tenant-01.eu', '7c9e6679-7425-40de-944b-e07fc1f90ae7',
					'acme corp', 'acme*', 'ac#me', '', e'acme\n',
					repeat('t', 128), repeat('t', 129)]) AS t;

-- correlation ids
SELECT pg_temp.try('SELECT messaging.publish_event(''user.created'', ''{}'', correlation_id => ''req 1'')');
SELECT pg_temp.try(format('SELECT messaging.publish_event(''user.created'', ''{}'', correlation_id => %L)', repeat('c', 256)));

-- nothing of the failed calls was written
SELECT event_type, target_app, tenant_id FROM messaging.outbox ORDER BY id;
TRUNCATE messaging.outbox;

-- transactions: a rollback publishes nothing
BEGIN;
SELECT messaging.publish_event('user.created', '{"n": 1}') IS NOT NULL AS queued;
SELECT count(*) AS visible_inside FROM messaging.outbox;
ROLLBACK;
SELECT count(*) AS after_rollback FROM messaging.outbox;

-- a rolled-back savepoint takes its events with it; the rest commit
BEGIN;
SELECT messaging.publish_event('user.created', '{"n": "kept 1"}') IS NOT NULL AS queued;
SAVEPOINT s1;
SELECT messaging.publish_event('user.created', '{"n": "dropped"}') IS NOT NULL AS queued;
ROLLBACK TO SAVEPOINT s1;
SELECT messaging.publish_event('user.created', '{"n": "kept 2"}') IS NOT NULL AS queued;
COMMIT;
SELECT payload->>'n' AS n FROM messaging.outbox ORDER BY id;

-- an error after the call aborts the event too
SELECT pg_temp.try($q$DO $b$ BEGIN
	PERFORM messaging.publish_event('user.created', '{"n": "in failed block"}');
	PERFORM 1 / 0;
END $b$$q$);
SELECT payload->>'n' AS n FROM messaging.outbox ORDER BY id;
TRUNCATE messaging.outbox;

-- the envelope as the relay sends it
SELECT jsonb_pretty(messaging.event_envelope(
	'01890a5d-ac96-774b-bcce-b302099a8057', 'user.created', 'wrapper',
	'2026-01-02 03:04:05.123456+00', '{"user_id": 42}', 'crm', 'acme', 'req-1'));
SELECT messaging.event_envelope(
	'01890a5d-ac96-774b-bcce-b302099a8057', 'org.created', 'wrapper',
	'2026-01-02 03:04:05+00', '{"name": "Zoë \"Q\" <x>"}')::text;

-- connection status: one row per worker, never a password; the relay
-- names the configured broker although it cannot reach it
SELECT worker FROM messaging.connection_status ORDER BY worker;
DO $$
BEGIN
	FOR i IN 1 .. 300 LOOP
		EXIT WHEN (SELECT pid IS NOT NULL FROM messaging.connection_status
					WHERE worker = 'relay');
		PERFORM pg_sleep(0.1);
	END LOOP;
END
$$;
SELECT state IN ('disconnected', 'connecting') AS not_connected,
	   pid IS NOT NULL AS running, broker_host, broker_port
  FROM messaging.connection_status WHERE worker = 'relay';
SELECT count(*) AS rows_mentioning_password
  FROM messaging.connection_status s
 WHERE s::text LIKE '%guest%';

-- the broker URL carries credentials: superusers only
CREATE ROLE messaging_test_user;
SET ROLE messaging_test_user;
SELECT pg_temp.try('SHOW messaging.broker_url');
SELECT count(*) AS visible FROM pg_settings WHERE name = 'messaging.broker_url';
RESET ROLE;
DROP ROLE messaging_test_user;

-- a password in a broker URL never shows in a message that reaches the
-- server log, PostgreSQL's own "invalid value" error included
ALTER SYSTEM SET messaging.broker_url = 'amqp://app:s3cr3t@broker.internal:notaport/%2f';
DO $$ BEGIN RAISE WARNING 'connecting to amqps://app:s3cr3t@broker.internal:5671/%%2f and amqp://guest@h/'; END $$;
-- and when the value is no URL at all
ALTER SYSTEM SET messaging.broker_url = 'AMQP:/app:s3cr3t@broker.internal/%2f';
ALTER SYSTEM SET messaging.broker_url = 'http://app:s3:cr@3t@broker.internal/';
