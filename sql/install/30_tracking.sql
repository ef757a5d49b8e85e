/* sql/install/30_tracking.sql: acknowledgements, event status, dashboard views */

/*
 * What the shared-memory record of recent events knows about one event;
 * all nulls when it knows nothing.  Internal: event_status() reads it.
 */
CREATE FUNCTION messaging._recent_event(
	event_id uuid,
	OUT status text, OUT event_type text, OUT target_app text,
	OUT tenant_id text, OUT attempts integer, OUT created_at timestamptz,
	OUT published_at timestamptz, OUT acknowledged_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'messaging_recent_event'
LANGUAGE C VOLATILE STRICT;

/*
 * The target application's answer to a directed event.  True when the
 * event was awaiting an acknowledgement; false otherwise (unknown id, a
 * broadcast, not published yet, or already settled: a late answer after
 * the acknowledgement timeout leaves the event failed).
 *
 * The relay records a pass only after the broker confirmed all of it, so
 * an acknowledgement can overtake the record of its own publication.  An
 * event found neither awaiting nor gone from the outbox is therefore
 * locked in the outbox first, which waits for the relay's pass to commit,
 * and then looked up again.  Call it in a short READ COMMITTED transaction
 * of its own.
 *
 * The relay writes counter rows of its own (see messaging.event_counters),
 * so it never waits for counter rows this caller holds, and the wait for
 * its pass cannot turn into a deadlock.
 *
 * XXX: awaiting_ack keeps no payload or correlation id, so the failed_events
 * row of a negative acknowledgement (or of a timeout) has no envelope and
 * cannot be published again from there.
 */
CREATE FUNCTION messaging.acknowledge_event(
	event_id uuid, success boolean DEFAULT true, error text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	wanted uuid := acknowledge_event.event_id;
	app_error text := acknowledge_event.error;
	a messaging.awaiting_ack;
BEGIN
	IF success IS NULL THEN
		RAISE EXCEPTION 'success must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Pass true for a positive acknowledgement, false for a negative one.';
	END IF;
	IF wanted IS NULL THEN
		RETURN false;
	END IF;

	DELETE FROM messaging.awaiting_ack w WHERE w.event_id = wanted
	RETURNING w.* INTO a;
	IF NOT FOUND THEN
		PERFORM FROM messaging.outbox o WHERE o.id = wanted FOR UPDATE;
		IF FOUND THEN
			RETURN false;		/* not published yet */
		END IF;
		DELETE FROM messaging.awaiting_ack w WHERE w.event_id = wanted
		RETURNING w.* INTO a;
		IF NOT FOUND THEN
			RETURN false;
		END IF;
	END IF;

	IF success THEN
		PERFORM messaging._bump_counters(
			ARRAY[a.tenant_id], ARRAY[a.source_app], ARRAY[a.target_app],
			ARRAY[a.event_type], '{0}', '{1}', '{0}', '{0}', '{0}');
		IF current_setting('messaging.track_success')::boolean THEN
			INSERT INTO messaging.delivered_events
				(event_id, event_type, source_app, target_app, tenant_id,
				 status, created_at, published_at, acknowledged_at)
			VALUES (a.event_id, a.event_type, a.source_app, a.target_app,
					a.tenant_id, 'acknowledged', a.created_at, a.published_at,
					now())
			ON CONFLICT ON CONSTRAINT delivered_events_pkey DO NOTHING;
		END IF;
		PERFORM messaging._recent_settle(ARRAY[wanted], 'acknowledged', now());
	ELSE
		INSERT INTO messaging.failed_events AS f
			(event_id, event_type, source_app, target_app, tenant_id,
			 exchange, routing_key, reason, error, created_at)
		VALUES (a.event_id, a.event_type, a.source_app, a.target_app,
				a.tenant_id, 'inter-app-events',
				a.target_app || '.' || a.event_type, 'negative_ack',
				coalesce(app_error,
						 format('application "%s" acknowledged the event negatively without giving an error',
								a.target_app)),
				a.created_at)
		ON CONFLICT ON CONSTRAINT failed_events_pkey DO UPDATE
			SET reason = excluded.reason, error = excluded.error,
				failed_at = excluded.failed_at;
		PERFORM messaging._bump_counters(
			ARRAY[a.tenant_id], ARRAY[a.source_app], ARRAY[a.target_app],
			ARRAY[a.event_type], '{0}', '{0}', '{1}', '{0}', '{0}');
		PERFORM messaging._recent_settle(ARRAY[wanted], 'failed', now());
	END IF;
	RETURN true;
END
$$;

COMMENT ON FUNCTION messaging.acknowledge_event(uuid, boolean, text) IS
	'record the target application''s (negative) acknowledgement of a directed event; false if it was not awaiting one';

CREATE TYPE messaging.event_status_info AS (
	event_id		uuid,
	status			text,
	event_type		text,
	target_app		text,
	tenant_id		text,
	attempts		integer,
	last_error		text,
	created_at		timestamptz,
	published_at	timestamptz,
	acknowledged_at	timestamptz
);

/*
 * Where an event stands.  The tables answer first: the outbox and the
 * staged events of statement-level triggers (pending),
 * awaiting_ack (published, awaiting its acknowledgement), failed_events
 * (failed) and, with messaging.track_success, delivered_events.  For a
 * success that left no row, the shared-memory record of recent events
 * answers (acknowledged or delivered) until newer events overwrite it;
 * after that, as for ids never seen, the status is 'unknown'.
 *
 * An event the record still shows as published, but that neither awaits
 * an acknowledgement nor failed, was acknowledged: its acknowledgement
 * arrived before the relay put the event into the record, or its update
 * of the record is an instant behind its commit.  acknowledged_at is then
 * null.
 */
CREATE FUNCTION messaging.event_status(event_id uuid)
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

COMMENT ON FUNCTION messaging.event_status(uuid) IS
	'where an event stands: pending, published, acknowledged, delivered, failed or unknown';

/*
 * Directed events the broker delivered that still await their target
 * application's acknowledgement, oldest first.
 */
CREATE VIEW messaging.unacknowledged_events AS
	SELECT a.event_id, a.event_type, a.source_app, a.target_app, a.tenant_id,
		   a.created_at, a.published_at,
		   now() - a.published_at AS age,
		   a.published_at
			 + current_setting('messaging.ack_timeout')::interval AS expires_at
	  FROM messaging.awaiting_ack a
	 ORDER BY a.published_at;

COMMENT ON VIEW messaging.unacknowledged_events IS
	'delivered directed events still awaiting an acknowledgement';

/*
 * Who talks to whom: one row per tenant, source and target application,
 * from the hourly counters since the hour that contains `since`.
 *
 *	published		events that travelled from source to target: confirmed
 *					by the broker when this application is the source,
 *					received by the consumer when it is the target
 *	acknowledged	of those, acknowledged by the target (broadcasts count
 *					once confirmed; incoming events once handled here)
 *	failed			events that failed on the way, for any reason
 *	pending			delivered events awaiting an acknowledgement now,
 *					whatever their age
 *	success_rate	acknowledged / published, null when nothing was
 *					published
 *
 * A broadcast has target_app '*'; an event without tenant has tenant_id
 * null.
 */
CREATE FUNCTION messaging.communication_matrix(since timestamptz)
RETURNS TABLE (
	tenant_id text, source_app text, target_app text, published bigint,
	acknowledged bigint, failed bigint, pending bigint, success_rate numeric,
	last_event_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	WITH counted AS (
		SELECT c.tenant_id AS t, c.source_app AS s, c.target_app AS g,
			   sum(c.published + c.received)::bigint AS published,
			   sum(c.acknowledged + c.unhandled)::bigint AS acknowledged,
			   sum(c.failed)::bigint AS failed,
			   max(c.last_event_at) AS last_event_at
		  FROM messaging.event_counters c
		 WHERE c.bucket >= date_trunc('hour', since)
		 GROUP BY 1, 2, 3),
	/*
	 * XXX: this reads all of awaiting_ack, whose size is bounded by the
	 * directed publish rate times messaging.ack_timeout.  A per-key count
	 * kept by the relay would make it constant.
	 */
	waiting AS (
		SELECT coalesce(a.tenant_id, '') AS t, a.source_app AS s,
			   a.target_app AS g, count(*) AS pending
		  FROM messaging.awaiting_ack a
		 GROUP BY 1, 2, 3)
	SELECT nullif(t, ''), s, CASE WHEN g = '' THEN '*' ELSE g END,
		   coalesce(counted.published, 0), coalesce(counted.acknowledged, 0),
		   coalesce(counted.failed, 0), coalesce(waiting.pending, 0),
		   round(counted.acknowledged::numeric
				 / nullif(counted.published, 0), 4),
		   counted.last_event_at
	  FROM counted FULL JOIN waiting USING (t, s, g)
	 ORDER BY t, s, g;
$$;

COMMENT ON FUNCTION messaging.communication_matrix(timestamptz) IS
	'event counts per tenant, source and target application since the given time (rounded down to the hour)';

CREATE VIEW messaging.communication_matrix AS
	SELECT * FROM messaging.communication_matrix(now() - interval '24 hours');

COMMENT ON VIEW messaging.communication_matrix IS
	'event counts per tenant, source and target application over the last 24 hours';

/*
 * One row summing up whether events flow.  Every part is an index probe
 * or a bounded read: backlogs are counted exactly up to 10 000 rows (1 000
 * staged rows) and estimated from the statistics beyond; the last hour's figures come from
 * the current hourly counters plus the previous hour's in proportion to
 * the part of it that lies within the last sixty minutes; the publish rate
 * compares the relay's running total with the sample _relay_maintenance()
 * took five minutes ago.  Thresholds are described in doc/tracking.md.
 *
 * XXX: the publish rate is null until the relay has taken a sample (about
 * ten seconds after it starts) and covers only the time since then for
 * the first five minutes.
 */
CREATE VIEW messaging.sync_health AS
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

COMMENT ON VIEW messaging.sync_health IS
	'one row: healthy, degraded or unhealthy, with the figures behind it';

/*
 * Removes what is older than older_than (default messaging.retention):
 * failed events, dead letters not asked to be replayed, handled-event ids,
 * audit rows of successes, and hourly counter buckets that ended before
 * the cut-off.  Returns how many rows went.  The relay runs it once an
 * hour with the default.
 */
CREATE FUNCTION messaging.cleanup(older_than interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cutoff timestamptz;
	n bigint;
	total bigint := 0;
BEGIN
	IF older_than < interval '0' THEN
		RAISE EXCEPTION 'cleanup interval must not be negative'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The interval given was %s.', older_than);
	END IF;
	cutoff := now() - coalesce(older_than,
							   current_setting('messaging.retention')::interval);

	DELETE FROM messaging.failed_events f WHERE f.failed_at < cutoff;
	GET DIAGNOSTICS n = ROW_COUNT;
	total := total + n;

	DELETE FROM messaging.delivered_events d WHERE d.completed_at < cutoff;
	GET DIAGNOSTICS n = ROW_COUNT;
	total := total + n;

	DELETE FROM messaging.event_counters c
	 WHERE c.bucket < date_trunc('hour', cutoff);
	GET DIAGNOSTICS n = ROW_COUNT;
	total := total + n;

	/* The consumer's tables, when the consumer part is installed. */
	IF to_regclass('messaging.dead_letters') IS NOT NULL THEN
		EXECUTE 'DELETE FROM messaging.dead_letters d'
				' WHERE d.failed_at < $1 AND d.replay_requested_at IS NULL'
			USING cutoff;
		GET DIAGNOSTICS n = ROW_COUNT;
		total := total + n;
	END IF;
	IF to_regclass('messaging.handled_events') IS NOT NULL THEN
		EXECUTE 'DELETE FROM messaging.handled_events h WHERE h.handled_at < $1'
			USING cutoff;
		GET DIAGNOSTICS n = ROW_COUNT;
		total := total + n;
	END IF;

	RETURN total;
END
$$;

COMMENT ON FUNCTION messaging.cleanup(interval) IS
	'remove tracking rows older than the interval (default messaging.retention); returns how many';
