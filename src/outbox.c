/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  Writing events into the transactional outbox, messaging.outbox.
 *
 * publish_event() and the row triggers insert here in the caller's
 * transaction; the relay worker publishes what commits.  The insert goes
 * directly to the heap and the indexes rather than through SPI or the
 * executor, because it sits on the hot path of every publishing
 * transaction: it costs about as much as the row's share of a plain
 * INSERT.  Nothing here talks to the network.
 *
 * Because the insert bypasses the planner, rules and triggers on the outbox
 * do not fire; the extension owns the table and defines none.  Column order
 * is fixed by outbox.h and checked on every insert, so that a mismatched
 * install script fails loudly instead of writing garbage.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/outbox.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "messaging.h"
#include "outbox.h"
#include "rowstore.h"
#include "shmem.h"

Oid
messaging_outbox_relid(void)
{
	return messaging_table_relid("outbox");
}

static Datum
cstring_datum_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL);
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

void
messaging_outbox_insert(const OutboxEvent *ev)
{
	Relation	rel;
	Datum		values[Natts_outbox];
	bool		nulls[Natts_outbox];

	rel = table_open(messaging_outbox_relid(), RowExclusiveLock);
	messaging_check_columns(rel, Natts_outbox);

	memset(nulls, false, sizeof(nulls));
	values[Anum_outbox_id - 1] = UUIDPGetDatum(&ev->id);
	values[Anum_outbox_event_type - 1] = CStringGetTextDatum(ev->event_type);
	values[Anum_outbox_payload - 1] = ev->payload;
	values[Anum_outbox_target_app - 1] =
		cstring_datum_or_null(ev->target_app, &nulls[Anum_outbox_target_app - 1]);
	values[Anum_outbox_tenant_id - 1] =
		cstring_datum_or_null(ev->tenant_id, &nulls[Anum_outbox_tenant_id - 1]);
	values[Anum_outbox_source_app - 1] = CStringGetTextDatum(ev->source_app);
	values[Anum_outbox_correlation_id - 1] =
		cstring_datum_or_null(ev->correlation_id,
							  &nulls[Anum_outbox_correlation_id - 1]);
	values[Anum_outbox_created_at - 1] = TimestampTzGetDatum(ev->created_at);
	values[Anum_outbox_attempts - 1] = Int32GetDatum(0);
	nulls[Anum_outbox_last_error - 1] = true;

	messaging_insert_row(rel, values, nulls);
	table_close(rel, NoLock);

	messaging_note_outbox_write();
}

/*
 * The text datum of s, reusing the previous event's when the caller passed
 * the same string (events of one statement share type, target and source).
 */
static Datum
outbox_text(const char *s, const char **last_s, Datum *last_d, bool *isnull)
{
	*isnull = (s == NULL);
	if (s == NULL)
		return (Datum) 0;
	if (s != *last_s)
	{
		*last_s = s;
		*last_d = CStringGetTextDatum(s);
	}
	return *last_d;
}

/*
 * Inserts n events at once: the heap rows with heap_multi_insert (one WAL
 * record per page rather than per row), then each plain-column index with
 * its IndexInfo built once for the batch.  Indexes with expressions or a
 * predicate go through the executor's general path, row by row.  Used by
 * the statement-level triggers; the caller bounds n to keep the batch's
 * memory small.
 */
void
messaging_outbox_insert_many(const OutboxEvent *evs, int n)
{
	Relation	rel;
	TupleDesc	desc;
	TupleTableSlot **slots;
	Datum	  (*values)[Natts_outbox];
	bool	  (*nulls)[Natts_outbox];
	const char *last_s[3] = {NULL, NULL, NULL};
	Datum		last_d[3] = {0, 0, 0};
	Datum	  **rowvalues;
	bool	  **rownulls;
	int			i;

	if (n <= 0)
		return;

	rel = table_open(messaging_outbox_relid(), RowExclusiveLock);
	messaging_check_columns(rel, Natts_outbox);
	/* an unreferenced copy spares the resource owner a pin per slot */
	desc = CreateTupleDescCopy(RelationGetDescr(rel));

	slots = palloc(sizeof(TupleTableSlot *) * n);
	values = palloc(sizeof(*values) * n);
	nulls = palloc(sizeof(*nulls) * n);
	for (i = 0; i < n; i++)
	{
		const OutboxEvent *ev = &evs[i];
		Datum	   *v = values[i];
		bool	   *nl = nulls[i];
		bool		dummy;

		memset(nl, false, sizeof(nulls[i]));
		v[Anum_outbox_id - 1] = UUIDPGetDatum(&ev->id);
		v[Anum_outbox_event_type - 1] =
			outbox_text(ev->event_type, &last_s[0], &last_d[0], &dummy);
		v[Anum_outbox_payload - 1] = ev->payload;
		v[Anum_outbox_target_app - 1] =
			outbox_text(ev->target_app, &last_s[1], &last_d[1],
						&nl[Anum_outbox_target_app - 1]);
		v[Anum_outbox_tenant_id - 1] =
			cstring_datum_or_null(ev->tenant_id, &nl[Anum_outbox_tenant_id - 1]);
		v[Anum_outbox_source_app - 1] =
			outbox_text(ev->source_app, &last_s[2], &last_d[2], &dummy);
		v[Anum_outbox_correlation_id - 1] =
			cstring_datum_or_null(ev->correlation_id,
								  &nl[Anum_outbox_correlation_id - 1]);
		v[Anum_outbox_created_at - 1] = TimestampTzGetDatum(ev->created_at);
		v[Anum_outbox_attempts - 1] = Int32GetDatum(0);
		nl[Anum_outbox_last_error - 1] = true;

		slots[i] = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
		ExecStoreHeapTuple(heap_form_tuple(desc, v, nl), slots[i], true);
	}

	heap_multi_insert(rel, slots, n, GetCurrentCommandId(true), 0, NULL);

	rowvalues = palloc(sizeof(Datum *) * n);
	rownulls = palloc(sizeof(bool *) * n);
	for (i = 0; i < n; i++)
	{
		rowvalues[i] = values[i];
		rownulls[i] = nulls[i];
	}
	messaging_index_rows(rel, slots, rowvalues, rownulls, n);
	pfree(rowvalues);
	pfree(rownulls);

	for (i = 0; i < n; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	pfree(slots);
	pfree(values);
	pfree(nulls);
	FreeTupleDesc(desc);
	table_close(rel, NoLock);

	messaging_note_outbox_write();
}
