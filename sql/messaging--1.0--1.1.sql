/* sql/messaging--1.0--1.1.sql: upgrade from 1.0 to 1.1 */

-- complain if this script is sourced in psql rather than through ALTER EXTENSION
\echo Use "ALTER EXTENSION messaging UPDATE TO '1.1'" to load this file. \quit

/*
 * 1.1 stages the events of statement-level triggers in a table of their
 * own, which the relay moves into the outbox, and pairs an UPDATE's old
 * and new rows in C; the SQL helpers of 1.0's statement form go.
 */

/* Staged events: see sql/install/10_outbox.sql and src/staging.c. */
CREATE TABLE messaging.outbox_staged (
	first_id		uuid PRIMARY KEY,
	last_id			uuid NOT NULL,
	event_type		text NOT NULL,
	target_app		text,
	source_app		text NOT NULL,
	created_at		timestamptz NOT NULL,
	events			integer NOT NULL,
	shape			bytea,
	body			bytea NOT NULL
) WITH (toast_tuple_target = 8160,
		vacuum_truncate = false,
		autovacuum_vacuum_scale_factor = 0,
		autovacuum_vacuum_threshold = 50,
		autovacuum_vacuum_insert_scale_factor = 0,
		autovacuum_vacuum_insert_threshold = 1000);

-- a row is sized to fit a page as it is: never compress or move its values
ALTER TABLE messaging.outbox_staged ALTER COLUMN shape SET STORAGE PLAIN,
	ALTER COLUMN body SET STORAGE PLAIN;

COMMENT ON TABLE messaging.outbox_staged IS
	'events of bulk changes, packed, for the relay to move into the outbox';

CREATE FUNCTION messaging._staged_event(first_id uuid, body bytea, shape bytea,
										wanted uuid)
RETURNS TABLE (event_id uuid, tenant_id text)
AS 'MODULE_PATHNAME', 'messaging_staged_event'
LANGUAGE C STABLE;

CREATE FUNCTION messaging._staged_events()
RETURNS TABLE (id uuid, event_type text, payload jsonb, target_app text,
			   tenant_id text, source_app text, created_at timestamptz)
AS 'MODULE_PATHNAME', 'messaging_staged_events'
LANGUAGE C STABLE;

/*
 * Every event not yet published: the outbox's rows and the staged events,
 * one row each (staged is true for the latter), in the order the relay
 * publishes them.
 */
CREATE VIEW messaging.pending_events AS
	SELECT o.id, o.event_type, o.payload, o.target_app, o.tenant_id,
		   o.source_app, o.correlation_id, o.created_at, o.attempts,
		   o.last_error, false AS staged
	  FROM messaging.outbox o
	UNION ALL
	SELECT s.id, s.event_type, s.payload, s.target_app, s.tenant_id,
		   s.source_app, NULL::text, s.created_at, 0, NULL::text, true
	  FROM messaging._staged_events() s;

COMMENT ON VIEW messaging.pending_events IS
	'events committed but not yet confirmed by the broker, staged ones included';

DROP FUNCTION messaging._event_tenant_id(anyelement);
DROP FUNCTION messaging._event_payload(jsonb);

/* event_status() and sync_health count the staged events as pending. */
CREATE OR REPLACE FUNCTION messaging.event_status(event_id uuid)
RETURNS messaging.event_status_info
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	wanted uuid := event_status.event_id;
	r messaging.event_status_info;
	m record;
