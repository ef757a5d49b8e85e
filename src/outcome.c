/*-------------------------------------------------------------------------
 *
 * outcome.c
 *	  Recording events the broker has confirmed: the zero-db-success
 *	  bookkeeping of the relay.
 *
 * A confirmed event leaves no row of its own.  Its outbox row is deleted;
 * a directed event starts to await its target's acknowledgement in
 * messaging.awaiting_ack (deleted again on acknowledgement); and the
 * hourly counters of its key (tenant, source, target, type) grow, with one
 * upsert per key for the whole batch.  This is nearly every event the relay
 * handles, so it is done here in C, with direct heap and index writes,
 * rather than in SQL; rarer outcomes (returns, nacks, audits) go through
 * messaging._relay_outcome().
 *
 * The same code serves the relay (messaging_record_confirmed) and SQL
 * (messaging._record_confirmed(), which tests use to simulate relay
 * passes).
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/outcome.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "messaging.h"
#include "outcome.h"
#include "rowstore.h"

PG_FUNCTION_INFO_V1(messaging_record_confirmed_sql);

/* One row of messaging.event_counters, as far as confirmations count. */
typedef struct CounterKey
{
	char		tenant_id[MESSAGING_MAX_TENANT_ID + 1];
	char		source_app[MESSAGING_MAX_APP_NAME + 1];
	char		target_app[MESSAGING_MAX_APP_NAME + 1];
	char		event_type[MESSAGING_MAX_EVENT_TYPE + 1];
} CounterKey;

typedef struct CounterEntry
{
	CounterKey	key;			/* hash key: must be first */
	int64		published;
	int64		acknowledged;	/* broadcasts are done once confirmed */
} CounterEntry;

static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL || s[0] == '\0');
	return *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

static bool
text_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/* Whether two events count under the same key. */
static bool
same_key(const ConfirmedEvent *a, const ConfirmedEvent *b)
{
	return text_equal(a->event_type, b->event_type) &&
		text_equal(a->target_app, b->target_app) &&
		text_equal(a->tenant_id, b->tenant_id) &&
		text_equal(a->source_app, b->source_app);
}

/* Adds the counted keys to messaging.event_counters: one upsert per key. */
static void
flush_counters(HTAB *counts)
{
	long		n = hash_get_num_entries(counts);
	Datum	   *cols[9];
	bool	   *nulls[9];
	Datum		args[9];
	static const Oid elemtypes[9] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	INT8OID, INT8OID, INT8OID, INT8OID, INT8OID};
	Oid			argtypes[9];
	HASH_SEQ_STATUS seq;
	CounterEntry *e;
	int			c;
	int			i = 0;
	int			rc;

	if (n == 0)
		return;

	for (c = 0; c < 9; c++)
	{
		cols[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
		argtypes[c] = get_array_type(elemtypes[c]);
	}
	hash_seq_init(&seq, counts);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		cols[0][i] = text_or_null(e->key.tenant_id, &nulls[0][i]);
		cols[1][i] = CStringGetTextDatum(e->key.source_app);
		cols[2][i] = text_or_null(e->key.target_app, &nulls[2][i]);
		cols[3][i] = CStringGetTextDatum(e->key.event_type);
		cols[4][i] = Int64GetDatum(e->published);
		cols[5][i] = Int64GetDatum(e->acknowledged);
		cols[6][i] = cols[7][i] = cols[8][i] = Int64GetDatum(0);
		i++;
	}
	for (c = 0; c < 9; c++)
		args[c] = messaging_make_array(cols[c], nulls[c], n, elemtypes[c]);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args("SELECT messaging._bump_counters($1, $2, $3,"
							   " $4, $5, $6, $7, $8, $9)",
							   9, argtypes, args, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not update event counters: %s",
			 SPI_result_code_string(rc));
	SPI_finish();
}

/*
 * Records n confirmed events in the current transaction.  The caller holds
 * the row locks of their outbox rows.
 *
 * An event id cannot be in awaiting_ack already: its row goes there in the
 * same transaction that deletes it from the outbox, so the two never both
 * hold it after a commit.
 */
