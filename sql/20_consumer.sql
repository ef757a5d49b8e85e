--
-- The consumer's SQL side: topic pattern matching, handler registration
-- and its errors (with SQLSTATEs), who owns a handler, and replaying dead
-- letters.  The broker is unreachable here, so dead letters are inserted
-- by hand and replay requests stay pending.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS messaging;
RESET client_min_messages;

-- topic matching: "*" is one word, "#" zero or more
SELECT p, k, messaging.topic_matches(p, k) AS matches
FROM (VALUES ('user.created', 'user.created'),
			 ('user.created', 'user.deleted'),
			 ('user.*', 'user.created'),
			 ('user.*', 'user'),
			 ('user.*', 'user.created.late'),
			 ('*.created', 'org.created'),
			 ('org.#', 'org'),
			 ('org.#', 'org.created'),
			 ('org.#', 'org.unit.created'),
			 ('org.#', 'organisation.created'),
			 ('#', 'anything.at.all'),
			 ('#.deleted', 'role.deleted'),
			 ('#.deleted', 'deleted'),
			 ('a.#.z', 'a.z'),
			 ('a.#.z', 'a.b.c.z'),
			 ('a.#.z', 'a.b.c'),
			 ('#.#', 'x')) AS t(p, k);

CREATE FUNCTION pg_temp.try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE FUNCTION public.h_good(event jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.h_returns_int(event jsonb) RETURNS int
LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION public.h_text_arg(event text) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.h_two_args(event jsonb, extra int DEFAULT 0) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.h_setof(event jsonb) RETURNS SETOF void
LANGUAGE sql AS $$ SELECT $$;
CREATE PROCEDURE public.h_proc(event jsonb)
LANGUAGE sql AS $$ SELECT $$;

-- registration, and registering twice
SELECT messaging.register_handler('user.created', 'public.h_good(jsonb)');
SELECT messaging.register_handler('user.created', 'public.h_good(jsonb)');
SELECT messaging.register_handler('role.*', 'public.h_good(jsonb)');
SELECT pattern, handler, owner = current_user::regrole AS owned_by_me
  FROM messaging.handlers ORDER BY id;

-- wrong signatures: 42P13 with a detail naming what is wrong
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT messaging.register_handler('user.created', 'public.h_returns_int(jsonb)');
SELECT messaging.register_handler('user.created', 'public.h_text_arg(text)');
SELECT messaging.register_handler('user.created', 'public.h_two_args(jsonb, int)');
SELECT messaging.register_handler('user.created', 'public.h_setof(jsonb)');
SELECT messaging.register_handler('user.created', 'public.h_proc(jsonb)');
\set VERBOSITY terse
\set SHOW_CONTEXT errors
SELECT pg_temp.try($$SELECT messaging.register_handler('user.created', 'public.h_text_arg(text)')$$);
SELECT pg_temp.try($$SELECT messaging.register_handler('user.created', 'public.no_such(jsonb)')$$);

-- invalid patterns: 22023
SELECT left(pg_temp.try(format('SELECT messaging.register_handler(%L, %L)', p,
							   'public.h_good(jsonb)')), 50) AS result, left(p, 16) AS p
FROM (VALUES (''), ('user.'), ('.user'), ('user..created'), ('User.Created'),
			 ('user.cre*'), ('user.#x'), ('user created'), (repeat('a', 256))) AS t(p);
SELECT pg_temp.try($$SELECT messaging.register_handler(NULL, 'public.h_good(jsonb)')$$);

-- a direct insert is checked the same way, and cannot pick its owner
SELECT pg_temp.try($$INSERT INTO messaging.handlers (pattern, handler, owner)
	VALUES ('x.y', 'public.h_text_arg(text)', 'postgres')$$);

-- a role may only register functions it may execute, and owns the row
CREATE ROLE consumer_test_admin IN ROLE messaging_admin;
CREATE FUNCTION public.h_private(event jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
REVOKE EXECUTE ON FUNCTION public.h_private(jsonb) FROM PUBLIC;
SET ROLE consumer_test_admin;
SELECT pg_temp.try($$SELECT messaging.register_handler('org.#', 'public.h_private(jsonb)')$$);
SELECT messaging.register_handler('org.#', 'public.h_good(jsonb)');
SELECT pg_temp.try($$INSERT INTO messaging.handlers (pattern, handler, owner)
	VALUES ('org.created', 'public.h_good(jsonb)', 'postgres')$$);
RESET ROLE;
SELECT pattern, owner FROM messaging.handlers WHERE pattern LIKE 'org%' ORDER BY id;

-- roles outside messaging_admin may not register
CREATE ROLE consumer_test_other;
SET ROLE consumer_test_other;
SELECT pg_temp.try($$SELECT messaging.register_handler('org.#', 'public.h_good(jsonb)')$$);
SELECT pg_temp.try($$SELECT count(*) FROM messaging.handlers$$);
RESET ROLE;

-- unregistering
SELECT messaging.unregister_handler('role.*', 'public.h_good(jsonb)');
SELECT messaging.unregister_handler('role.*', 'public.h_good(jsonb)');
SELECT pattern FROM messaging.handlers ORDER BY id;

-- replaying dead letters
INSERT INTO messaging.dead_letters
	(message_id, event_id, event_type, source_app, exchange, routing_key,
	 headers, properties, body, reason, error, attempts, first_seen_at)
VALUES ('m-1', 'b3c1f7de-8f6f-4a57-9a53-0d2a0e7c1e01', 'user.created', 'crm',
		'inter-app-events', 'wrapper.user.created', '{"x-messaging-attempt": 5}',
		'{"content_type": "application/json"}',
		convert_to('{"id":"b3c1f7de-8f6f-4a57-9a53-0d2a0e7c1e01","type":"user.created"}', 'UTF8'),
		'failed', 'h_good(jsonb) failed: boom', 6, now() - interval '1 minute'),
	   (NULL, NULL, NULL, NULL, '', 'wrapper-events', '{}', '{}', '\xc328'::bytea,
		'invalid', 'message body is not valid UTF-8', 1, now());
SELECT reason, replay_requested_at IS NOT NULL AS requested
  FROM messaging.dead_letters ORDER BY id;
SELECT messaging.replay_dead_letter(min(id)) FROM messaging.dead_letters;
SELECT messaging.replay_dead_letter(min(id)) FROM messaging.dead_letters;
SELECT messaging.replay_dead_letter(-1);
SELECT reason, replay_requested_at IS NOT NULL AS requested
  FROM messaging.dead_letters ORDER BY id;
SET ROLE consumer_test_other;
SELECT pg_temp.try(format('SELECT messaging.replay_dead_letter(%s)', min(id)))
  FROM messaging.dead_letters;
RESET ROLE;
SET ROLE consumer_test_admin;
SELECT messaging.replay_dead_letter(max(id)) FROM messaging.dead_letters;
RESET ROLE;

-- reason is constrained
SELECT pg_temp.try($$INSERT INTO messaging.dead_letters
	(exchange, routing_key, body, reason, error, attempts, first_seen_at)
	VALUES ('', 'q', '\x00', 'other', 'e', 1, now())$$);

-- the developer setting stays out of SHOW ALL
SELECT count(*) FROM pg_settings WHERE name = 'messaging.debug_exit_before_ack';
SHOW messaging.debug_exit_before_ack;

-- clean up
DELETE FROM messaging.dead_letters;
DELETE FROM messaging.handlers;
DROP FUNCTION public.h_good(jsonb), public.h_returns_int(jsonb),
	public.h_text_arg(text), public.h_two_args(jsonb, int),
	public.h_setof(jsonb), public.h_private(jsonb);
DROP PROCEDURE public.h_proc(jsonb);
DROP ROLE consumer_test_admin, consumer_test_other;
