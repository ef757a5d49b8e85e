/*-------------------------------------------------------------------------
 *
 * trigger.c
 *	  Row-change events: the trigger function messaging.emit_event().
 *
 * One trigger function serves two forms:
 *
 *	- FOR EACH ROW: each changed row becomes one event, written with the
 *	  direct outbox insert (outbox.c);
 *	- FOR EACH STATEMENT with transition tables: the rows of the transition
 *	  tables are read here (an UPDATE's old and new rows side by side, or
 *	  paired by primary key in the rare case that the two tables differ in
 *	  length) and their events staged for the relay in a few packed rows
 *	  (messaging.outbox_staged, staging.c), so that a bulk change pays little
 *	  more than its own rows.
 *
 * A TRUNCATE statement trigger emits one "<entity>.truncated" event.
 *
 * Trigger arguments:
 *
 *	entity			required; the events are <entity>.created, .updated,
 *					.deleted and .truncated
 *	target_app		optional; empty means broadcast
 *	tenant_column	optional; empty means no tenant
 *	options			any number of "exclude=col,col" (columns left out of
 *					the payload) and "watch=col,col" (an update is an event
 *					only if one of these columns changed)
 *
 * The payload ("data" of the envelope) is to_jsonb() of the row, minus the
 * excluded columns: the new row for an insert, the old row for a delete,
 * and for an update {"new": <new row>, "old": <old values of the changed
 * columns>, "changed": [<changed column names, in column order>]}.  A column
 * has changed when its JSON value differs (jsonb equality), so both forms
 * agree; an update that changes no column emits nothing.  Rows are
 * rendered here exactly as the server's to_jsonb() renders them: text,
 * integer, numeric, boolean and date/time columns directly, any other type
 * through to_jsonb() of the single value.  Both forms share the renderer
 * and the update comparison.
 *
 * The parsed arguments of each trigger are cached in a backend-local hash
 * keyed by trigger OID.  A relcache invalidation of the trigger's table
 * (ALTER TABLE, CREATE OR REPLACE TRIGGER, DROP TRIGGER) marks its entries
 * stale; a stale entry is parsed again at its next firing, and the memory
 * of the old one is released at the end of the transaction, since the
 * invalidation may arrive while a firing still uses it.  Bad arguments are
 * therefore reported at the first firing after every change, naming the
 * trigger and the argument; messaging.create_event_trigger() runs the same
 * checks before creating anything, then creates the triggers with the
 * caller's rights.
 *
 * Neither form runs SQL or needs a privilege on the extension's tables:
 * rows are written directly (rowstore.c), and nothing from the writer's
 * search path is called.
 *
 * messaging.suppress_trigger_events() lets a session (typically an event
 * handler applying changes that came from another application) switch the
 * triggers off until the end of its transaction.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/trigger.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/stratnum.h"
#include "access/tupdesc.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "messaging.h"
#include "outbox.h"
#include "shmem.h"
#include "staging.h"
#include "uuid7.h"
#include "validate.h"

PG_FUNCTION_INFO_V1(messaging_emit_event);
PG_FUNCTION_INFO_V1(messaging_event_tenant_id);
PG_FUNCTION_INFO_V1(messaging_event_payload);
PG_FUNCTION_INFO_V1(messaging_suppress_trigger_events);
PG_FUNCTION_INFO_V1(messaging_create_event_trigger);
PG_FUNCTION_INFO_V1(messaging_drop_event_trigger);

/*
 * The triggers create_event_trigger() makes: one per event in the
 * statement form (transition tables allow one event per trigger), one for
 * all three in the row form, and the TRUNCATE trigger in both.
 */
#define TRG_NAME_INSERT		"messaging_events_insert"
#define TRG_NAME_UPDATE		"messaging_events_update"
#define TRG_NAME_DELETE		"messaging_events_delete"
#define TRG_NAME_ROW		"messaging_events_row"
#define TRG_NAME_TRUNCATE	"messaging_events_truncate"

/* Longest suffix appended to the entity: ".truncated". */
#define TRG_LONGEST_SUFFIX	10

/*
 * How a column's values become JSON.  Types to_jsonb() renders in a way
 * that is simple to reproduce are rendered here directly; any other type
 * (domains, arrays, composites, json, jsonb, floats, ...) goes through the
 * server's to_jsonb() for that one value.
 */
typedef enum TrgColKind
{
	TRG_COL_TEXT,				/* text, varchar, bpchar: the string */
	TRG_COL_INT,				/* int2, int4, int8: a number */
	TRG_COL_NUMERIC,			/* a number; NaN and infinities as strings */
	TRG_COL_BOOL,
	TRG_COL_DATETIME,			/* date, timestamp, timestamptz: ISO 8601 */
	TRG_COL_OTHER				/* to_jsonb() of the value */
} TrgColKind;

/*
 * What one trigger's arguments say, resolved against its table.  Lives in
 * its own memory context under CacheMemoryContext.
 */
typedef struct TrgArgs
{
	MemoryContext cxt;
	Oid			tgoid;
	Oid			relid;
	char	   *trigger_name;
	char	   *table_name;		/* for messages */
	char	   *type_created;
	char	   *type_updated;
	char	   *type_deleted;
	char	   *type_truncated;
	char	   *target_app;		/* NULL: broadcast */
	AttrNumber	tenant_attnum;	/* InvalidAttrNumber: no tenant */
	char	   *tenant_column;
	FmgrInfo	tenant_out;		/* output function of the tenant column */

	/* The columns rendered into payloads: not dropped, not excluded. */
	int			nkept;
	AttrNumber *kept_attnums;
	char	  **kept_names;
	bool	   *kept_watched;
	int			nwatched;
	int			nexcluded;
	char	  **excluded_names;
	int		   *kept_name_lens;
	int		   *kept_order;		/* kept columns in jsonb key order */
	TrgColKind *kept_kinds;		/* how each is rendered */
	FmgrInfo   *kept_to_jsonb;	/* to_jsonb(<column type>), TRG_COL_OTHER */
	TupleDesc	kept_desc;		/* the kept columns' attributes */
} TrgArgs;

typedef struct TrgCacheEntry
{
	Oid			tgoid;			/* hash key */
	bool		valid;
	TrgArgs    *args;
} TrgCacheEntry;

static HTAB *trg_cache = NULL;
static List *trg_retired = NIL;	/* TrgArgs to free at transaction end */
static bool trg_suppressed = false;

/* ----------------------------------------------------------------
 * Cache maintenance
 * ----------------------------------------------------------------
 */

static void
trg_free_args(TrgArgs *args)
{
	MemoryContextDelete(args->cxt);
}

static void
trg_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	TrgCacheEntry *entry;

	hash_seq_init(&status, trg_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (!OidIsValid(relid) ||
			(entry->args != NULL && entry->args->relid == relid))
			entry->valid = false;
	}
}

static void
trg_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			trg_suppressed = false;
			foreach(lc, trg_retired)
				trg_free_args((TrgArgs *) lfirst(lc));
			list_free(trg_retired);
			trg_retired = NIL;
			break;
		default:
			break;
	}
}

