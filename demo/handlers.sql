-- Handlers of the demo's "wrapper" application (run by demo/run.sh after
-- CREATE EXTENSION): local tables that follow what the crm and billing
-- applications tell it, kept in step by SQL handlers the consumer worker
-- runs for each incoming event.

\set ON_ERROR_STOP on

CREATE ROLE app_owner NOLOGIN IN ROLE messaging_admin;
CREATE SCHEMA app AUTHORIZATION app_owner;
SET ROLE app_owner;

CREATE TABLE app.users (
	id			text PRIMARY KEY,
	tenant		text,
	email		text,
	active		boolean NOT NULL DEFAULT true
);
CREATE TABLE app.orgs (id text PRIMARY KEY, tenant text, name text);
CREATE TABLE app.roles (id text PRIMARY KEY, tenant text, name text);
CREATE TABLE app.credits (
	account		text,
	tenant		text,
	amount		numeric,
	granted_by	text
);

CREATE FUNCTION app.on_user_created(event jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	-- this application's own broadcasts come back to it: skip them
	IF event->>'source' = current_setting('messaging.app_name') THEN
		RETURN;
	END IF;
	INSERT INTO app.users (id, tenant, email)
	VALUES (event->'data'->>'user_id', event->>'tenantid',
			event->'data'->>'email')
	ON CONFLICT (id) DO UPDATE SET email = excluded.email, active = true;
END
$$;

CREATE FUNCTION app.on_user_deactivated(event jsonb) RETURNS void
LANGUAGE sql AS $$
	UPDATE app.users SET active = false WHERE id = event->'data'->>'user_id'
$$;

CREATE FUNCTION app.on_credit_allocated(event jsonb) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO app.credits
	VALUES (event->'data'->>'account_id', event->>'tenantid',
			(event->'data'->'amount'->>'value')::numeric, event->>'source')
$$;

CREATE FUNCTION app.on_org_created(event jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	IF event->>'source' = current_setting('messaging.app_name') THEN
		RETURN;
	END IF;
	INSERT INTO app.orgs
	VALUES (event->'data'->>'org_id', event->>'tenantid', event->'data'->>'name')
	ON CONFLICT (id) DO NOTHING;
END
$$;

CREATE FUNCTION app.on_role(event jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	CASE event->>'type'
	WHEN 'role.created' THEN
		INSERT INTO app.roles
		VALUES (event->'data'->>'role_id', event->>'tenantid', event->'data'->>'name');
	WHEN 'role.updated' THEN
		UPDATE app.roles SET name = event->'data'->>'name'
		 WHERE id = event->'data'->>'role_id';
	WHEN 'role.deleted' THEN
		DELETE FROM app.roles WHERE id = event->'data'->>'role_id';
	ELSE
		NULL;
	END CASE;
END
$$;

SELECT messaging.register_handler('user.created', 'app.on_user_created(jsonb)');
SELECT messaging.register_handler('user.deactivated', 'app.on_user_deactivated(jsonb)');
SELECT messaging.register_handler('credit.allocated', 'app.on_credit_allocated(jsonb)');
SELECT messaging.register_handler('org.created', 'app.on_org_created(jsonb)');
SELECT messaging.register_handler('role.*', 'app.on_role(jsonb)');
RESET ROLE;
