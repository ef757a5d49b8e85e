/* sql/install/15_relay_outcome.sql: what happens to events the relay settled */

/*
 * What the relay calls after a pass, with one array element per settled
 * event.  outcomes: 'published' (confirmed), 'unroutable' (returned),
 * 'nacked' (rejected too often), 'retry' (rejected; try again).
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
	SELECT array_agg(c) FILTER (WHERE o IN ('unroutable', 'nacked')),
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
	END IF;

	IF retry_ctids IS NOT NULL THEN
		UPDATE messaging.outbox
		   SET attempts = attempts + 1, last_error = 'broker rejected the message'
		 WHERE ctid = ANY (retry_ctids);
	END IF;

	DELETE FROM messaging.outbox
	 WHERE ctid = ANY (p_ctids)
	   AND ctid <> ALL (coalesce(retry_ctids, '{}'));

	INSERT INTO messaging.awaiting_ack
		(event_id, event_type, source_app, target_app, tenant_id, created_at)
	SELECT i, e, s, g, t, c
	FROM unnest(p_ids, p_outcomes, p_event_types, p_source_apps,
				p_target_apps, p_tenant_ids, p_created_ats) AS x(i, o, e, s, g, t, c)
	WHERE o = 'published' AND g IS NOT NULL
	ON CONFLICT (event_id) DO NOTHING;

	PERFORM messaging._bump_counters(
		array_agg(t), array_agg(s), array_agg(g), array_agg(e),
		array_agg(CASE WHEN o = 'published' THEN 1 ELSE 0 END::bigint),
		array_agg(CASE WHEN o = 'published' AND g IS NULL THEN 1 ELSE 0 END::bigint),
		array_agg(CASE WHEN o IN ('unroutable', 'nacked') THEN 1 ELSE 0 END::bigint),
		array_fill(0::bigint, ARRAY[count(*)::int]),
		array_fill(0::bigint, ARRAY[count(*)::int]))
	FROM unnest(p_outcomes, p_event_types, p_target_apps, p_tenant_ids,
				p_source_apps)
		AS x(o, e, g, t, s)
	WHERE o <> 'retry'
	HAVING count(*) > 0;
END
$$;

/*
 * Called by the relay about every ten seconds, in its own transaction, for
 * housekeeping that must happen without any caller (acknowledgement
 * timeouts, periodic cleanup).
 */
CREATE FUNCTION messaging._relay_maintenance()
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT $$;