BEGIN
	r.event_id := wanted;
	IF wanted IS NULL THEN
		r.status := 'unknown';
		RETURN r;
	END IF;

	SELECT 'pending', o.event_type, o.target_app, o.tenant_id, o.attempts,
		   o.last_error, o.created_at
	  INTO r.status, r.event_type, r.target_app, r.tenant_id, r.attempts,
		   r.last_error, r.created_at
	  FROM messaging.outbox o WHERE o.id = wanted;
	IF FOUND THEN
		RETURN r;
	END IF;

	SELECT 'pending', s.event_type, s.target_app, e.tenant_id, 0, s.created_at
	  INTO r.status, r.event_type, r.target_app, r.tenant_id, r.attempts,
		   r.created_at
	  FROM messaging.outbox_staged s
	 CROSS JOIN LATERAL messaging._staged_event(s.first_id, s.body, s.shape, wanted) e
	 WHERE s.first_id <= wanted AND s.last_id >= wanted;
	IF FOUND THEN
		RETURN r;
	END IF;

	SELECT * INTO m FROM messaging._recent_event(wanted);

	SELECT 'published', a.event_type, a.target_app, a.tenant_id, m.attempts,
		   a.created_at, a.published_at
	  INTO r.status, r.event_type, r.target_app, r.tenant_id, r.attempts,
		   r.created_at, r.published_at
	  FROM messaging.awaiting_ack a WHERE a.event_id = wanted;
	IF FOUND THEN
		RETURN r;
	END IF;

	SELECT 'failed', f.event_type, f.target_app, f.tenant_id, f.attempts,
		   f.error, f.created_at,
		   CASE WHEN f.reason IN ('negative_ack', 'ack_timeout')
				THEN m.published_at END
	  INTO r.status, r.event_type, r.target_app, r.tenant_id, r.attempts,
		   r.last_error, r.created_at, r.published_at
	  FROM messaging.failed_events f WHERE f.event_id = wanted;
	IF FOUND THEN
		RETURN r;
	END IF;

	SELECT d.status, d.event_type, d.target_app, d.tenant_id, d.attempts,
		   d.created_at, d.published_at, d.acknowledged_at
	  INTO r.status, r.event_type, r.target_app, r.tenant_id, r.attempts,
		   r.created_at, r.published_at, r.acknowledged_at
	  FROM messaging.delivered_events d WHERE d.event_id = wanted;
	IF FOUND THEN
		RETURN r;
	END IF;

	IF m.status IS NULL THEN
		r.status := 'unknown';
		RETURN r;
	END IF;

	r.status := CASE m.status WHEN 'published' THEN 'acknowledged'
				ELSE m.status END;
	r.event_type := m.event_type;
	r.target_app := m.target_app;
	r.tenant_id := m.tenant_id;
	r.attempts := m.attempts;
	r.created_at := m.created_at;
	r.published_at := m.published_at;
	r.acknowledged_at := m.acknowledged_at;
	RETURN r;
END
$$;