static void
trg_cache_init(void)
{
	HASHCTL		ctl;

	if (trg_cache != NULL)
		return;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(TrgCacheEntry);
	ctl.hcxt = CacheMemoryContext;
	trg_cache = hash_create("messaging event triggers", 64, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	CacheRegisterRelcacheCallback(trg_relcache_callback, (Datum) 0);
	RegisterXactCallback(trg_xact_callback, NULL);
}

/* ----------------------------------------------------------------
 * Argument parsing
 * ----------------------------------------------------------------
 */

/* Column number of a live column called name, or InvalidAttrNumber. */
static AttrNumber
trg_find_column(TupleDesc desc, const char *name)
{
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	return InvalidAttrNumber;
}

/*
 * Marks the columns listed in an option's value ("a, b,c") in flags,
 * indexed by column number - 1; returns how many were listed.
 */
static int
trg_parse_column_list(const char *option, const char *list, TupleDesc desc,
					  bool *flags, const char *tgname, const char *relname)
{
	char	   *copy = pstrdup(list);
	char	   *p = copy;
	int			n = 0;

	for (;;)
	{
		char	   *comma = strchr(p, ',');
		char	   *end;
		AttrNumber	attnum;

		if (comma)
			*comma = '\0';
		while (*p == ' ')
			p++;
		end = p + strlen(p);
		while (end > p && end[-1] == ' ')
			*--end = '\0';

		if (*p == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("empty column name in option \"%s\" of trigger \"%s\" on table \"%s\"",
							option, tgname, relname),
					 errhint("List column names separated by commas, for example "
							 "\"%s=password_hash,token\".",
							 option)));

		attnum = trg_find_column(desc, p);
		if (attnum == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" named in option \"%s\" of trigger \"%s\" does not exist "
							"in table \"%s\"",
							p, option, tgname, relname)));
		if (flags[attnum - 1])
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("column \"%s\" is listed twice in option \"%s\" of trigger \"%s\" on "
							"table \"%s\"",
							p, option, tgname, relname)));
		flags[attnum - 1] = true;
		n++;

		if (comma == NULL)
			break;
		p = comma + 1;
	}
	pfree(copy);
	return n;
}

/* How values of a column of the given type are rendered. */
static TrgColKind
trg_column_kind(Oid type)
{
	switch (type)
	{
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
			return TRG_COL_TEXT;
		case INT2OID:
		case INT4OID:
		case INT8OID:
			return TRG_COL_INT;
		case NUMERICOID:
			return TRG_COL_NUMERIC;
		case BOOLOID:
			return TRG_COL_BOOL;
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return TRG_COL_DATETIME;
		default:
			return TRG_COL_OTHER;
	}
}

/*
 * Orders indexes into names[] as jsonb orders object keys: shorter keys
 * first, keys of equal length by their bytes.
 */
static int
trg_key_order_cmp(const void *x, const void *y, void *arg)
{
	char	  **names = (char **) arg;
	const char *kx = names[*(const int *) x];
	const char *ky = names[*(const int *) y];
	size_t		lx = strlen(kx);
	size_t		ly = strlen(ky);

	if (lx != ly)
		return lx < ly ? -1 : 1;
	return memcmp(kx, ky, lx);
}

/*
 * Parses a trigger's arguments against its table.  Raises an ERROR naming
 * the trigger and the argument for anything wrong; otherwise returns the
 * result in a new memory context under parent.
 */
static TrgArgs *
trg_parse_args(Relation rel, Oid tgoid, const char *tgname,
			   int nargs, char **targs, MemoryContext parent)
{
	TupleDesc	desc = RelationGetDescr(rel);
	const char *relname = RelationGetRelationName(rel);
	MemoryContext cxt;
	MemoryContext old;
	TrgArgs    *a;
	bool	   *excluded;
	bool	   *watched;
	const char *entity;
	char	   *probe;
	int			i;
	int			k;
	bool		seen_exclude = false;
	bool		seen_watch = false;

	/* entity */
	if (nargs < 1 || targs[0][0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" on table \"%s\" has no entity name",
						tgname, relname),
				 errhint("Pass the entity as the first argument, as in EXECUTE FUNCTION "
						 "messaging.emit_event('account').")));
	entity = targs[0];
	probe = psprintf("%s.created", entity);
	if (strlen(entity) + TRG_LONGEST_SUFFIX > MESSAGING_MAX_EVENT_TYPE)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("entity name of trigger \"%s\" on table \"%s\" is too long",
						tgname, relname),
				 errdetail("An entity name has at most %d bytes.",
						   MESSAGING_MAX_EVENT_TYPE - TRG_LONGEST_SUFFIX)));
	if (!messaging_is_event_type(probe))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid entity name \"%s\" in trigger \"%s\" on table \"%s\"",
						entity, tgname, relname),
				 errdetail("An entity name is one or more dot-separated words of lower-case "
						   "letters, digits and underscores, each starting with a letter."),
				 errhint("For example \"account\" or \"billing.invoice\".")));

	/* target application */
	if (nargs >= 2 && targs[1][0] != '\0')
	{
		const char *problem = messaging_app_name_problem(targs[1]);

		if (problem != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid target application \"%s\" in trigger \"%s\" on table \"%s\"",
							targs[1], tgname, relname),
					 errdetail("%s", problem),
					 errhint("Leave the argument empty to broadcast the events.")));
	}

	cxt = AllocSetContextCreate(parent, "messaging event trigger",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);

	a = palloc0(sizeof(TrgArgs));
	a->cxt = cxt;
	a->tgoid = tgoid;
	a->relid = RelationGetRelid(rel);
	a->trigger_name = pstrdup(tgname);
	a->table_name = pstrdup(relname);
	a->type_created = psprintf("%s.created", entity);
	a->type_updated = psprintf("%s.updated", entity);
	a->type_deleted = psprintf("%s.deleted", entity);
	a->type_truncated = psprintf("%s.truncated", entity);
	a->target_app = (nargs >= 2 && targs[1][0] != '\0') ?
		pstrdup(targs[1]) : NULL;

	/* tenant column */
	if (nargs >= 3 && targs[2][0] != '\0')
	{
		Oid			typoutput;
		bool		isvarlena;

		a->tenant_column = pstrdup(targs[2]);
		a->tenant_attnum = trg_find_column(desc, targs[2]);
		if (a->tenant_attnum == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("tenant column \"%s\" of trigger \"%s\" does not exist in table \"%s\"",
							targs[2], tgname, relname),
					 errhint("The third argument names the column holding the tenant id; leave it "
							 "empty for events without a tenant.")));
		getTypeOutputInfo(TupleDescAttr(desc, a->tenant_attnum - 1)->atttypid,
						  &typoutput, &isvarlena);
		fmgr_info_cxt(typoutput, &a->tenant_out, cxt);
	}

	/* options */
	excluded = palloc0(sizeof(bool) * Max(desc->natts, 1));
	watched = palloc0(sizeof(bool) * Max(desc->natts, 1));
	for (i = 3; i < nargs; i++)
	{
		const char *eq = strchr(targs[i], '=');
		char	   *key;

		if (eq == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid option \"%s\" in trigger \"%s\" on table \"%s\"",
							targs[i], tgname, relname),
					 errhint("Options are \"exclude=<columns>\" and \"watch=<columns>\", with "
							 "column names separated by commas.")));
		key = pnstrdup(targs[i], eq - targs[i]);
		if (strcmp(key, "exclude") == 0)
		{
			if (seen_exclude)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"exclude\" is given twice in trigger \"%s\" on table "
								"\"%s\"",
								tgname, relname),
						 errhint("List all excluded columns in one option.")));
			seen_exclude = true;
			a->nexcluded = trg_parse_column_list("exclude", eq + 1, desc,
												 excluded, tgname, relname);
		}
		else if (strcmp(key, "watch") == 0)
		{
			if (seen_watch)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"watch\" is given twice in trigger \"%s\" on table \"%s\"",
								tgname, relname),
						 errhint("List all watched columns in one option.")));
			seen_watch = true;
			a->nwatched = trg_parse_column_list("watch", eq + 1, desc,
												watched, tgname, relname);
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unrecognized option \"%s\" in trigger \"%s\" on table \"%s\"",
							key, tgname, relname),
					 errhint("Options are \"exclude=<columns>\" and \"watch=<columns>\", with "
							 "column names separated by commas.")));
	}

	/* the kept columns */
	a->kept_attnums = palloc(sizeof(AttrNumber) * Max(desc->natts, 1));
	a->kept_names = palloc(sizeof(char *) * Max(desc->natts, 1));
	a->kept_watched = palloc(sizeof(bool) * Max(desc->natts, 1));
	a->excluded_names = palloc(sizeof(char *) * Max(desc->natts, 1));
	for (i = 0, k = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		if (excluded[i])
		{
			if (watched[i])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("column \"%s\" is both excluded and watched in trigger \"%s\" on "
								"table \"%s\"",
								NameStr(att->attname), tgname, relname),
						 errdetail("Excluded columns never appear in events, so their changes "
								   "cannot be watched.")));
			continue;
		}
		a->kept_attnums[k] = att->attnum;
		a->kept_names[k] = pstrdup(NameStr(att->attname));
		a->kept_watched[k] = watched[i];
		k++;
	}
	a->nkept = k;
	for (i = 0, k = 0; i < desc->natts; i++)
		if (excluded[i])
			a->excluded_names[k++] = pstrdup(NameStr(TupleDescAttr(desc, i)->attname));

	a->kept_desc = CreateTemplateTupleDesc(a->nkept);
	for (i = 0; i < a->nkept; i++)
		TupleDescCopyEntry(a->kept_desc, i + 1, desc, a->kept_attnums[i]);

	a->kept_name_lens = palloc(sizeof(int) * Max(a->nkept, 1));
	a->kept_kinds = palloc(sizeof(TrgColKind) * Max(a->nkept, 1));
	a->kept_to_jsonb = palloc0(sizeof(FmgrInfo) * Max(a->nkept, 1));
	a->kept_order = palloc(sizeof(int) * Max(a->nkept, 1));
	for (i = 0; i < a->nkept; i++)
		a->kept_order[i] = i;
	qsort_arg(a->kept_order, a->nkept, sizeof(int), trg_key_order_cmp,
			  a->kept_names);
	for (i = 0; i < a->nkept; i++)
	{
		Oid			type = TupleDescAttr(a->kept_desc, i)->atttypid;

		a->kept_name_lens[i] = strlen(a->kept_names[i]);
		a->kept_kinds[i] = trg_column_kind(type);
		if (a->kept_kinds[i] != TRG_COL_OTHER)
			continue;
		fmgr_info_cxt(F_TO_JSONB, &a->kept_to_jsonb[i], cxt);
		a->kept_to_jsonb[i].fn_expr = (Node *)
			makeFuncExpr(F_TO_JSONB, JSONBOID,
						 list_make1(makeNullConst(type, -1, InvalidOid)),
						 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	}

	MemoryContextSwitchTo(old);
	return a;
}

