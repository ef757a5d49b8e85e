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
 * both for UPDATE); AFTER TRUNCATE FOR EACH STATEMENT emits
 * <entity>.truncated.
 */
CREATE FUNCTION messaging.emit_event()
RETURNS trigger
AS 'MODULE_PATHNAME', 'messaging_emit_event'
LANGUAGE C;

COMMENT ON FUNCTION messaging.emit_event() IS
	'trigger function: queue an event for each row a statement changes';

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
