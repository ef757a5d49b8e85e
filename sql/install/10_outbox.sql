/* sql/install/10_outbox.sql: the outbox, publishing and delivery failures */

/*
 * Events waiting to be published.  Rows are written by publish_event()
 * and the row-level triggers in the publishing transaction and deleted by the
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
 * Events of bulk changes on their way to the outbox.  A statement-level
 * emit_event() trigger packs the events of one statement into a few rows
 * here (one per page at most: the shared values once, then per event its
 * id, tenant and payload; see src/staging.c), which costs the changing
 * transaction far less than a row per event.  Before each pass over the
 * outbox the relay moves these rows' events into it, keeping their ids,
 * and publishes them from there.  Column order is relied upon by
 * src/staging.c.
 *
 * Rows live for milliseconds, so vacuum runs after a few dozen have gone
 * and keeps the emptied pages (vacuum_truncate off): the next bulk change
 * fills them again instead of extending the file page by page.
 */
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

/*
 * For event_status(): event wanted and its tenant if staged row first_id
 * (its body and shape) holds it: one row, or none.
 */
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