/* The cached arguments of the trigger being fired, parsed if need be. */
static TrgArgs *
trg_lookup(TriggerData *td)
{
	Trigger    *tg = td->tg_trigger;
	TrgCacheEntry *entry;
	bool		found;

	trg_cache_init();
	entry = hash_search(trg_cache, &tg->tgoid, HASH_ENTER, &found);
	if (!found)
	{
		entry->valid = false;
		entry->args = NULL;
	}
	if (entry->valid)
		return entry->args;

	if (entry->args != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		trg_retired = lappend(trg_retired, entry->args);
		MemoryContextSwitchTo(old);
		entry->args = NULL;
	}
	entry->args = trg_parse_args(td->tg_relation, tg->tgoid, tg->tgname,
								 tg->tgnargs, tg->tgargs, CacheMemoryContext);
	entry->valid = true;
	return entry->args;
}

/* ----------------------------------------------------------------
 * Rendering
 * ----------------------------------------------------------------
 */

static void
trg_error_callback(void *arg)
{
	TrgArgs    *a = (TrgArgs *) arg;

	errcontext("row-change events of trigger \"%s\" on table \"%s\"",
			   a->trigger_name, a->table_name);
}

/* Sets v to the string s of length len. */
static inline void
trg_string_value(JsonbValue *v, char *s, int len)
{
	v->type = jbvString;
	v->val.string.val = s;
	v->val.string.len = len;
}

/*
 * One column value as a JSON value, exactly as to_jsonb() of the row would
 * render it.
 */
static void
trg_column_value(TrgArgs *a, int i, Datum value, JsonbValue *v)
{
	switch (a->kept_kinds[i])
	{
		case TRG_COL_TEXT:
			{
				text	   *t = DatumGetTextPP(value);

				trg_string_value(v, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				break;
			}
		case TRG_COL_INT:
			{
				Oid			type = TupleDescAttr(a->kept_desc, i)->atttypid;
				int64		n = type == INT2OID ? DatumGetInt16(value) :
				type == INT4OID ? DatumGetInt32(value) : DatumGetInt64(value);

				v->type = jbvNumeric;
				v->val.numeric = int64_to_numeric(n);
				break;
			}
		case TRG_COL_NUMERIC:
			{
				Numeric		n = DatumGetNumeric(value);

				if (numeric_is_nan(n) || numeric_is_inf(n))
				{
					char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
																		NumericGetDatum(n)));

					trg_string_value(v, s, strlen(s));
				}
				else
				{
					v->type = jbvNumeric;
					v->val.numeric = n;
				}
				break;
			}
		case TRG_COL_BOOL:
			v->type = jbvBool;
			v->val.boolean = DatumGetBool(value);
			break;
		case TRG_COL_DATETIME:
			{
				char	   *s = JsonEncodeDateTime(NULL, value,
												   TupleDescAttr(a->kept_desc, i)->atttypid,
												   NULL);

				trg_string_value(v, s, strlen(s));
				break;
			}
		case TRG_COL_OTHER:
			{
				Jsonb	   *j = DatumGetJsonbP(FunctionCall1(&a->kept_to_jsonb[i],
															 value));

				if (!JsonbExtractScalar(&j->root, v))
				{
					v->type = jbvBinary;
					v->val.binary.data = &j->root;
					v->val.binary.len = VARSIZE(j) - VARHDRSZ;
				}
				break;
			}
	}
}

/*
 * The kept columns of the row in slot as a jsonb object: what to_jsonb()
 * of a record of those columns returns, built without the record.
 *
 * The pairs are laid out in jsonb's key order (kept_order), so a row of
 * scalars goes straight to the binary form, without the parse state that
 * collects, sorts and deduplicates the keys; a value that is a container
 * itself (an array, a composite, a json or jsonb column) takes that way,
 * which unpacks it.
 */
