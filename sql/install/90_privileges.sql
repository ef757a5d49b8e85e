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
 * rights, which is why readers may execute _connection_status() and
 * admins _staged_events() (for pending_events), the only internal
 * functions anybody may call.  The other internal functions
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
				('replay_dead_letter', 'messaging_admin'),
				('_staged_events', 'messaging_admin'))
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
	messaging.event_counters, messaging.pending_events
	TO messaging_admin;
