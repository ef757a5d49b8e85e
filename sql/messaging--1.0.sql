/* sql/install/00_schema.sql: start of the messaging install script */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION messaging" to load this file. \quit

DO $check$
BEGIN
	IF current_database() <> current_setting('messaging.database', true) THEN
		RAISE EXCEPTION 'can only create extension in database %',
			coalesce(current_setting('messaging.database', true), '(unset)')
			USING DETAIL = 'The messaging workers connect to the database named by "messaging.database".',
				  HINT = 'Create the extension in that database, or change "messaging.database" and restart the server.';
	END IF;
END
$check$;

/*
 * Roles.  They are cluster-wide, so they may exist from an earlier
 * installation in another database; they are created only when missing.
 *
 *	messaging_publisher	 may publish events (and add jobs)
 *	messaging_reader	 may read the status views and functions
 *	messaging_admin		 may manage handlers, dead letters and cleanup;
 *						 is also a publisher and a reader
 */
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'messaging_publisher') THEN
		CREATE ROLE messaging_publisher NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'messaging_reader') THEN
		CREATE ROLE messaging_reader NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'messaging_admin') THEN
		CREATE ROLE messaging_admin NOLOGIN IN ROLE messaging_publisher, messaging_reader;
	END IF;
END
$roles$;

GRANT USAGE ON SCHEMA messaging TO messaging_publisher, messaging_reader, messaging_admin;
/* sql/install/10_outbox.sql: the outbox, publishing and delivery failures */

/*
 * Events waiting to be published.  Rows are written by publish_event()
 * and the row triggers in the publishing transaction and deleted by the
 * relay once the broker has confirmed them; the table is normally near
 * empty.  Column order is relied upon by src/outbox.h.
 */
CREATE TABLE messaging.outbox (
	id				uuid PRIMARY KEY,
	event_type		text NOT NULL,
	payload			jsonb NOT NULL,
	target_app		text,
	tenant_id		text,
	source_app		text NOT NULL,
	correlation_id	text,
	created_at		timestamptz NOT NULL,
	attempts		integer NOT NULL DEFAULT 0,
	last_error		text
) WITH (autovacuum_vacuum_scale_factor = 0,
		autovacuum_vacuum_threshold = 10000,
		autovacuum_vacuum_insert_scale_factor = 0,
		autovacuum_vacuum_insert_threshold = 10000);

COMMENT ON TABLE messaging.outbox IS
	'events committed but not yet confirmed by the broker';

/*
 * Events that could not be delivered: returned as unroutable, rejected by
 * the broker too often, acknowledged negatively by their target, or never
 * acknowledged.  Kept until cleanup() removes them.
 */