static Jsonb *
trg_row_jsonb(TrgArgs *a, TupleTableSlot *slot)
{
	JsonbPair  *pairs = palloc(sizeof(JsonbPair) * Max(a->nkept, 1));
	bool		nested = false;
	JsonbValue	obj;
	JsonbParseState *st = NULL;
	int			j;

	slot_getallattrs(slot);
	for (j = 0; j < a->nkept; j++)
	{
		int			i = a->kept_order[j];
		int			att = a->kept_attnums[i] - 1;

		trg_string_value(&pairs[j].key, a->kept_names[i], a->kept_name_lens[i]);
		pairs[j].order = j;
		if (slot->tts_isnull[att])
			pairs[j].value.type = jbvNull;
		else
			trg_column_value(a, i, slot->tts_values[att], &pairs[j].value);
		nested |= pairs[j].value.type == jbvBinary;
	}
	if (!nested)
	{
		obj.type = jbvObject;
		obj.val.object.nPairs = a->nkept;
		obj.val.object.pairs = pairs;
		return JsonbValueToJsonb(&obj);
	}

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (j = 0; j < a->nkept; j++)
	{
		pushJsonbValue(&st, WJB_KEY, &pairs[j].key);
		pushJsonbValue(&st, WJB_VALUE, &pairs[j].value);
	}
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

/*
 * The statement form's fast path: the kept columns of the row in slot,
 * written straight into buf in jsonb's binary form (the same bytes
 * trg_row_jsonb() produces), with no JsonbValue in between and nothing
 * allocated per row but what the values themselves need.  buf is reset
 * first and, on success, holds a Jsonb datum with its varlena header.
 * Returns false, with buf's content undefined, for a row with a value
 * that is a container itself (an array, a composite, a json or jsonb
 * column), which takes trg_row_jsonb() instead.
 *
 * The layout is that of an object container: the header, one JEntry per
 * key and then per value (keys in jsonb's key order, kept_order), then
 * the keys' bytes and the values' bytes.  A JEntry holds the length of
 * its item, or for every JB_OFFSET_STRIDE'th item its end offset; a
 * numeric is aligned to 4 bytes from the start of the datum, its padding
 * counted in its length.
 */
static bool
trg_row_binary(TrgArgs *a, TupleTableSlot *slot, StringInfo buf)
{
	int			n = a->nkept;
	uint32		header = (uint32) n | JB_FOBJECT;
	int			entries;
	uint32		total = 0;
	int			j;

	slot_getallattrs(slot);
	resetStringInfo(buf);
	messaging_append_zeros(buf, VARHDRSZ);
	appendBinaryStringInfoNT(buf, (char *) &header, sizeof(header));
	entries = buf->len;
	messaging_append_zeros(buf, sizeof(JEntry) * 2 * n);

#define TRG_PUT_ENTRY(k, meta, len) \
	do { \
		JEntry		e_ = (meta); \
		total += (len); \
		if ((k) % JB_OFFSET_STRIDE == 0) \
			e_ = (e_ & JENTRY_TYPEMASK) | total | JENTRY_HAS_OFF; \
		memcpy(buf->data + entries + sizeof(JEntry) * (k), &e_, sizeof(JEntry)); \
	} while (0)

	for (j = 0; j < n; j++)
	{
		int			i = a->kept_order[j];

		appendBinaryStringInfoNT(buf, a->kept_names[i], a->kept_name_lens[i]);
		TRG_PUT_ENTRY(j, (uint32) a->kept_name_lens[i], (uint32) a->kept_name_lens[i]);
	}

	for (j = 0; j < n; j++)
	{
		int			i = a->kept_order[j];
		int			att = a->kept_attnums[i] - 1;
		JsonbValue	v;
		int			start = buf->len;

		if (slot->tts_isnull[att])
			v.type = jbvNull;
		else if (a->kept_kinds[i] == TRG_COL_OTHER)
		{
			Jsonb	   *jb = DatumGetJsonbP(FunctionCall1(&a->kept_to_jsonb[i],
														  slot->tts_values[att]));

			if (!JsonbExtractScalar(&jb->root, &v))
				return false;
		}
		else
			trg_column_value(a, i, slot->tts_values[att], &v);

		switch (v.type)
		{
			case jbvNull:
				TRG_PUT_ENTRY(n + j, JENTRY_ISNULL, 0);
				break;
			case jbvBool:
				TRG_PUT_ENTRY(n + j, v.val.boolean ? JENTRY_ISBOOL_TRUE :
							  JENTRY_ISBOOL_FALSE, 0);
				break;
			case jbvString:
				appendBinaryStringInfoNT(buf, v.val.string.val, v.val.string.len);
				TRG_PUT_ENTRY(n + j, (uint32) v.val.string.len,
							  (uint32) v.val.string.len);
				break;
			case jbvNumeric:
				/* padding to 4, then the numeric with its 4-byte header */
				messaging_append_zeros(buf, INTALIGN(buf->len) - buf->len);
				appendBinaryStringInfoNT(buf, (char *) v.val.numeric,
										 VARSIZE(v.val.numeric));
				TRG_PUT_ENTRY(n + j, JENTRY_ISNUMERIC | (uint32) (buf->len - start),
							  (uint32) (buf->len - start));
				break;
			default:
				elog(ERROR, "unexpected jsonb value type %d", (int) v.type);
		}
		if (total > JENTRY_OFFLENMASK)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("total size of jsonb object elements exceeds the maximum of %u bytes",
							JENTRY_OFFLENMASK)));
	}
#undef TRG_PUT_ENTRY

	SET_VARSIZE(buf->data, buf->len);
	return true;
}

/* Tenant id text of a value of the given type, checked. */
static char *
trg_tenant_text(FmgrInfo *out, Datum value)
{
	char	   *s = OutputFunctionCall(out, value);

	messaging_check_tenant_id(s, "tenant_id");
	return s;
}

static char *
trg_row_tenant(TrgArgs *a, TupleTableSlot *slot)
{
	bool		isnull;
	Datum		value;

	if (a->tenant_attnum == InvalidAttrNumber)
		return NULL;
	value = slot_getattr(slot, a->tenant_attnum, &isnull);
	if (isnull)
		return NULL;
	return trg_tenant_text(&a->tenant_out, value);
}

/*
 * Whether two values taken from jsonb containers are equal as jsonb's "="
 * operator sees it.
 */
static bool
trg_jsonb_values_equal(JsonbValue *x, JsonbValue *y)
{
	if (x->type != y->type)
		return false;
	switch (x->type)
	{
		case jbvNull:
			return true;
		case jbvBool:
			return x->val.boolean == y->val.boolean;
		case jbvString:
			return x->val.string.len == y->val.string.len &&
				memcmp(x->val.string.val, y->val.string.val,
					   x->val.string.len) == 0;
		case jbvNumeric:
			return DatumGetBool(DirectFunctionCall2(numeric_eq,
													NumericGetDatum(x->val.numeric),
													NumericGetDatum(y->val.numeric)));
		case jbvBinary:
			return compareJsonbContainers(x->val.binary.data,
										  y->val.binary.data) == 0;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) x->type);
	}
	return false;
}

static void
trg_push_key(JsonbParseState **st, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(st, WJB_KEY, &k);
}

/*
 * The payload of a row update, or NULL when the update is no event: no
 * kept column changed, or no watched one.
 */
