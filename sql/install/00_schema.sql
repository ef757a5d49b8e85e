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
