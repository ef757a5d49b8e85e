--
-- Event tracking: status transitions, acknowledgements, the dashboard
-- views, cleanup and privileges.  The broker is unreachable here, so the
-- relay never drains the outbox: its passes are simulated by calling
-- messaging._relay_outcome() and messaging._record_confirmed() the way the
-- relay does.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS messaging;
RESET client_min_messages;

-- Start from empty tracking tables, whatever earlier tests left.
TRUNCATE messaging.outbox, messaging.awaiting_ack, messaging.failed_events,
	messaging.event_counters, messaging.delivered_events;

-- One simulated relay pass over the outbox rows of tenants t30-*: events
-- for "nobody" come back unroutable, those for "full" are nacked for good,
-- those for "busy" are nacked once (retry), the rest are confirmed.
CREATE FUNCTION t30_pass() RETURNS void LANGUAGE sql AS $$
	SELECT messaging._relay_outcome(
		array_agg(ctid ORDER BY id), array_agg(id ORDER BY id),
		array_agg(CASE target_app WHEN 'nobody' THEN 'unroutable'
				  WHEN 'full' THEN 'nacked' WHEN 'busy' THEN 'retry'
				  ELSE 'delivered' END ORDER BY id),
		array_agg(CASE target_app
				  WHEN 'nobody' THEN 'broker returned the message: 312 NO_ROUTE'
				  WHEN 'full' THEN 'broker rejected the message 5 times'
				  WHEN 'busy' THEN 'broker rejected the message' END ORDER BY id),
		array_agg(event_type ORDER BY id), array_agg(target_app ORDER BY id),
		array_agg(tenant_id ORDER BY id), array_agg(source_app ORDER BY id),
		array_agg(CASE WHEN target_app IS NULL THEN 'inter-app-broadcast'
				  ELSE 'inter-app-events' END ORDER BY id),
		array_agg(CASE WHEN target_app IS NULL THEN ''
				  ELSE target_app || '.' || event_type END ORDER BY id),
		array_agg(attempts + 1 ORDER BY id), array_agg(created_at ORDER BY id))
	FROM messaging.outbox
	WHERE tenant_id LIKE 't30-%'
	  AND (target_app IN ('nobody', 'full', 'busy')
		   OR (target_app IS NULL AND current_setting('messaging.track_success')::boolean));
	SELECT messaging._record_confirmed(
		array_agg(ctid ORDER BY id), array_agg(id ORDER BY id),
		array_agg(event_type ORDER BY id), array_agg(target_app ORDER BY id),
		array_agg(tenant_id ORDER BY id), array_agg(source_app ORDER BY id),
		array_agg(created_at ORDER BY id))
	FROM messaging.outbox
	WHERE tenant_id LIKE 't30-%'
	  AND target_app IS DISTINCT FROM 'nobody'
	  AND target_app IS DISTINCT FROM 'full'
	  AND target_app IS DISTINCT FROM 'busy'
	HAVING count(*) > 0;
$$;

-- Compact view of an event's status.
CREATE FUNCTION t30_status(id uuid)
RETURNS TABLE (status text, event_type text, target_app text, tenant_id text,
			   attempts integer, last_error text, has_created boolean,
			   has_published boolean, has_acknowledged boolean)
LANGUAGE sql AS $$
	SELECT s.status, s.event_type, s.target_app, s.tenant_id, s.attempts,
		   s.last_error, s.created_at IS NOT NULL, s.published_at IS NOT NULL,
		   s.acknowledged_at IS NOT NULL
	FROM messaging.event_status(id) s;
$$;

SELECT messaging.publish_event('user.created', '{"user_id": 1}', 'crm', 't30-a') AS directed \gset
SELECT messaging.publish_event('org.created', '{"org_id": 7}', NULL, 't30-a') AS broadcast \gset
SELECT messaging.publish_event('user.created', '{}', 'nobody', 't30-b') AS unroutable \gset
SELECT messaging.publish_event('invoice.paid', '{}', 'full', 't30-b') AS nacked \gset
SELECT messaging.publish_event('invoice.paid', '{}', 'busy', 't30-b') AS retried \gset