static Jsonb *
trg_update_payload(TrgArgs *a, TupleTableSlot *oldslot,
				   TupleTableSlot *newslot)
{
	bool	   *maybe = palloc(sizeof(bool) * Max(a->nkept, 1));
	bool	   *changed = palloc(sizeof(bool) * Max(a->nkept, 1));
	bool		any = false;
	bool		watched = false;
	Jsonb	   *jn;
	Jsonb	   *jo;
	JsonbParseState *st = NULL;
	JsonbValue	v;
	JsonbValue *res;
	int			i;

	slot_getallattrs(oldslot);
	slot_getallattrs(newslot);

	/* Identical bytes render identically: only the others need a look. */
	for (i = 0; i < a->nkept; i++)
	{
		int			att = a->kept_attnums[i] - 1;
		Form_pg_attribute fa = TupleDescAttr(a->kept_desc, i);
		bool		on = oldslot->tts_isnull[att];
		bool		nn = newslot->tts_isnull[att];

		if (on && nn)
			maybe[i] = false;
		else if (on != nn)
			maybe[i] = true;
		else
			maybe[i] = !datum_image_eq(oldslot->tts_values[att],
									   newslot->tts_values[att],
									   fa->attbyval, fa->attlen);
		any |= maybe[i];
	}
	if (!any)
		return NULL;

	jn = trg_row_jsonb(a, newslot);
	jo = trg_row_jsonb(a, oldslot);

	any = false;
	for (i = 0; i < a->nkept; i++)
	{
		JsonbValue	vn;
		JsonbValue	vo;
		const char *name = a->kept_names[i];

		changed[i] = false;
		if (!maybe[i])
			continue;
		if (getKeyJsonValueFromContainer(&jn->root, name, strlen(name), &vn) == NULL ||
			getKeyJsonValueFromContainer(&jo->root, name, strlen(name), &vo) == NULL)
			elog(ERROR, "column \"%s\" missing from rendered row", name);
		changed[i] = !trg_jsonb_values_equal(&vn, &vo);
		any |= changed[i];
		watched |= changed[i] && a->kept_watched[i];
	}
	if (!any || (a->nwatched > 0 && !watched))
		return NULL;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);

	trg_push_key(&st, "new");
	v.type = jbvBinary;
	v.val.binary.data = &jn->root;
	v.val.binary.len = VARSIZE(jn) - VARHDRSZ;
	pushJsonbValue(&st, WJB_VALUE, &v);

	trg_push_key(&st, "old");
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < a->nkept; i++)
	{
		const char *name = a->kept_names[i];

		if (!changed[i])
			continue;
		trg_push_key(&st, name);
		(void) getKeyJsonValueFromContainer(&jo->root, name, strlen(name), &v);
		pushJsonbValue(&st, WJB_VALUE, &v);
	}
	pushJsonbValue(&st, WJB_END_OBJECT, NULL);

	trg_push_key(&st, "changed");
	pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
	for (i = 0; i < a->nkept; i++)
	{
		if (!changed[i])
			continue;
		v.type = jbvString;
		v.val.string.val = a->kept_names[i];
		v.val.string.len = strlen(a->kept_names[i]);
		pushJsonbValue(&st, WJB_ELEM, &v);
	}
	pushJsonbValue(&st, WJB_END_ARRAY, NULL);

	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/*
 * Writes one event with the direct outbox insert.
 *
 * XXX: each call opens the outbox and its indexes again (a few percent of
 * a row-form firing); a writer cached for the statement would avoid it.
 */
static void
trg_write_event(TrgArgs *a, const char *event_type, Jsonb *payload,
				const char *tenant)
{
	OutboxEvent ev;

	ev.event_type = event_type;
	ev.payload = JsonbPGetDatum(payload);
	messaging_check_payload_size(ev.payload, "payload");
	ev.target_app = a->target_app;
	ev.tenant_id = tenant;
	ev.source_app = messaging_app_name;
	ev.correlation_id = NULL;
	ev.created_at = GetCurrentTimestamp();
	messaging_uuid7_generate(ev.created_at, &ev.id);
	messaging_outbox_insert(&ev);
}

static void
trg_fire_row(TriggerData *td, TrgArgs *a)
{
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		trg_write_event(a, a->type_created, trg_row_jsonb(a, td->tg_trigslot),
						trg_row_tenant(a, td->tg_trigslot));
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
		trg_write_event(a, a->type_deleted, trg_row_jsonb(a, td->tg_trigslot),
						trg_row_tenant(a, td->tg_trigslot));
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		Jsonb	   *payload = trg_update_payload(a, td->tg_trigslot,
												 td->tg_newslot);

		if (payload != NULL)
			trg_write_event(a, a->type_updated, payload,
							trg_row_tenant(a, td->tg_newslot));
	}
}

/* ----------------------------------------------------------------
 * Statement form
 * ----------------------------------------------------------------
 */

/*
 * The tenant id of each row of a statement, remembering the last value:
 * the rows of one statement mostly share their tenant, whose text is then
 * produced and checked once.
 */
typedef struct TrgTenantCache
{
	MemoryContext cxt;			/* holds the copies below */
	bool		valid;
	Datum		value;			/* copy of the last value, in cxt */
	char	   *text;			/* its checked text, in cxt */
} TrgTenantCache;

static const char *
trg_cached_tenant(TrgArgs *a, TrgTenantCache *tc, TupleTableSlot *slot)
{
	Form_pg_attribute att;
	MemoryContext old;
	bool		isnull;
	Datum		value;
	char	   *text;

	if (a->tenant_attnum == InvalidAttrNumber)
		return NULL;
	value = slot_getattr(slot, a->tenant_attnum, &isnull);
	if (isnull)
		return NULL;
	att = TupleDescAttr(slot->tts_tupleDescriptor, a->tenant_attnum - 1);
	if (tc->valid && datum_image_eq(value, tc->value, att->attbyval,
									att->attlen))
		return tc->text;

	text = trg_tenant_text(&a->tenant_out, value);
	if (tc->valid)
	{
		if (!att->attbyval)
			pfree(DatumGetPointer(tc->value));
		pfree(tc->text);
	}
	old = MemoryContextSwitchTo(tc->cxt);
	tc->value = datumCopy(value, att->attbyval, att->attlen);
	tc->text = pstrdup(text);
	MemoryContextSwitchTo(old);
	tc->valid = true;
	return tc->text;
}

/* Reading one transition table from its start, with a read pointer of our own. */
typedef struct TrgRowReader
{
	Tuplestorestate *rows;
	int			readptr;
	TupleTableSlot *slot;
} TrgRowReader;

static void
trg_reader_open(TrgRowReader *r, Tuplestorestate *rows, TupleDesc desc)
{
	r->rows = rows;
	r->slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	/* a read pointer of our own leaves the others where they are */
	r->readptr = tuplestore_alloc_read_pointer(rows, EXEC_FLAG_REWIND);
	tuplestore_select_read_pointer(rows, r->readptr);
	tuplestore_rescan(rows);
}

/*
 * The next row, or false at the end.  Rows read back from a spilled
 * tuplestore belong to the slot, so this is called outside the memory
 * context the row is rendered in.
 */
static bool
trg_reader_next(TrgRowReader *r)
{
	tuplestore_select_read_pointer(r->rows, r->readptr);
	return tuplestore_gettupleslot(r->rows, true, false, r->slot);
}

static void
trg_reader_close(TrgRowReader *r)
{
	tuplestore_select_read_pointer(r->rows, 0);
	ExecDropSingleTupleTableSlot(r->slot);
}

/*
 * The statement form: one event per row of the transition table (INSERT,
 * DELETE), or per pair of old and new rows that is an event (UPDATE),
 * staged for the relay (staging.c).  Every event of the statement has the
 * same time; the ids keep the order of the rows.
 *
 * An UPDATE's old and new transition tables hold the rows in the same
 * order, each row's old version beside its new one (the trigger manager
 * captures both at once, also for a row that moves to another partition),
 * so the pairs are read side by side and judged exactly as the row form
 * judges OLD and NEW.
 *
 * Each row is rendered in a memory context reset after the row, since the
 * stager copies what it keeps: the statement's memory stays at one row's
 * rendering plus one staged batch whatever the number of rows, and that
 * memory is reused rather than freshly allocated (and faulted in) row
 * after row.
 */