CREATE TABLE messaging.failed_events (
	event_id		uuid PRIMARY KEY,
	event_type		text NOT NULL,
	source_app		text NOT NULL,
	target_app		text,
	tenant_id		text,
	correlation_id	text,
	exchange		text NOT NULL,
	routing_key		text NOT NULL,
	envelope		jsonb,
	reason			text NOT NULL
		CHECK (reason IN ('unroutable', 'unpublishable', 'nacked', 'negative_ack',
						  'ack_timeout')),
	error			text,
	attempts		integer NOT NULL DEFAULT 1,
	created_at		timestamptz NOT NULL,
	failed_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX failed_events_failed_at_idx ON messaging.failed_events (failed_at);

COMMENT ON TABLE messaging.failed_events IS
	'one row per event that could not be delivered';

/*
 * Directed events the broker confirmed, waiting for their target
 * application's acknowledgement.  Deleted on acknowledgement; failed by
 * the ack timeout.
 */
CREATE TABLE messaging.awaiting_ack (
	event_id		uuid PRIMARY KEY,
	event_type		text NOT NULL,
	source_app		text NOT NULL,
	target_app		text NOT NULL,
	tenant_id		text,
	created_at		timestamptz NOT NULL,
	published_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX awaiting_ack_published_at_idx ON messaging.awaiting_ack (published_at);

/*
 * Counters: what successes leave behind.  One row per hour, tenant,
 * source application, target application and event type; '' stands for
 * "no tenant" and, in target_app, for a broadcast.  Written in aggregate,
 * one upsert per key and relay pass.
 *
 * Each key has a row per writer (0 the relay, 2 the consumer, 1 any other
 * session, see messaging._counter_writer()): an application transaction
 * that acknowledged an event holds its counter row until it ends, and the
 * workers must never wait for it.  Readers add the rows up.
 */
CREATE TABLE messaging.event_counters (
	bucket			timestamptz NOT NULL,
	tenant_id		text NOT NULL DEFAULT '',
	source_app		text NOT NULL,
	target_app		text NOT NULL DEFAULT '',
	event_type		text NOT NULL,
	published		bigint NOT NULL DEFAULT 0,
	acknowledged	bigint NOT NULL DEFAULT 0,
	failed			bigint NOT NULL DEFAULT 0,
	received		bigint NOT NULL DEFAULT 0,
	unhandled		bigint NOT NULL DEFAULT 0,
	last_event_at	timestamptz,
	writer			smallint NOT NULL DEFAULT 1,
	PRIMARY KEY (bucket, tenant_id, source_app, target_app, event_type, writer)
);

COMMENT ON TABLE messaging.event_counters IS
	'hourly event counts per tenant, source, target and type';

CREATE FUNCTION messaging.uuid_generate_v7()
RETURNS uuid
AS 'MODULE_PATHNAME', 'messaging_uuid_generate_v7'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION messaging.uuid_generate_v7() IS
	'a new time-ordered UUID (version 7)';

CREATE FUNCTION messaging.publish_event(
	event_type text,
	payload jsonb,
	target_app text DEFAULT NULL,
	tenant_id text DEFAULT NULL,
	source_app text DEFAULT NULL,
	correlation_id text DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'messaging_publish_event'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION messaging.publish_event(text, jsonb, text, text, text, text) IS
	'queue an event for publication when the transaction commits; returns its id';

CREATE FUNCTION messaging.event_envelope(
	id uuid, event_type text, source_app text, "time" timestamptz,
	data jsonb, target_app text DEFAULT NULL, tenant_id text DEFAULT NULL,
	correlation_id text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'messaging_event_envelope'
LANGUAGE C IMMUTABLE;

COMMENT ON FUNCTION messaging.event_envelope(uuid, text, text, timestamptz, jsonb, text, text, text) IS
	'the CloudEvents envelope of an event, as the relay publishes it';

/* Which counter rows the calling process writes (see event_counters). */
CREATE FUNCTION messaging._counter_writer()
RETURNS smallint
AS 'MODULE_PATHNAME', 'messaging_counter_writer'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

/*
 * Bumps the counters, one upsert per key, in the rows of the calling
 * process's writer.
 */
CREATE FUNCTION messaging._bump_counters(
	tenant_ids text[], source_apps text[], target_apps text[],
	event_types text[], published bigint[], acknowledged bigint[],
	failed bigint[], received bigint[], unhandled bigint[])
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO messaging.event_counters AS c
		(bucket, tenant_id, source_app, target_app, event_type,
		 published, acknowledged, failed, received, unhandled, last_event_at,
		 writer)
	SELECT date_trunc('hour', now()), coalesce(t, ''), s, coalesce(g, ''), e,
		   sum(p), sum(a), sum(f), sum(r), sum(u), now(),
		   messaging._counter_writer()
	FROM unnest(tenant_ids, source_apps, target_apps, event_types,
				published, acknowledged, failed, received, unhandled)
		AS x(t, s, g, e, p, a, f, r, u)
	GROUP BY 1, 2, 3, 4, 5
	ON CONFLICT (bucket, tenant_id, source_app, target_app, event_type, writer)
	DO UPDATE SET published = c.published + excluded.published,
				  acknowledged = c.acknowledged + excluded.acknowledged,
				  failed = c.failed + excluded.failed,
				  received = c.received + excluded.received,
				  unhandled = c.unhandled + excluded.unhandled,
				  last_event_at = excluded.last_event_at;
$$;

CREATE FUNCTION messaging._connection_status(
	OUT worker text, OUT pid integer, OUT state text, OUT broker_host text,
	OUT broker_port integer, OUT connected_since timestamptz,
	OUT last_error text, OUT last_error_at timestamptz,
	OUT reconnects bigint, OUT published bigint, OUT failed bigint,
	OUT backlog bigint, OUT last_success timestamptz,
	OUT dead_letter_depth bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'messaging_connection_status'
LANGUAGE C VOLATILE STRICT;

/*
 * One row per worker.  For the relay, published/failed count events and
 * backlog is the outbox; for the consumer they count handled and
 * dead-lettered events and backlog is the queue depth the broker reports.
 */
CREATE VIEW messaging.connection_status AS
	SELECT * FROM messaging._connection_status();

COMMENT ON VIEW messaging.connection_status IS
	'state of each messaging worker and its broker connection';
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
/* sql/install/20_consumer.sql: consuming events, handlers, dead letters */

/*
 * Handlers: SQL functions taking the whole CloudEvents envelope, run by
 * the consumer worker for every incoming event whose type matches the
 * pattern (AMQP topic syntax: "*" is one word, "#" zero or more words).
 * A handler runs as the role that registered it (owner), which a trigger
 * sets to the inserting role, so that nobody can register a handler to run
 * as someone else.
 */
CREATE TABLE messaging.handlers (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	pattern			text NOT NULL,
	handler			regprocedure NOT NULL,
	owner			regrole NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	UNIQUE (pattern, handler)
);

COMMENT ON TABLE messaging.handlers IS
	'functions run for incoming events whose type matches the pattern';

/*
 * Every row, however it is written, gets a valid pattern, a function of
 * the handler signature that the writing role may execute, and that role
 * as its owner.
 */
CREATE FUNCTION messaging._handlers_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p pg_catalog.pg_proc;
BEGIN
	IF length(NEW.pattern) > 255
	   OR NEW.pattern !~ '^([a-z0-9_]+|\*|#)(\.([a-z0-9_]+|\*|#))*$' THEN
		RAISE EXCEPTION 'invalid handler pattern "%"', NEW.pattern
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A pattern is up to 255 bytes of dot-separated words of lower-case letters, digits and underscores, where the word "*" matches exactly one word and "#" matches zero or more words.';
	END IF;

	SELECT * INTO p FROM pg_catalog.pg_proc WHERE oid = NEW.handler;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'function with OID % does not exist', NEW.handler::oid
			USING ERRCODE = 'undefined_function';
	END IF;
	IF p.prokind <> 'f' OR p.proretset OR p.pronargs <> 1
	   OR p.proargtypes[0] <> 'jsonb'::regtype
	   OR p.prorettype <> 'void'::regtype THEN
		RAISE EXCEPTION 'function % cannot be an event handler', NEW.handler
			USING ERRCODE = 'invalid_function_definition',
				  DETAIL = format('A handler takes one argument of type jsonb and returns void; this %s takes (%s) and returns %s%s.',
								  CASE p.prokind WHEN 'p' THEN 'procedure'
									   WHEN 'a' THEN 'aggregate'
									   WHEN 'w' THEN 'window function'
									   ELSE 'function' END,
								  pg_get_function_identity_arguments(p.oid),
								  CASE WHEN p.proretset THEN 'SETOF ' ELSE '' END,
								  coalesce(p.prorettype::regtype::text, 'nothing')),
				  HINT = 'Declare it as FUNCTION name(event jsonb) RETURNS void.';
	END IF;

	IF NOT has_function_privilege(NEW.handler, 'EXECUTE') THEN
		RAISE EXCEPTION 'permission denied for function %', NEW.handler
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A handler runs as the role that registers it, which must be allowed to execute it.';
	END IF;

	NEW.owner := quote_ident(current_user)::regrole;
	RETURN NEW;
END
$$;

CREATE TRIGGER handlers_check
	BEFORE INSERT OR UPDATE ON messaging.handlers
	FOR EACH ROW EXECUTE FUNCTION messaging._handlers_check();

/*
 * Ids of the events handled (or found to have no handler) in the last
 * messaging.retention seconds: a redelivered event is acknowledged without
 * running its handlers again.  messaging.cleanup() deletes older rows.
 */
CREATE TABLE messaging.handled_events (
	event_id		uuid PRIMARY KEY,
	source_app		text NOT NULL,
	handled_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX handled_events_handled_at_idx
	ON messaging.handled_events USING brin (handled_at);

COMMENT ON TABLE messaging.handled_events IS
	'recently handled incoming event ids, for deduplication';

/*
 * Incoming messages that could not be handled: invalid input (dead-lettered
 * at once) or handlers that failed messaging.max_retries + 1 times.  The
 * same message is also published to the "<queue>.dlq" queue on the broker;
 * this table is what replay_dead_letter() works from.
 */
CREATE TABLE messaging.dead_letters (
	id				bigserial PRIMARY KEY,
	message_id		text,
	event_id		uuid,
	event_type		text,
	source_app		text,
	exchange		text NOT NULL,
	routing_key		text NOT NULL,
	headers			jsonb,
	properties		jsonb,
	body			bytea NOT NULL,
	reason			text NOT NULL CHECK (reason IN ('invalid', 'failed')),
	error			text NOT NULL,
	attempts		integer NOT NULL,
	first_seen_at	timestamptz NOT NULL,
	failed_at		timestamptz NOT NULL DEFAULT now(),
	replay_requested_at timestamptz
);
CREATE INDEX dead_letters_replay_idx ON messaging.dead_letters (id)
	WHERE replay_requested_at IS NOT NULL;

COMMENT ON TABLE messaging.dead_letters IS
	'incoming messages that were rejected or whose handlers kept failing';

/*
 * Whether a routing key or event type matches an AMQP topic pattern.
 */
CREATE FUNCTION messaging.topic_matches(pattern text, routing_key text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'messaging_topic_matches'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION messaging.topic_matches(text, text) IS
	'whether the key matches the AMQP topic pattern ("*" one word, "#" zero or more)';

CREATE FUNCTION messaging.register_handler(pattern text, handler regprocedure)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF pattern IS NULL OR handler IS NULL THEN
		RAISE EXCEPTION 'handler pattern and function must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	/* the trigger checks the values and sets the owner */
	INSERT INTO messaging.handlers AS h (pattern, handler, owner)
	VALUES (pattern, handler, quote_ident(current_user)::regrole)
	ON CONFLICT ON CONSTRAINT handlers_pattern_handler_key DO NOTHING;
	RETURN FOUND;
END
$$;

COMMENT ON FUNCTION messaging.register_handler(text, regprocedure) IS
	'run the function, as the calling role, for incoming events matching the pattern; false if already registered';

CREATE FUNCTION messaging.unregister_handler(pattern text, handler regprocedure)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	WITH d AS (
		DELETE FROM messaging.handlers h
		 WHERE h.pattern = unregister_handler.pattern
		   AND h.handler = unregister_handler.handler
		RETURNING 1)
	SELECT count(*) > 0 FROM d;
$$;

COMMENT ON FUNCTION messaging.unregister_handler(text, regprocedure) IS
	'stop running the function for the pattern; false if it was not registered';

/*
 * Asks the consumer to publish the dead letter to its queue again, as a
 * first attempt.  The consumer picks it up within messaging.poll_interval
 * and deletes the row once the broker has the message; if it fails again,
 * a new dead letter appears.
 */
CREATE FUNCTION messaging.replay_dead_letter(id bigint)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	WITH u AS (
		UPDATE messaging.dead_letters d
		   SET replay_requested_at = coalesce(d.replay_requested_at, now())
		 WHERE d.id = replay_dead_letter.id
		RETURNING 1)
	SELECT count(*) > 0 FROM u;
$$;

COMMENT ON FUNCTION messaging.replay_dead_letter(bigint) IS
	'have the consumer deliver a dead letter again; false if there is no such id';

REVOKE ALL ON FUNCTION messaging.register_handler(text, regprocedure),
	messaging.unregister_handler(text, regprocedure),
	messaging.replay_dead_letter(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION messaging.register_handler(text, regprocedure),
	messaging.unregister_handler(text, regprocedure),
	messaging.replay_dead_letter(bigint) TO messaging_admin;
GRANT SELECT, INSERT, DELETE ON messaging.handlers TO messaging_admin;
GRANT SELECT ON messaging.handlers, messaging.handled_events TO messaging_reader;
GRANT SELECT, UPDATE (replay_requested_at), DELETE ON messaging.dead_letters
	TO messaging_admin;
GRANT SELECT ON messaging.dead_letters TO messaging_reader;
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
 * Where an event stands.  The tables answer first: the outbox (pending),
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
 * or a bounded read: backlogs are counted exactly up to 10 000 rows and
 * estimated from the statistics beyond; the last hour's figures come from
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
			   (SELECT o.created_at FROM messaging.outbox o ORDER BY o.id LIMIT 1)
				 AS oldest),
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
			   END AS outbox_backlog,
			   round(extract(epoch FROM now() - o.oldest), 3)
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
		  FROM relay r, consumer c, outbox o, waiting w, hour hr),
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
/* sql/install/40_triggers.sql: row-change events from table triggers */

/*
 * The trigger function.  Arguments, in CREATE TRIGGER ... EXECUTE FUNCTION
 * messaging.emit_event(...):
 *
 *	1. entity			events are <entity>.created, .updated, .deleted,
 *						.truncated
 *	2. target_app		'' or omitted: broadcast
 *	3. tenant_column	'' or omitted: no tenant
 *	4... options		'exclude=col,col' leaves columns out of every
 *						payload; 'watch=col,col' makes an update an event
 *						only when one of them changed
 *
 * FOR EACH ROW, or FOR EACH STATEMENT with transition tables (one event
 * per trigger: REFERENCING NEW TABLE for INSERT, OLD TABLE for DELETE,
 * both for UPDATE, which also needs a primary key); AFTER TRUNCATE FOR
 * EACH STATEMENT emits <entity>.truncated.
 */
CREATE FUNCTION messaging.emit_event()
RETURNS trigger
AS 'MODULE_PATHNAME', 'messaging_emit_event'
LANGUAGE C;

COMMENT ON FUNCTION messaging.emit_event() IS
	'trigger function: queue an event for each row a statement changes';

/*
 * Used by the statement form's SQL, which runs as the outbox's owner:
 * the tenant id of a row (the column's text, checked as a tenant id) and
 * the payload size check.
 */
CREATE FUNCTION messaging._event_tenant_id(value anyelement)
RETURNS text
AS 'MODULE_PATHNAME', 'messaging_event_tenant_id'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION messaging._event_payload(payload jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'messaging_event_payload'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

/*
 * Checks the arguments as the first firing would, then creates (or
 * replaces) the triggers with the caller's rights:
 *
 *	statement form (default)  messaging_events_insert, messaging_events_update,
 *							  messaging_events_delete (AFTER ... FOR EACH
 *							  STATEMENT, with transition tables "new"/"old")
 *	for_each_row => true	  messaging_events_row (AFTER INSERT OR UPDATE OR
 *							  DELETE FOR EACH ROW)
 *	both					  messaging_events_truncate (AFTER TRUNCATE)
 *
 * Switching forms drops the other form's triggers.  Returns the names of
 * the triggers now on the table.
 */
CREATE FUNCTION messaging.create_event_trigger(
	"table" regclass,
	entity text,
	target_app text DEFAULT NULL,
	tenant_column text DEFAULT NULL,
	exclude_columns text[] DEFAULT NULL,
	watch_columns text[] DEFAULT NULL,
	for_each_row boolean DEFAULT false)
RETURNS text[]
AS 'MODULE_PATHNAME', 'messaging_create_event_trigger'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION messaging.create_event_trigger(regclass, text, text, text, text[], text[], boolean) IS
	'check the arguments and create the triggers that emit row-change events for a table';

CREATE FUNCTION messaging.drop_event_trigger(tbl regclass)
RETURNS integer
AS 'MODULE_PATHNAME', 'messaging_drop_event_trigger'
LANGUAGE C VOLATILE STRICT;

COMMENT ON FUNCTION messaging.drop_event_trigger(regclass) IS
	'drop the triggers create_event_trigger() made on a table; returns how many';

/*
 * For handlers that apply changes received from another application and
 * must not echo them back: switches emit_event() off in this session until
 * the end of the transaction.  Returns the previous state.
 */
CREATE FUNCTION messaging.suppress_trigger_events(suppress boolean DEFAULT true)
RETURNS boolean
AS 'MODULE_PATHNAME', 'messaging_suppress_trigger_events'
LANGUAGE C VOLATILE STRICT;

COMMENT ON FUNCTION messaging.suppress_trigger_events(boolean) IS
	'switch row-change events off (or on) until the end of the transaction';
/* sql/install/90_privileges.sql: who may do what (runs last) */

/*
 * Nothing of the extension is open to PUBLIC.  Three roles (created in
 * 00_schema.sql) get what their work needs:
 *
 *	messaging_publisher	 publish events, and set up the row triggers that
 *						 publish them
 *	messaging_reader	 the status views and the status functions
 *	messaging_admin		 both of the above (role membership), plus
 *						 acknowledgements, handlers, dead letters, cleanup
 *						 and the failure and audit tables
 *
 * The tables stay private: the views read them with their owner's rights,
 * and the functions that change them are SECURITY DEFINER with a pinned
 * search_path.  A view runs the functions it calls with the caller's
 * rights, which is why readers may execute _connection_status(), the only
 * internal function anybody may call.  The other internal functions
 * (names starting with an underscore) are for the workers, which run as
 * the bootstrap superuser.
 *
 * publish_event() writes the outbox without a table privilege check, so
 * row triggers publishing through it work for every role that may modify
 * the table they are on.  A trigger function is not checked for EXECUTE
 * when it fires, only when the trigger is created, hence the grant to
 * publishers.
 *
 * Functions are granted by name, all overloads at once, so a function
 * added by a later part of the script only needs its name listed here.
 */
REVOKE ALL ON ALL TABLES IN SCHEMA messaging FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA messaging FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA messaging FROM PUBLIC;

DO $grants$
DECLARE
	g record;
BEGIN
	FOR g IN
		SELECT p.oid::regprocedure AS fn, x.grantee
		  FROM pg_catalog.pg_proc p
		  JOIN (VALUES
				('publish_event', 'messaging_publisher'),
				('uuid_generate_v7', 'messaging_publisher'),
				('event_envelope', 'messaging_publisher'),
				('emit_event', 'messaging_publisher'),
				('create_event_trigger', 'messaging_publisher'),
				('drop_event_trigger', 'messaging_publisher'),
				('suppress_trigger_events', 'messaging_publisher'),
				('event_status', 'messaging_reader'),
				('communication_matrix', 'messaging_reader'),
				('topic_matches', 'messaging_reader'),
				('_connection_status', 'messaging_reader'),
				('acknowledge_event', 'messaging_admin'),
				('cleanup', 'messaging_admin'),
				('register_handler', 'messaging_admin'),
				('unregister_handler', 'messaging_admin'),
				('replay_dead_letter', 'messaging_admin'))
			AS x(name, grantee) ON p.proname = x.name
		 WHERE p.pronamespace = 'messaging'::regnamespace
		 ORDER BY 1, 2
	LOOP
		EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', g.fn, g.grantee);
	END LOOP;
END
$grants$;

GRANT SELECT ON messaging.connection_status, messaging.sync_health,
	messaging.communication_matrix, messaging.unacknowledged_events
	TO messaging_reader;
GRANT SELECT ON messaging.failed_events, messaging.delivered_events,
	messaging.event_counters
	TO messaging_admin;