-- Before the relay: every event is pending.
SELECT * FROM t30_status(:'directed');
SELECT * FROM t30_status(:'broadcast');
SELECT status FROM messaging.event_status(messaging.uuid_generate_v7());
SELECT status, event_type FROM messaging.event_status(NULL);

SELECT t30_pass();

-- Published (awaiting acknowledgement), failed, still pending.
SELECT * FROM t30_status(:'directed');
SELECT * FROM t30_status(:'unroutable');
SELECT * FROM t30_status(:'nacked');
SELECT * FROM t30_status(:'retried');
SELECT event_id = :'unroutable' AS is_unroutable, reason, exchange, routing_key,
	   envelope->>'type' AS type, envelope->>'tenantid' AS tenant
  FROM messaging.failed_events ORDER BY reason;

-- A confirmed broadcast is done and leaves no row anywhere (the record of
-- recent events, which would answer here, is filled by the relay itself).
SELECT * FROM t30_status(:'broadcast');
SELECT (SELECT count(*) FROM messaging.outbox WHERE id = :'broadcast')
	 + (SELECT count(*) FROM messaging.awaiting_ack WHERE event_id = :'broadcast')
	 + (SELECT count(*) FROM messaging.failed_events WHERE event_id = :'broadcast')
	 + (SELECT count(*) FROM messaging.delivered_events WHERE event_id = :'broadcast')
	   AS rows_left;

-- Counters: one row per key and hour.
SELECT tenant_id, source_app, target_app, event_type, published, acknowledged,
	   failed, received, unhandled, bucket = date_trunc('hour', now()) AS this_hour
  FROM messaging.event_counters ORDER BY 1, 2, 3, 4;

SELECT event_type, source_app, target_app, tenant_id, age >= interval '0' AS aged,
	   expires_at - published_at AS timeout
  FROM messaging.unacknowledged_events;

-- Acknowledgements.
SELECT messaging.acknowledge_event(:'directed');
SELECT messaging.acknowledge_event(:'directed');	-- already settled
SELECT messaging.acknowledge_event(:'broadcast');	-- nothing to acknowledge
SELECT messaging.acknowledge_event(:'retried');		-- not published yet
SELECT messaging.acknowledge_event(NULL);
SELECT messaging.acknowledge_event(:'directed', NULL);
SELECT count(*) AS awaiting FROM messaging.awaiting_ack;
SELECT * FROM t30_status(:'directed');
SELECT tenant_id, target_app, event_type, published, acknowledged, failed
  FROM messaging.event_counters WHERE target_app = 'crm';

-- A negative acknowledgement fails the event with the application's error.
SELECT messaging.publish_event('user.updated', '{}', 'crm', 't30-a') AS negative \gset
SELECT messaging.publish_event('user.deleted', '{}', 'crm', 't30-a') AS silent \gset
SELECT t30_pass();
SELECT messaging.acknowledge_event(:'negative', false, 'crm: user 1 is unknown');
SELECT messaging.acknowledge_event(:'silent', false);
SELECT * FROM t30_status(:'negative');
SELECT event_type, reason, error, routing_key, envelope IS NULL AS no_envelope
  FROM messaging.failed_events WHERE reason = 'negative_ack' ORDER BY event_type;

-- The acknowledgement timeout fails what waited too long.
SELECT messaging.publish_event('user.merged', '{}', 'billing', 't30-c') AS late \gset
SELECT messaging.publish_event('user.merged', '{}', 'billing', 't30-c') AS fresh \gset
SELECT t30_pass();
UPDATE messaging.awaiting_ack SET published_at = now() - interval '1 minute'
 WHERE event_id = :'late';
SELECT messaging._expire_acks(interval '30 seconds');
SELECT messaging._expire_acks(interval '30 seconds');
SELECT * FROM t30_status(:'late');
SELECT status FROM messaging.event_status(:'fresh');
SELECT messaging.acknowledge_event(:'late');		-- too late: stays failed
SELECT tenant_id, target_app, published, acknowledged, failed
  FROM messaging.event_counters WHERE target_app = 'billing';