static void
trg_fire_rows(TriggerData *td, TrgArgs *a, const char *event_type)
{
	TupleDesc	desc = RelationGetDescr(td->tg_relation);
	bool		update = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
	TrgRowReader rows;
	TrgRowReader old_rows;
	MemoryContext row_cxt;
	MemoryContext old;
	OutboxStager *stager;
	TrgTenantCache tenants;
	TimestampTz now = GetCurrentTimestamp();
	pg_uuid_t	id;
	StringInfoData binary;		/* a row's payload, on the fast path */

	row_cxt = AllocSetContextCreate(CurrentMemoryContext,
									"messaging event row",
									ALLOCSET_DEFAULT_SIZES);
	memset(&tenants, 0, sizeof(tenants));
	tenants.cxt = AllocSetContextCreate(CurrentMemoryContext,
										"messaging event tenant",
										ALLOCSET_SMALL_SIZES);
	stager = messaging_stager_begin(event_type, a->target_app,
										   messaging_app_name, now);
	initStringInfo(&binary);

	trg_reader_open(&rows, TRIGGER_FIRED_BY_DELETE(td->tg_event) ?
					td->tg_oldtable : td->tg_newtable, desc);
	if (update)
		trg_reader_open(&old_rows, td->tg_oldtable, desc);

	while (trg_reader_next(&rows))
	{
		Jsonb	   *payload;

		CHECK_FOR_INTERRUPTS();
		if (update && !trg_reader_next(&old_rows))
			elog(ERROR, "transition table of old rows is shorter than that of new rows");

		old = MemoryContextSwitchTo(row_cxt);
		if (update)
			payload = trg_update_payload(a, old_rows.slot, rows.slot);
		else if (trg_row_binary(a, rows.slot, &binary))
			payload = (Jsonb *) binary.data;
		else
			payload = trg_row_jsonb(a, rows.slot);
		if (payload != NULL)
		{
			messaging_check_payload_size(JsonbPGetDatum(payload), "payload");
			messaging_uuid7_generate(now, &id);
			messaging_stager_add(stager, &id,
										trg_cached_tenant(a, &tenants, rows.slot),
										JsonbPGetDatum(payload));
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
	}
	if (update && trg_reader_next(&old_rows))
		elog(ERROR, "transition table of old rows is longer than that of new rows");
	(void) messaging_stager_end(stager);

	trg_reader_close(&rows);
	if (update)
		trg_reader_close(&old_rows);
	pfree(binary.data);
	MemoryContextDelete(tenants.cxt);
	MemoryContextDelete(row_cxt);
}

/*
 * One row of an UPDATE's transition table, for pairing by key.
 */
typedef struct TrgKeyedRow
{
	char	   *key;			/* the primary key's columns, as text */
	MinimalTuple tuple;
	int			partner;		/* index into the other side, or -1 */
} TrgKeyedRow;

static int
trg_keyed_cmp(const void *x, const void *y)
{
	return strcmp((*(TrgKeyedRow *const *) x)->key,
				  (*(TrgKeyedRow *const *) y)->key);
}

/*
 * Reads a transition table into rows keyed by the primary key columns
 * (each column's text, length-prefixed so that no two keys run together).
 */
static TrgKeyedRow *
trg_keyed_rows(Tuplestorestate *store, TupleDesc desc, Relation pk,
			   FmgrInfo *outs, int *n)
{
	TrgRowReader r;
	TrgKeyedRow *rows;
	int			cap = 64;
	int			k;

	rows = palloc(sizeof(TrgKeyedRow) * cap);
	*n = 0;
	trg_reader_open(&r, store, desc);
	while (trg_reader_next(&r))
	{
		StringInfoData key;

		CHECK_FOR_INTERRUPTS();
		if (*n == cap)
		{
			cap *= 2;
			rows = repalloc(rows, sizeof(TrgKeyedRow) * cap);
		}
		initStringInfo(&key);
		for (k = 0; k < pk->rd_index->indnkeyatts; k++)
		{
			bool		isnull;
			Datum		v = slot_getattr(r.slot, pk->rd_index->indkey.values[k],
										 &isnull);
			char	   *s = isnull ? "" : OutputFunctionCall(&outs[k], v);

			appendStringInfo(&key, "%c%zu:%s", isnull ? 'n' : 'v', strlen(s), s);
		}
		rows[*n].key = key.data;
		rows[*n].tuple = ExecCopySlotMinimalTuple(r.slot);
		rows[*n].partner = -1;
		(*n)++;
	}
	trg_reader_close(&r);
	return rows;
}

/*
 * The statement form of an UPDATE whose old and new transition tables do
 * not have the same number of rows, so that they cannot be read side by
 * side: a row moved to another partition whose insert there a BEFORE
 * trigger skipped has an old version and no new one.  The rows are paired
 * by primary key instead: a pair is an update as usual, an old row
 * without a new one is a delete (the row is gone), a new row without an
 * old one a create.  Rare enough to use the outbox writer, which takes
 * events of any type, rather than the stager.
 */
static void
trg_fire_updates_by_key(TriggerData *td, TrgArgs *a)
{
	Relation	rel = td->tg_relation;
	TupleDesc	desc = RelationGetDescr(rel);
	Relation	pk;
	FmgrInfo   *outs;
	TrgKeyedRow *olds;
	TrgKeyedRow *news;
	TrgKeyedRow **so;
	TrgKeyedRow **sn;
	int			nold;
	int			nnew;
	int			i;
	int			j;
	TupleTableSlot *oslot;
	TupleTableSlot *nslot;
	OutboxWriter *w;
	OutboxEvent ev;
	TrgTenantCache tenants;
	MemoryContext row_cxt;
	MemoryContext old;

	(void) RelationGetIndexList(rel);
	if (!OidIsValid(rel->rd_pkindex))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot pair the old and new rows of this UPDATE on table \"%s\"",
						a->table_name),
				 errdetail("The statement changed %lld rows but left %lld new rows, as when a "
						   "trigger skips the insert of a row moved to another partition; "
						   "without a primary key the rows cannot be told apart.",
						   (long long) tuplestore_tuple_count(td->tg_oldtable),
						   (long long) tuplestore_tuple_count(td->tg_newtable)),
				 errhint("Give the table a primary key, or use the row form "
						 "(messaging.create_event_trigger(..., for_each_row => true)).")));

	pk = index_open(rel->rd_pkindex, AccessShareLock);
	outs = palloc(sizeof(FmgrInfo) * pk->rd_index->indnkeyatts);
	for (i = 0; i < pk->rd_index->indnkeyatts; i++)
	{
		Oid			typoutput;
		bool		isvarlena;

		getTypeOutputInfo(TupleDescAttr(desc, pk->rd_index->indkey.values[i] - 1)->atttypid,
						  &typoutput, &isvarlena);
		fmgr_info(typoutput, &outs[i]);
	}
	olds = trg_keyed_rows(td->tg_oldtable, desc, pk, outs, &nold);
	news = trg_keyed_rows(td->tg_newtable, desc, pk, outs, &nnew);
	index_close(pk, AccessShareLock);

	/* pair them: sort both sides by key and merge */
	so = palloc(sizeof(TrgKeyedRow *) * Max(nold, 1));
	sn = palloc(sizeof(TrgKeyedRow *) * Max(nnew, 1));
	for (i = 0; i < nold; i++)
		so[i] = &olds[i];
	for (j = 0; j < nnew; j++)
		sn[j] = &news[j];
	qsort(so, nold, sizeof(TrgKeyedRow *), trg_keyed_cmp);
	qsort(sn, nnew, sizeof(TrgKeyedRow *), trg_keyed_cmp);
	for (i = 0, j = 0; i < nold && j < nnew;)
	{
		int			c = strcmp(so[i]->key, sn[j]->key);

		if (c == 0)
		{
			so[i]->partner = sn[j] - news;
			sn[j]->partner = so[i] - olds;
			i++, j++;
		}
		else if (c < 0)
			i++;
		else
			j++;
	}

	oslot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	nslot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	memset(&tenants, 0, sizeof(tenants));
	tenants.cxt = AllocSetContextCreate(CurrentMemoryContext,
										"messaging event tenant",
										ALLOCSET_SMALL_SIZES);
	row_cxt = AllocSetContextCreate(CurrentMemoryContext, "messaging event row",
									ALLOCSET_DEFAULT_SIZES);
	w = messaging_outbox_writer_begin();
	ev.target_app = a->target_app;
	ev.source_app = messaging_app_name;
	ev.correlation_id = NULL;
	ev.created_at = GetCurrentTimestamp();

	/* in the order of the old rows, then the new rows without one */
	for (i = 0; i < nold + nnew; i++)
	{
		TrgKeyedRow *o = i < nold ? &olds[i] : NULL;
		TrgKeyedRow *n = i < nold ? (o->partner >= 0 ? &news[o->partner] : NULL) :
		&news[i - nold];
		Jsonb	   *payload;
		TupleTableSlot *tenant_slot;

		if (o == NULL && n->partner >= 0)
			continue;			/* paired, done with its old row */
		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(row_cxt);
		if (o != NULL)
			ExecStoreMinimalTuple(o->tuple, oslot, false);
		if (n != NULL)
			ExecStoreMinimalTuple(n->tuple, nslot, false);
		if (o != NULL && n != NULL)
		{
			ev.event_type = a->type_updated;
			payload = trg_update_payload(a, oslot, nslot);
			tenant_slot = nslot;
		}
		else if (o != NULL)
		{
			ev.event_type = a->type_deleted;
			payload = trg_row_jsonb(a, oslot);
			tenant_slot = oslot;
		}
		else
		{
			ev.event_type = a->type_created;
			payload = trg_row_jsonb(a, nslot);
			tenant_slot = nslot;
		}
		if (payload != NULL)
		{
			ev.payload = JsonbPGetDatum(payload);
			messaging_check_payload_size(ev.payload, "payload");
			ev.tenant_id = trg_cached_tenant(a, &tenants, tenant_slot);
			messaging_uuid7_generate(ev.created_at, &ev.id);
			messaging_outbox_writer_add(w, &ev);
		}
		ExecClearTuple(oslot);
		ExecClearTuple(nslot);
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
	}
	(void) messaging_outbox_writer_end(w);

	ExecDropSingleTupleTableSlot(oslot);
	ExecDropSingleTupleTableSlot(nslot);
	MemoryContextDelete(tenants.cxt);
	MemoryContextDelete(row_cxt);
}

