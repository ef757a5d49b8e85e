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