-- The matrix over several tenants and applications, with incoming events
-- counted from the consumer's counters (received, acknowledged when
-- handled).
SELECT messaging._bump_counters('{t30-a,t30-a,NULL}', '{crm,crm,billing}',
	'{wrapper,wrapper,wrapper}', '{user.created,user.updated,invoice.sent}',
	'{0,0,0}', '{3,1,2}', '{0,1,0}', '{3,2,2}', '{0,0,0}');
SELECT tenant_id, source_app, target_app, published, acknowledged, failed,
	   pending, success_rate, last_event_at IS NOT NULL AS has_last
  FROM messaging.communication_matrix;
SELECT count(*) FROM messaging.communication_matrix(now() - interval '1 hour');
-- later than every bucket: only what awaits an acknowledgement is left
SELECT tenant_id, source_app, target_app, published, pending, success_rate
  FROM messaging.communication_matrix(now() + interval '2 hours');

-- Health: the relay cannot reach a broker here.
SELECT status, relay_state, outbox_backlog, unacknowledged, failed_last_hour,
	   success_rate_last_hour,
	   reasons && '{"relay worker is not running","relay is not connected to the broker"}'
		 AS relay_flagged,
	   'at least 25% of the events settled in the last hour failed' = ANY (reasons)
		 AS failures_flagged
  FROM messaging.sync_health;
-- an unpublished event that is ten minutes old
UPDATE messaging.outbox SET created_at = now() - interval '10 minutes'
 WHERE id = :'retried';
SELECT oldest_pending_seconds >= 600 AS old,
	   'oldest unpublished event is more than 300 seconds old' = ANY (reasons) AS flagged
  FROM messaging.sync_health;

-- Audit rows for successes while messaging.track_success is on.
ALTER SYSTEM SET messaging.track_success = on;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW messaging.track_success;
SELECT messaging.publish_event('org.renamed', '{}', NULL, 't30-d') AS audited_broadcast \gset
SELECT messaging.publish_event('org.renamed', '{}', 'crm', 't30-d') AS audited_directed \gset
SELECT t30_pass();
SELECT messaging.acknowledge_event(:'audited_directed');
SELECT event_type, target_app, tenant_id, status, attempts,
	   acknowledged_at IS NOT NULL AS has_ack
  FROM messaging.delivered_events ORDER BY status;
SELECT * FROM t30_status(:'audited_broadcast');
SELECT * FROM t30_status(:'audited_directed');
ALTER SYSTEM RESET messaging.track_success;
SELECT pg_reload_conf();

-- Cleanup: only what is older than the interval goes.
UPDATE messaging.failed_events SET failed_at = now() - interval '2 days'
 WHERE event_id IN (:'unroutable', :'nacked');
UPDATE messaging.delivered_events SET completed_at = now() - interval '2 days'
 WHERE event_id = :'audited_broadcast';
INSERT INTO messaging.event_counters (bucket, source_app, event_type, published)
VALUES (date_trunc('hour', now()) - interval '3 days', 'wrapper', 'old.event', 5);
SELECT messaging.cleanup(interval '1 day');
SELECT messaging.cleanup(interval '1 day');
SELECT (SELECT count(*) FROM messaging.failed_events) AS failed,
	   (SELECT count(*) FROM messaging.delivered_events) AS delivered,
	   (SELECT count(*) FROM messaging.event_counters
		 WHERE event_type = 'old.event') AS old_counters;
-- the consumer's handled-event ids, when that part is installed
DO $$
DECLARE
	n bigint;
BEGIN
	IF to_regclass('messaging.handled_events') IS NULL THEN
		RETURN;
	END IF;
	EXECUTE 'INSERT INTO messaging.handled_events (event_id, source_app, handled_at)'
			' VALUES (messaging.uuid_generate_v7(), ''crm'', now() - interval ''2 days''),'
			' (messaging.uuid_generate_v7(), ''crm'', now())';
	n := messaging.cleanup(interval '1 day');
	IF n <> 1 THEN
		RAISE EXCEPTION 'cleanup removed % rows instead of 1 handled-event id', n;
	END IF;
	EXECUTE 'DELETE FROM messaging.handled_events';
