/* sql/install/15_relay_outcome.sql: what happens to events the relay settled */

/*
 * Successful events, kept only while messaging.track_success is on, for
 * audits; cleanup() removes them after messaging.retention.  A broadcast
 * lands here as 'delivered' when the broker confirms it, a directed event
 * as 'acknowledged' when its target application acknowledges it.
 */
CREATE TABLE messaging.delivered_events (
	event_id		uuid PRIMARY KEY,
	event_type		text NOT NULL,
	source_app		text NOT NULL,
	target_app		text,
	tenant_id		text,
	status			text NOT NULL CHECK (status IN ('delivered', 'acknowledged')),
	attempts		integer,
	created_at		timestamptz NOT NULL,
	published_at	timestamptz NOT NULL,
	acknowledged_at	timestamptz,
	completed_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivered_events_completed_at_idx
	ON messaging.delivered_events (completed_at);

COMMENT ON TABLE messaging.delivered_events IS
	'successful events, recorded while messaging.track_success is on';

/*
 * Samples of the relay's running total of published events, one slot per
 * ten seconds over six minutes, written by _relay_maintenance(): the
 * sync_health view derives the publish rate of the last five minutes from
 * the live total and the sample taken five minutes earlier.
 */
CREATE TABLE messaging.relay_samples (
	slot			integer PRIMARY KEY CHECK (slot >= 0 AND slot < 36),
	sampled_at		timestamptz NOT NULL,
	relay_pid		integer NOT NULL,
	published		bigint NOT NULL
);

/* When the periodic cleanup last ran, and what it removed. */
CREATE TABLE messaging.maintenance_state (
	singleton		boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	last_cleanup_at	timestamptz,
	last_cleanup_rows bigint
);
INSERT INTO messaging.maintenance_state DEFAULT VALUES;

/*
 * Status changes of the shared-memory record of recent events, applied
 * when the calling transaction commits (see src/tracking.c).
 */
CREATE FUNCTION messaging._recent_settle(event_ids uuid[], status text,
										 at timestamptz)
RETURNS void
AS 'MODULE_PATHNAME', 'messaging_recent_settle'
LANGUAGE C VOLATILE STRICT;

/*
 * The relay's bookkeeping for confirmed events (src/outcome.c): outbox rows
 * deleted, directed events into awaiting_ack, counters.  The relay calls
 * the C code directly; this entry point lets tests simulate its passes.
 */
CREATE FUNCTION messaging._record_confirmed(
	ctids tid[], ids uuid[], event_types text[], target_apps text[],
	tenant_ids text[], source_apps text[], created_ats timestamptz[])
RETURNS void
AS 'MODULE_PATHNAME', 'messaging_record_confirmed_sql'
LANGUAGE C VOLATILE STRICT;

/*
 * What the relay calls for the settled events of a pass that are not
 * plain successes, one array element per event.  Confirmed events are
 * recorded by the relay itself (src/relay.c: outbox row deleted, directed
 * events into awaiting_ack, counters).  outcomes: 'unroutable' (returned),
 * 'unpublishable' (no AMQP message can carry it, or the broker closed the
 * channel over it), 'nacked' (rejected too often), 'retry' (rejected; try again), and
 * 'delivered' (a confirmed broadcast, passed only to be audited while
 * messaging.track_success is on).
 */
CREATE FUNCTION messaging._relay_outcome(
	p_ctids tid[], p_ids uuid[], p_outcomes text[], p_errors text[],
	p_event_types text[], p_target_apps text[], p_tenant_ids text[],
	p_source_apps text[], p_exchanges text[], p_routing_keys text[],
	p_attempts integer[], p_created_ats timestamptz[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	failed_ctids tid[];
	retry_ctids tid[];
BEGIN
	SELECT array_agg(c) FILTER (WHERE o IN ('unroutable', 'unpublishable', 'nacked')),
		   array_agg(c) FILTER (WHERE o = 'retry')
	  INTO failed_ctids, retry_ctids
	  FROM unnest(p_ctids, p_outcomes) AS x(c, o);

	IF failed_ctids IS NOT NULL THEN
		INSERT INTO messaging.failed_events AS f
			(event_id, event_type, source_app, target_app, tenant_id,
			 correlation_id, exchange, routing_key, envelope, reason, error,
			 attempts, created_at)
		SELECT b.id, b.event_type, b.source_app, b.target_app, b.tenant_id,
			   b.correlation_id, x.exchange, x.routing_key,
			   messaging.event_envelope(b.id, b.event_type, b.source_app,
										b.created_at, b.payload, b.target_app,
										b.tenant_id, b.correlation_id),
			   x.outcome, x.error, x.attempts, b.created_at
		FROM messaging.outbox b
		JOIN unnest(p_ctids, p_outcomes, p_errors, p_exchanges, p_routing_keys,
					p_attempts)
			AS x(c, outcome, error, exchange, routing_key, attempts)
			ON x.c = b.ctid
		WHERE b.ctid = ANY (failed_ctids)
		ON CONFLICT (event_id) DO UPDATE
			SET reason = excluded.reason, error = excluded.error,
				attempts = f.attempts + excluded.attempts,
				failed_at = excluded.failed_at;

		DELETE FROM messaging.outbox WHERE ctid = ANY (failed_ctids);

		PERFORM messaging._bump_counters(
			array_agg(t), array_agg(s), array_agg(g), array_agg(e),
			array_fill(0::bigint, ARRAY[count(*)::int]),
			array_fill(0::bigint, ARRAY[count(*)::int]),
			array_fill(1::bigint, ARRAY[count(*)::int]),
			array_fill(0::bigint, ARRAY[count(*)::int]),
			array_fill(0::bigint, ARRAY[count(*)::int]))
		FROM unnest(p_outcomes, p_event_types, p_target_apps, p_tenant_ids,
					p_source_apps)
			AS x(o, e, g, t, s)
		WHERE o IN ('unroutable', 'unpublishable', 'nacked');
	END IF;

	IF retry_ctids IS NOT NULL THEN
		UPDATE messaging.outbox
		   SET attempts = attempts + 1, last_error = 'broker rejected the message'
		 WHERE ctid = ANY (retry_ctids);
	END IF;

	/* A confirmed broadcast is done: audit it now if asked to. */
	INSERT INTO messaging.delivered_events
		(event_id, event_type, source_app, target_app, tenant_id, status,
		 attempts, created_at, published_at)
	SELECT i, e, s, NULL, t, 'delivered', a, c, now()
	FROM unnest(p_ids, p_outcomes, p_event_types, p_source_apps,
				p_tenant_ids, p_attempts, p_created_ats)
		AS x(i, o, e, s, t, a, c)
	WHERE o = 'delivered'
	ON CONFLICT (event_id) DO NOTHING;
END
$$;

/*
 * Fails the directed events that have awaited their acknowledgement for
 * longer than `timeout`: they move to failed_events with reason
 * 'ack_timeout' and count as failed.  Handles at most max_events of the
 * oldest per call, skipping rows that an acknowledgement holds right now.
 * Returns how many events failed.
 */
CREATE FUNCTION messaging._expire_acks(timeout interval,
									   max_events integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ids uuid[];
	tenants text[];
	sources text[];
	targets text[];
	types text[];
BEGIN
	WITH expired AS (
		DELETE FROM messaging.awaiting_ack w
		 WHERE w.event_id IN (
				SELECT a.event_id FROM messaging.awaiting_ack a
				 WHERE a.published_at < now() - timeout
				 ORDER BY a.published_at
				 LIMIT max_events
				 FOR UPDATE SKIP LOCKED)
		RETURNING w.*),
	failed AS (
		INSERT INTO messaging.failed_events AS f
			(event_id, event_type, source_app, target_app, tenant_id,
			 exchange, routing_key, reason, error, created_at)
		SELECT e.event_id, e.event_type, e.source_app, e.target_app,
			   e.tenant_id, 'inter-app-events',
			   e.target_app || '.' || e.event_type, 'ack_timeout',
			   format('acknowledgement timeout: application "%s" did not acknowledge the event within %s seconds of its publication (messaging.ack_timeout)',
					  e.target_app, extract(epoch FROM timeout)::bigint),
			   e.created_at
		FROM expired e
		ON CONFLICT (event_id) DO UPDATE
			SET reason = excluded.reason, error = excluded.error,
				failed_at = excluded.failed_at)
	SELECT array_agg(e.event_id), array_agg(e.tenant_id),
		   array_agg(e.source_app), array_agg(e.target_app),
		   array_agg(e.event_type)
	  INTO ids, tenants, sources, targets, types
	  FROM expired e;

	IF ids IS NULL THEN
		RETURN 0;
	END IF;

	PERFORM messaging._bump_counters(
		tenants, sources, targets, types,
		array_fill(0::bigint, ARRAY[cardinality(ids)]),
		array_fill(0::bigint, ARRAY[cardinality(ids)]),
		array_fill(1::bigint, ARRAY[cardinality(ids)]),
		array_fill(0::bigint, ARRAY[cardinality(ids)]),
		array_fill(0::bigint, ARRAY[cardinality(ids)]));
	PERFORM messaging._recent_settle(ids, 'failed', now());
	RETURN cardinality(ids);
END
$$;

/*
 * Called by the relay about every ten seconds, in its own transaction, for
 * housekeeping that must happen without any caller: acknowledgement
 * timeouts, a sample of the relay's publish total, and once an hour
 * cleanup() with the default retention.
 */
CREATE FUNCTION messaging._relay_maintenance()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	removed bigint;
BEGIN
	PERFORM messaging._expire_acks(
		current_setting('messaging.ack_timeout')::interval);

	INSERT INTO messaging.relay_samples AS r
		(slot, sampled_at, relay_pid, published)
	SELECT (floor(extract(epoch FROM now()) / 10))::bigint % 36, now(),
		   s.pid, s.published
	  FROM messaging._connection_status() s
	 WHERE s.worker = 'relay' AND s.pid IS NOT NULL
	ON CONFLICT (slot) DO UPDATE
		SET sampled_at = excluded.sampled_at, relay_pid = excluded.relay_pid,
			published = excluded.published;

	UPDATE messaging.maintenance_state
	   SET last_cleanup_at = now()
	 WHERE last_cleanup_at IS NULL
		OR last_cleanup_at <= now() - interval '1 hour';
	IF FOUND THEN
		/*
		 * A failing cleanup must not fail the whole call: the relay treats
		 * that as an error of its own and reconnects.  It is retried in an
		 * hour.
		 */
		BEGIN
			removed := messaging.cleanup();
		EXCEPTION WHEN OTHERS THEN
			RAISE WARNING 'messaging cleanup failed: %', SQLERRM
				USING HINT = 'It runs again in an hour; run messaging.cleanup() to see the full error.';
		END;
		UPDATE messaging.maintenance_state SET last_cleanup_rows = removed;
	END IF;
END
$$;