static void
trg_fire_statement(TriggerData *td, TrgArgs *a)
{
	Trigger    *tg = td->tg_trigger;
	Tuplestorestate *rows;
	const char *missing = NULL;
	const char *event_type;

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		event_type = a->type_created;
		rows = td->tg_newtable;
		if (rows == NULL)
			missing = "REFERENCING NEW TABLE AS new";
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		event_type = a->type_deleted;
		rows = td->tg_oldtable;
		if (rows == NULL)
			missing = "REFERENCING OLD TABLE AS old";
	}
	else
	{
		event_type = a->type_updated;
		rows = td->tg_newtable;
		if (rows == NULL || td->tg_oldtable == NULL)
			missing = "REFERENCING NEW TABLE AS new OLD TABLE AS old";
	}
	if (missing != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("statement-level trigger \"%s\" on table \"%s\" has no transition tables",
						tg->tgname, a->table_name),
				 errdetail("A statement-level trigger finds the changed rows in its transition "
						   "tables."),
				 errhint("Declare the trigger with %s, or make it FOR EACH ROW.",
						 missing)));

	if (event_type == a->type_updated &&
		tuplestore_tuple_count(rows) != tuplestore_tuple_count(td->tg_oldtable))
	{
		trg_fire_updates_by_key(td, a);
		return;
	}
	if (tuplestore_tuple_count(rows) == 0)
		return;
	trg_fire_rows(td, a, event_type);
}
static void
trg_fire_truncate(TrgArgs *a)
{
	JsonbParseState *st = NULL;
	JsonbValue *res;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	trg_write_event(a, a->type_truncated, JsonbValueToJsonb(res), NULL);
}

/*
 * messaging.emit_event() RETURNS trigger
 *
 * See the file header for the arguments and the payloads.
 */
Datum
messaging_emit_event(PG_FUNCTION_ARGS)
{
	TriggerData *td;
	Trigger    *tg;
	TrgArgs    *a;
	ErrorContextCallback errcb;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"emit_event\" was not called by trigger manager")));
	td = (TriggerData *) fcinfo->context;
	tg = td->tg_trigger;

	if (!TRIGGER_FIRED_AFTER(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" must fire AFTER the change",
						tg->tgname, RelationGetRelationName(td->tg_relation)),
				 errdetail("Events describe committed changes, which only AFTER triggers see."),
				 errhint("Create the trigger with AFTER instead of BEFORE or INSTEAD OF.")));

	a = trg_lookup(td);

	if (trg_suppressed)
		return PointerGetDatum(NULL);

	errcb.callback = trg_error_callback;
	errcb.arg = a;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	if (TRIGGER_FIRED_FOR_ROW(td->tg_event))
		trg_fire_row(td, a);
	else if (TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		trg_fire_truncate(a);
	else
		trg_fire_statement(td, a);

	error_context_stack = errcb.previous;
	return PointerGetDatum(NULL);
}

/*
 * messaging._event_tenant_id(value anyelement) RETURNS text
 *
 * Version 1.0's statement form called this and _event_payload() from its
 * SQL; 1.1 no longer declares them, but the 1.0 install script (run before
 * an upgrade) needs their symbols.  The tenant id of a row: the value's
 * text, checked as a tenant id.
 */
Datum
messaging_event_tenant_id(PG_FUNCTION_ARGS)
{
	FmgrInfo   *out = (FmgrInfo *) fcinfo->flinfo->fn_extra;

	if (out == NULL)
	{
		Oid			type = get_fn_expr_argtype(fcinfo->flinfo, 0);
		Oid			typoutput;
		bool		isvarlena;

		if (!OidIsValid(type))
			elog(ERROR, "could not determine the type of the tenant column");
		getTypeOutputInfo(type, &typoutput, &isvarlena);
		out = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(FmgrInfo));
		fmgr_info_cxt(typoutput, out, fcinfo->flinfo->fn_mcxt);
		fcinfo->flinfo->fn_extra = out;
	}
	PG_RETURN_TEXT_P(cstring_to_text(trg_tenant_text(out, PG_GETARG_DATUM(0))));
}

/*
 * messaging._event_payload(payload jsonb) RETURNS jsonb
 *
 * The payload, once checked against messaging.max_payload_bytes.
 */
Datum
messaging_event_payload(PG_FUNCTION_ARGS)
{
	Datum		payload = PG_GETARG_DATUM(0);

	messaging_check_payload_size(payload, "payload");
	PG_RETURN_DATUM(payload);
}