void
messaging_record_confirmed(const ConfirmedEvent *events, int n)
{
	Relation	outbox;
	Datum	  **rowvalues;
	bool	  **rownulls;
	int			nawaiting = 0;
	HTAB	   *counts;
	CounterEntry *entry = NULL;
	const ConfirmedEvent *prev = NULL;
	HASHCTL		ctl;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (n <= 0)
		return;

	ctl.keysize = sizeof(CounterKey);
	ctl.entrysize = sizeof(CounterEntry);
	ctl.hcxt = CurrentMemoryContext;
	counts = hash_create("messaging confirmed counters", 16, &ctl,
						 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	outbox = table_open(messaging_table_relid("outbox"), RowExclusiveLock);
	rowvalues = palloc(sizeof(Datum *) * n);
	rownulls = palloc(sizeof(bool *) * n);

	for (i = 0; i < n; i++)
	{
		const ConfirmedEvent *ev = &events[i];
		CounterKey	key;
		bool		found;

		simple_heap_delete(outbox, (ItemPointer) &ev->ctid);

		if (ev->target_app != NULL)
		{
			Datum	   *values = palloc(sizeof(Datum) * Natts_awaiting_ack);
			bool	   *nulls = palloc0(sizeof(bool) * Natts_awaiting_ack);

			values[0] = UUIDPGetDatum(&ev->id);
			values[1] = CStringGetTextDatum(ev->event_type);
			values[2] = CStringGetTextDatum(ev->source_app);
			values[3] = CStringGetTextDatum(ev->target_app);
			values[4] = text_or_null(ev->tenant_id, &nulls[4]);
			values[5] = TimestampTzGetDatum(ev->created_at);
			values[6] = TimestampTzGetDatum(now);
			rowvalues[nawaiting] = values;
			rownulls[nawaiting] = nulls;
			nawaiting++;
		}

		/* events of a batch mostly share their key with the one before */
		if (prev == NULL || !same_key(prev, ev))
		{
			memset(&key, 0, sizeof(key));
			if (ev->tenant_id)
				strlcpy(key.tenant_id, ev->tenant_id, sizeof(key.tenant_id));
			strlcpy(key.source_app, ev->source_app, sizeof(key.source_app));
			if (ev->target_app)
				strlcpy(key.target_app, ev->target_app, sizeof(key.target_app));
			strlcpy(key.event_type, ev->event_type, sizeof(key.event_type));
			entry = hash_search(counts, &key, HASH_ENTER, &found);
			if (!found)
				entry->published = entry->acknowledged = 0;
		}
		prev = ev;
		entry->published++;
		if (ev->target_app == NULL)
			entry->acknowledged++;
	}
	table_close(outbox, NoLock);

	if (nawaiting > 0)
	{
		Relation	awaiting;

		awaiting = table_open(messaging_table_relid("awaiting_ack"),
							  RowExclusiveLock);
		messaging_check_columns(awaiting, Natts_awaiting_ack);
		messaging_insert_rows(awaiting, rowvalues, rownulls, nawaiting);
		table_close(awaiting, NoLock);
	}

	flush_counters(counts);
	hash_destroy(counts);
}

static void
text_array_elems(ArrayType *a, int n, const char **out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	int			i;

	deconstruct_array(a, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls,
					  &count);
	if (count != n)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("arrays must have the same length")));
	for (i = 0; i < n; i++)
		out[i] = nulls[i] ? NULL : TextDatumGetCString(elems[i]);
}

/*
 * messaging._record_confirmed(ctids tid[], ids uuid[], event_types text[],
 *							   target_apps text[], tenant_ids text[],
 *							   source_apps text[], created_ats timestamptz[])
 *
 * The relay's bookkeeping for confirmed events, callable from SQL so that
 * tests can simulate relay passes without a broker.
 */
Datum
messaging_record_confirmed_sql(PG_FUNCTION_ARGS)
{
	ArrayType  *ctids = PG_GETARG_ARRAYTYPE_P(0);
	ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(1);
	ArrayType  *created = PG_GETARG_ARRAYTYPE_P(6);
	Datum	   *ctid_d;
	Datum	   *id_d;
	Datum	   *created_d;
	bool	   *isnull;
	int			n;
	int			count;
	const char **types;
	const char **targets;
	const char **tenants;
	const char **sources;
	ConfirmedEvent *events;
	int			i;

	deconstruct_array(ctids, TIDOID, sizeof(ItemPointerData), false,
					  TYPALIGN_SHORT, &ctid_d, &isnull, &n);
	deconstruct_array(ids, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR,
					  &id_d, &isnull, &count);
	if (count != n)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("arrays must have the same length")));
	deconstruct_array(created, TIMESTAMPTZOID, sizeof(TimestampTz),
					  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &created_d, &isnull,
					  &count);
	if (count != n)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("arrays must have the same length")));

	types = palloc(sizeof(char *) * Max(n, 1));
	targets = palloc(sizeof(char *) * Max(n, 1));
	tenants = palloc(sizeof(char *) * Max(n, 1));
	sources = palloc(sizeof(char *) * Max(n, 1));
	text_array_elems(PG_GETARG_ARRAYTYPE_P(2), n, types);
	text_array_elems(PG_GETARG_ARRAYTYPE_P(3), n, targets);
	text_array_elems(PG_GETARG_ARRAYTYPE_P(4), n, tenants);
	text_array_elems(PG_GETARG_ARRAYTYPE_P(5), n, sources);

	events = palloc(sizeof(ConfirmedEvent) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (types[i] == NULL || sources[i] == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("event type and source application must not be null")));
		events[i].ctid = *((ItemPointer) DatumGetPointer(ctid_d[i]));
		memcpy(&events[i].id, DatumGetUUIDP(id_d[i]), sizeof(pg_uuid_t));
		events[i].event_type = types[i];
		events[i].target_app = targets[i];
		events[i].tenant_id = tenants[i];
		events[i].source_app = sources[i];
		events[i].created_at = DatumGetTimestampTz(created_d[i]);
	}
	messaging_record_confirmed(events, n);
	PG_RETURN_VOID();
}