CREATE OR REPLACE VIEW messaging.sync_health AS
	WITH workers AS (
		SELECT * FROM messaging._connection_status()),
	relay AS (
		SELECT * FROM workers WHERE worker = 'relay'),
	consumer AS (
		SELECT * FROM workers WHERE worker = 'consumer'),
	outbox AS MATERIALIZED (
		SELECT (SELECT count(*) FROM (SELECT FROM messaging.outbox LIMIT 10000) x)
				 AS counted,
			   least((SELECT o.created_at FROM messaging.outbox o ORDER BY o.id LIMIT 1),
					 (SELECT s.created_at FROM messaging.outbox_staged s
					   ORDER BY s.first_id LIMIT 1))
				 AS oldest),
	staged AS MATERIALIZED (
		SELECT count(*) AS counted, coalesce(sum(x.events), 0) AS events
		  FROM (SELECT s.events FROM messaging.outbox_staged s LIMIT 1000) x),
	waiting AS MATERIALIZED (
		SELECT (SELECT count(*)
				  FROM (SELECT FROM messaging.awaiting_ack LIMIT 10000) x)
				 AS counted,
			   (SELECT min(a.published_at) FROM messaging.awaiting_ack a)
				 AS oldest),
	hour AS MATERIALIZED (
		SELECT sum((c.published + c.received) * k.w) AS published,
			   sum((c.acknowledged + c.unhandled) * k.w) AS acknowledged,
			   sum(c.failed * k.w) AS failed
		  FROM (SELECT date_trunc('hour', now()) AS cur,
					   1 - extract(epoch FROM now() - date_trunc('hour', now()))
						   / 3600 AS prev_w) h
		  JOIN messaging.event_counters c
			ON c.bucket >= h.cur - interval '1 hour'
		 CROSS JOIN LATERAL (
				SELECT CASE WHEN c.bucket >= h.cur THEN 1 ELSE h.prev_w END AS w) k),
	rate AS (
		SELECT CASE WHEN now() - s.sampled_at >= interval '1 second'
					THEN round((r.published - s.published)
							   / extract(epoch FROM now() - s.sampled_at), 2)
			   END AS publish_rate
		  FROM relay r
		  JOIN LATERAL (
				SELECT * FROM messaging.relay_samples s
				 WHERE s.relay_pid = r.pid AND s.published <= r.published
				 ORDER BY s.sampled_at <= now() - interval '5 minutes' DESC,
						  CASE WHEN s.sampled_at <= now() - interval '5 minutes'
							   THEN now() - s.sampled_at
							   ELSE s.sampled_at - now() END
				 LIMIT 1) s ON true),
	figures AS (
		SELECT r.state AS relay_state, r.pid AS relay_pid,
			   c.state AS consumer_state, c.pid AS consumer_pid,
			   r.last_success AS last_publish_at,
			   CASE WHEN o.counted < 10000 THEN o.counted
					ELSE greatest(o.counted,
								  pg_stat_get_live_tuples('messaging.outbox'::regclass))
			   END +
			   CASE WHEN st.counted < 1000 THEN st.events
					ELSE round(st.events / 1000.0 *
							   greatest(1000, pg_stat_get_live_tuples('messaging.outbox_staged'::regclass)))
			   END::bigint AS outbox_backlog,
			   round(extract(epoch FROM greatest(now() - o.oldest, interval '0')), 3)
				 AS oldest_pending_seconds,
			   CASE WHEN w.counted < 10000 THEN w.counted
					ELSE greatest(w.counted,
								  pg_stat_get_live_tuples('messaging.awaiting_ack'::regclass))
			   END AS unacknowledged,
			   round(extract(epoch FROM now() - w.oldest), 3)
				 AS oldest_unacknowledged_seconds,
			   round(coalesce(hr.failed, 0))::bigint AS failed_last_hour,
			   round(hr.acknowledged / nullif(hr.published, 0), 4)
				 AS success_rate_last_hour,
			   hr.failed / nullif(hr.acknowledged + hr.failed, 0)
				 AS failure_ratio,
			   (SELECT publish_rate FROM rate) AS publish_rate_5m,
			   CASE WHEN c.dead_letter_depth IS NOT NULL THEN c.backlog END
				 AS consumer_backlog,
			   c.dead_letter_depth
		  FROM relay r, consumer c, outbox o, staged st, waiting w, hour hr),
	judged AS (
		SELECT f.*,
			   array_remove(ARRAY[
				   CASE WHEN f.relay_pid IS NULL
						THEN 'relay worker is not running' END,
				   CASE WHEN f.relay_pid IS NOT NULL
						 AND f.relay_state IN ('disconnected', 'connecting')
						THEN 'relay is not connected to the broker' END,
				   CASE WHEN f.oldest_pending_seconds > 300
						THEN 'oldest unpublished event is more than 300 seconds old' END,
				   CASE WHEN f.failure_ratio >= 0.25
						THEN 'at least 25% of the events settled in the last hour failed' END
			   ], NULL) AS problems,
			   array_remove(ARRAY[
				   CASE WHEN f.relay_state = 'blocked'
						THEN 'broker blocks the relay (resource alarm)' END,
				   CASE WHEN f.consumer_pid IS NOT NULL
						 AND f.consumer_state IN ('disconnected', 'connecting')
						THEN 'consumer is not connected to the broker' END,
				   CASE WHEN f.oldest_pending_seconds > 30
						 AND f.oldest_pending_seconds <= 300
						THEN 'oldest unpublished event is more than 30 seconds old' END,
				   CASE WHEN f.failure_ratio >= 0.01 AND f.failure_ratio < 0.25
						THEN 'at least 1% of the events settled in the last hour failed' END,
				   CASE WHEN f.oldest_unacknowledged_seconds
							 > extract(epoch FROM current_setting('messaging.ack_timeout')::interval) / 2
						THEN 'an event has awaited its acknowledgement for more than half of messaging.ack_timeout' END,
				   CASE WHEN f.dead_letter_depth > 0
						THEN 'the dead-letter queue holds messages' END
			   ], NULL) AS warnings
		  FROM figures f)
	SELECT CASE WHEN cardinality(j.problems) > 0 THEN 'unhealthy'
				WHEN cardinality(j.warnings) > 0 THEN 'degraded'
				ELSE 'healthy' END AS status,
		   j.problems || j.warnings AS reasons,
		   j.relay_state, j.consumer_state, j.last_publish_at,
		   j.outbox_backlog, j.oldest_pending_seconds,
		   j.unacknowledged, j.oldest_unacknowledged_seconds,
		   j.failed_last_hour, j.success_rate_last_hour, j.publish_rate_5m,
		   j.consumer_backlog, j.dead_letter_depth,
		   now() AS checked_at
	  FROM judged j;

REVOKE ALL ON messaging.outbox_staged, messaging.pending_events FROM PUBLIC;
REVOKE ALL ON FUNCTION messaging._staged_event(uuid, bytea, bytea, uuid),
	messaging._staged_events() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION messaging._staged_events() TO messaging_admin;
GRANT SELECT ON messaging.pending_events TO messaging_admin;