/*
 * messaging.suppress_trigger_events(suppress boolean DEFAULT true)
 *		RETURNS boolean
 *
 * Switches emit_event() triggers off (or on again) in this session until
 * the end of the current transaction; returns the previous state.
 */
Datum
messaging_suppress_trigger_events(PG_FUNCTION_ARGS)
{
	bool		previous = trg_suppressed;

	if (!IsTransactionBlock())
		ereport(WARNING,
				(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				 errmsg("suppress_trigger_events() has no effect outside a transaction block")));
	trg_cache_init();
	trg_suppressed = PG_GETARG_BOOL(0);
	PG_RETURN_BOOL(previous);
}

/* Text array elements as C strings; NULL elements are refused. */
static int
trg_text_array(ArrayType *arr, const char *param, char ***out)
{
	Datum	   *elems;
	bool	   *elnulls;
	int			n;
	int			i;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &elnulls, &n);
	*out = palloc(sizeof(char *) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (elnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain null elements", param)));
		(*out)[i] = TextDatumGetCString(elems[i]);
		if (strchr((*out)[i], ',') != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("column \"%s\" in %s cannot be listed because its name contains a "
							"comma",
							(*out)[i], param)));
	}
	return n;
}

/* "<key>=a,b,c" */
static char *
trg_option(const char *key, char **names, int n)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%s=", key);
	for (i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? "," : "", names[i]);
	return buf.data;
}

static void
trg_spi_exec(const char *sql)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc < 0)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
}

/* Drops the named create_event_trigger() triggers that exist on relid. */
static void
trg_drop_named(Oid relid, const char *qualname, const char *const *names,
			   int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		if (!OidIsValid(get_trigger_oid(relid, names[i], true)))
			continue;
		trg_spi_exec(psprintf("DROP TRIGGER %s ON %s",
							  quote_identifier(names[i]), qualname));
	}
}

static const char *
trg_qualified_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

/*
 * messaging.create_event_trigger("table" regclass, entity text,
 *		target_app text, tenant_column text, exclude_columns text[],
 *		watch_columns text[], for_each_row boolean) RETURNS text[]
 *
 * Checks everything the first firing would, then creates (or replaces)
 * the triggers with the caller's rights and returns their names.
 */
Datum
messaging_create_event_trigger(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Relation	rel;
	char	   *targs[5];
	int			nargs = 3;
	char	  **cols;
	int			ncols;
	bool		row;
	const char *qualname;
	StringInfoData arglist;
	List	   *created = NIL;
	Datum	   *names;
	ListCell   *lc;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table and entity must not be null")));
	relid = PG_GETARG_OID(0);
	targs[0] = text_to_cstring(PG_GETARG_TEXT_PP(1));
	targs[1] = PG_ARGISNULL(2) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(2));
	targs[2] = PG_ARGISNULL(3) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (!PG_ARGISNULL(4))
	{
		ncols = trg_text_array(PG_GETARG_ARRAYTYPE_P(4), "exclude_columns", &cols);
		if (ncols > 0)
			targs[nargs++] = trg_option("exclude", cols, ncols);
	}
	if (!PG_ARGISNULL(5))
	{
		ncols = trg_text_array(PG_GETARG_ARRAYTYPE_P(5), "watch_columns", &cols);
		if (ncols > 0)
			targs[nargs++] = trg_option("watch", cols, ncols);
	}
	row = !PG_ARGISNULL(6) && PG_GETARG_BOOL(6);

	rel = relation_open(relid, ShareRowExclusiveLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errdetail("Row-change events can be emitted for tables and partitioned tables "
						   "only.")));
	qualname = trg_qualified_name(rel);

	MemoryContextDelete(trg_parse_args(rel, InvalidOid,
									   row ? TRG_NAME_ROW : TRG_NAME_UPDATE,
									   nargs, targs, CurrentMemoryContext)->cxt);

	initStringInfo(&arglist);
	for (i = 0; i < nargs; i++)
		appendStringInfo(&arglist, "%s%s", i > 0 ? ", " : "",
						 quote_literal_cstr(targs[i]));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (row)
	{
		static const char *const others[] = {TRG_NAME_INSERT, TRG_NAME_UPDATE,
		TRG_NAME_DELETE};

		trg_drop_named(relid, qualname, others, lengthof(others));
		trg_spi_exec(psprintf("CREATE OR REPLACE TRIGGER %s "
							  "AFTER INSERT OR UPDATE OR DELETE ON %s "
							  "FOR EACH ROW EXECUTE FUNCTION messaging.emit_event(%s)",
							  TRG_NAME_ROW, qualname, arglist.data));
		created = lappend(created, TRG_NAME_ROW);
	}
	else
	{
		static const char *const others[] = {TRG_NAME_ROW};

		trg_drop_named(relid, qualname, others, lengthof(others));
		trg_spi_exec(psprintf("CREATE OR REPLACE TRIGGER %s AFTER INSERT ON %s "
							  "REFERENCING NEW TABLE AS new "
							  "FOR EACH STATEMENT EXECUTE FUNCTION messaging.emit_event(%s)",
							  TRG_NAME_INSERT, qualname, arglist.data));
		trg_spi_exec(psprintf("CREATE OR REPLACE TRIGGER %s AFTER UPDATE ON %s "
							  "REFERENCING OLD TABLE AS old NEW TABLE AS new "
							  "FOR EACH STATEMENT EXECUTE FUNCTION messaging.emit_event(%s)",
							  TRG_NAME_UPDATE, qualname, arglist.data));
		trg_spi_exec(psprintf("CREATE OR REPLACE TRIGGER %s AFTER DELETE ON %s "
							  "REFERENCING OLD TABLE AS old "
							  "FOR EACH STATEMENT EXECUTE FUNCTION messaging.emit_event(%s)",
							  TRG_NAME_DELETE, qualname, arglist.data));
		created = lappend(created, TRG_NAME_INSERT);
		created = lappend(created, TRG_NAME_UPDATE);
		created = lappend(created, TRG_NAME_DELETE);
	}
	trg_spi_exec(psprintf("CREATE OR REPLACE TRIGGER %s AFTER TRUNCATE ON %s "
						  "FOR EACH STATEMENT EXECUTE FUNCTION messaging.emit_event(%s)",
						  TRG_NAME_TRUNCATE, qualname, arglist.data));
	created = lappend(created, TRG_NAME_TRUNCATE);

	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	relation_close(rel, NoLock);

	names = palloc(sizeof(Datum) * list_length(created));
	i = 0;
	foreach(lc, created)
		names[i++] = CStringGetTextDatum((char *) lfirst(lc));
	PG_RETURN_ARRAYTYPE_P(construct_array(names, i, TEXTOID, -1, false,
										  TYPALIGN_INT));
}

/*
 * messaging.drop_event_trigger(tbl regclass) RETURNS integer
 *
 * Drops the triggers create_event_trigger() made on the table; returns how
 * many there were.
 */
Datum
messaging_drop_event_trigger(PG_FUNCTION_ARGS)
{
	static const char *const all[] = {TRG_NAME_INSERT, TRG_NAME_UPDATE,
	TRG_NAME_DELETE, TRG_NAME_ROW, TRG_NAME_TRUNCATE};
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	int			n = 0;
	int			i;

	rel = relation_open(relid, ShareRowExclusiveLock);
	for (i = 0; i < (int) lengthof(all); i++)
		if (OidIsValid(get_trigger_oid(relid, all[i], true)))
			n++;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	trg_drop_named(relid, trg_qualified_name(rel), all, lengthof(all));
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	relation_close(rel, NoLock);
	PG_RETURN_INT32(n);
}