END
$$;
SELECT messaging.cleanup(interval '-1 hour');
SELECT messaging.cleanup() >= 0 AS default_retention;

-- Privileges.  Nothing is open to PUBLIC ...
SELECT c.relname, a.privilege_type
  FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE c.relnamespace = 'messaging'::regnamespace AND a.grantee = 0;
SELECT p.oid::regprocedure, a.privilege_type
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.pronamespace = 'messaging'::regnamespace AND a.grantee = 0;
-- ... internal functions are for nobody but the views' _connection_status ...
SELECT p.oid::regprocedure, a.grantee::regrole
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.pronamespace = 'messaging'::regnamespace AND p.proname LIKE '\_%'
   AND a.grantee <> p.proowner
 ORDER BY 1, 2;
-- ... and every other function belongs to one of the roles.
SELECT p.oid::regprocedure AS unassigned
  FROM pg_proc p
 WHERE p.pronamespace = 'messaging'::regnamespace AND p.proname NOT LIKE '\_%'
   AND NOT EXISTS (
		SELECT FROM aclexplode(p.proacl) a
		 WHERE a.grantee::regrole::text LIKE 'messaging\_%');
SELECT p.proname, a.grantee::regrole
  FROM pg_proc p, aclexplode(p.proacl) a
 WHERE p.pronamespace = 'messaging'::regnamespace
   AND p.proname IN ('publish_event', 'event_status', 'communication_matrix',
					 'acknowledge_event', 'cleanup')
   AND a.grantee <> p.proowner
 ORDER BY 1, 2;

CREATE ROLE r30_publisher IN ROLE messaging_publisher;
CREATE ROLE r30_reader IN ROLE messaging_reader;
CREATE ROLE r30_admin IN ROLE messaging_admin;
CREATE ROLE r30_nobody;

SET ROLE r30_nobody;
SELECT messaging.publish_event('x.y', '{}');
SELECT status FROM messaging.sync_health;
SELECT status FROM messaging.event_status('00000000-0000-7000-8000-000000000000');
RESET ROLE;

SET ROLE r30_publisher;
SELECT messaging.publish_event('x.y', '{}', NULL, 't30-z') IS NOT NULL AS published;
SELECT count(*) FROM messaging.communication_matrix;
SELECT count(*) FROM messaging.outbox;
SELECT messaging.acknowledge_event(:'fresh');
RESET ROLE;

SET ROLE r30_reader;
SELECT status FROM messaging.event_status(:'directed');
SELECT count(*) > 0 AS rows FROM messaging.communication_matrix;
SELECT count(*) > 0 AS rows FROM messaging.communication_matrix(now() - interval '1 day');
SELECT count(*) FROM messaging.unacknowledged_events;
SELECT count(*) FROM messaging.sync_health;
SELECT count(*) FROM messaging.connection_status;
SELECT count(*) FROM messaging.failed_events;
SELECT count(*) FROM messaging.awaiting_ack;
SELECT messaging.cleanup();
SELECT messaging.publish_event('x.y', '{}');
RESET ROLE;

SET ROLE r30_admin;
SELECT messaging.acknowledge_event(:'fresh');
SELECT messaging.cleanup(interval '30 days');
SELECT count(*) FROM messaging.failed_events;
SELECT count(*) FROM messaging.sync_health;
DELETE FROM messaging.failed_events;
SELECT messaging._expire_acks(interval '1 second');
SELECT messaging._bump_counters('{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
RESET ROLE;

DROP ROLE r30_publisher, r30_reader, r30_admin, r30_nobody;
DELETE FROM messaging.outbox WHERE tenant_id LIKE 't30-%';
DROP FUNCTION t30_pass(), t30_status(uuid);
