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
#include "utils/memutils.h"
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
 * Multi-row writer.
 *
 * The events are formed into heap tuples as they are added, in a memory
 * context that holds one batch and is reset after each flush; the caller's
 * memory for an event (its payload, its strings) can be reused as soon as
 * messaging_outbox_writer_add() returns.  A batch goes to the heap with
 * heap_multi_insert (one WAL record per page rather than per row), then to
 * the indexes.  Batches are bounded in rows and in bytes, as COPY bounds
 * its own: a small batch stays in the CPU caches and its memory is reused
 * from one batch to the next rather than returned to the system.
 */
#define OUTBOX_BATCH_ROWS	1000
#define OUTBOX_BATCH_BYTES	(64 * 1024)

/* Block size of a batch's memory: one block holds a full batch. */
#define OUTBOX_BATCH_BLOCK	(128 * 1024)

/* The text values the events of a statement usually share. */
typedef enum OutboxTextCol
{
	OUTBOX_TEXT_EVENT_TYPE = 0,
	OUTBOX_TEXT_TARGET_APP,
	OUTBOX_TEXT_TENANT_ID,
	OUTBOX_TEXT_SOURCE_APP,
	OUTBOX_NUM_TEXTS
} OutboxTextCol;

struct OutboxWriter
{
	MemoryContext cxt;			/* the writer and its slots */
	MemoryContext batch_cxt;	/* the tuples of the current batch */
	Relation	rel;
	TupleDesc	desc;			/* unreferenced copy of rel's */
	TupleTableSlot *slots[OUTBOX_BATCH_ROWS];
	Datum	   *values[OUTBOX_BATCH_ROWS];	/* each slot's tts_values */
	bool	   *nulls[OUTBOX_BATCH_ROWS];	/* each slot's tts_isnull */
	int			nslots;			/* slots made so far */
	int			n;				/* events in the current batch */
	Size		bytes;			/* their tuples' size */
	uint64		written;		/* events written so far */

	/* the last text value of each shared column, as a C string and a datum */
	char	   *last_s[OUTBOX_NUM_TEXTS];
	Datum		last_d[OUTBOX_NUM_TEXTS];
};

/*
 * The text datum of s, or NULL: the previous event's when s has the same
 * content.
 */
static Datum
writer_text(OutboxWriter *w, OutboxTextCol col, const char *s, bool *isnull)
{
	*isnull = (s == NULL);
	if (s == NULL)
		return (Datum) 0;
	if (w->last_s[col] == NULL || strcmp(s, w->last_s[col]) != 0)
	{
		MemoryContext old = MemoryContextSwitchTo(w->cxt);

		if (w->last_s[col] != NULL)
		{
			pfree(w->last_s[col]);
			pfree(DatumGetPointer(w->last_d[col]));
		}
		w->last_s[col] = pstrdup(s);
		w->last_d[col] = CStringGetTextDatum(s);
		MemoryContextSwitchTo(old);
	}
	return w->last_d[col];
}

/*
 * Starts writing events to the outbox in batches.  The writer lives in the
 * current memory context and keeps the outbox open until
 * messaging_outbox_writer_end().
 */
OutboxWriter *
messaging_outbox_writer_begin(void)
{
	MemoryContext cxt;
	MemoryContext old;
	OutboxWriter *w;

	cxt = AllocSetContextCreate(CurrentMemoryContext, "messaging outbox writer",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	w = palloc0(sizeof(OutboxWriter));
	w->cxt = cxt;
	w->batch_cxt = AllocSetContextCreate(cxt, "messaging outbox batch",
										 OUTBOX_BATCH_BLOCK,
										 OUTBOX_BATCH_BLOCK,
										 OUTBOX_BATCH_BLOCK);
	w->rel = table_open(messaging_outbox_relid(), RowExclusiveLock);
	messaging_check_columns(w->rel, Natts_outbox);
	/* an unreferenced copy spares the resource owner a pin per slot */
	w->desc = CreateTupleDescCopy(RelationGetDescr(w->rel));
	MemoryContextSwitchTo(old);
	return w;
}

/* Writes the current batch: heap rows, then index entries. */
static void
writer_flush(OutboxWriter *w)
{
	MemoryContext old;
	int			i;

	if (w->n == 0)
		return;

	old = MemoryContextSwitchTo(w->batch_cxt);
	heap_multi_insert(w->rel, w->slots, w->n, GetCurrentCommandId(true), 0,
					  NULL);
	/* the index values point into the tuples, which stay put */
	for (i = 0; i < w->n; i++)
		slot_getallattrs(w->slots[i]);
	messaging_index_rows(w->rel, w->slots, w->values, w->nulls, w->n);
	MemoryContextSwitchTo(old);

	for (i = 0; i < w->n; i++)
		ExecClearTuple(w->slots[i]);
	MemoryContextReset(w->batch_cxt);
	w->written += w->n;
	w->n = 0;
	w->bytes = 0;
}

/*
 * Adds one event; the batch is written when full.  The caller has checked
 * the event's values, as for messaging_outbox_insert().
 */
void
messaging_outbox_writer_add(OutboxWriter *w, const OutboxEvent *ev)
{
	Datum		v[Natts_outbox];
	bool		nl[Natts_outbox];
	MemoryContext old;
	HeapTuple	tuple;

	memset(nl, false, sizeof(nl));
	v[Anum_outbox_id - 1] = UUIDPGetDatum(&ev->id);
	v[Anum_outbox_event_type - 1] =
		writer_text(w, OUTBOX_TEXT_EVENT_TYPE, ev->event_type,
					&nl[Anum_outbox_event_type - 1]);
	v[Anum_outbox_payload - 1] = ev->payload;
	v[Anum_outbox_target_app - 1] =
		writer_text(w, OUTBOX_TEXT_TARGET_APP, ev->target_app,
					&nl[Anum_outbox_target_app - 1]);
	v[Anum_outbox_tenant_id - 1] =
		writer_text(w, OUTBOX_TEXT_TENANT_ID, ev->tenant_id,
					&nl[Anum_outbox_tenant_id - 1]);
	v[Anum_outbox_source_app - 1] =
		writer_text(w, OUTBOX_TEXT_SOURCE_APP, ev->source_app,
					&nl[Anum_outbox_source_app - 1]);
	v[Anum_outbox_correlation_id - 1] =
		cstring_datum_or_null(ev->correlation_id,
							  &nl[Anum_outbox_correlation_id - 1]);
	v[Anum_outbox_created_at - 1] = TimestampTzGetDatum(ev->created_at);
	v[Anum_outbox_attempts - 1] = Int32GetDatum(0);
	nl[Anum_outbox_last_error - 1] = true;

	/* slots are made as the first batch grows and kept for the next */
	if (w->n == w->nslots)
	{
		TupleTableSlot *slot;

		old = MemoryContextSwitchTo(w->cxt);
		slot = MakeSingleTupleTableSlot(w->desc, &TTSOpsHeapTuple);
		MemoryContextSwitchTo(old);
		w->slots[w->nslots] = slot;
		w->values[w->nslots] = slot->tts_values;
		w->nulls[w->nslots] = slot->tts_isnull;
		w->nslots++;
	}

	old = MemoryContextSwitchTo(w->batch_cxt);
	tuple = heap_form_tuple(w->desc, v, nl);
	/* the slot owns the tuple, so that heap_multi_insert need not copy it */
	ExecStoreHeapTuple(tuple, w->slots[w->n], true);
	MemoryContextSwitchTo(old);

	w->bytes += tuple->t_len;
	if (++w->n == OUTBOX_BATCH_ROWS || w->bytes >= OUTBOX_BATCH_BYTES)
		writer_flush(w);
}

/*
 * Writes what is left, closes the outbox and frees the writer; returns how
 * many events were written.
 */
uint64
messaging_outbox_writer_end(OutboxWriter *w)
{
	uint64		written;
	int			i;

	writer_flush(w);
	written = w->written;
	for (i = 0; i < w->nslots; i++)
		ExecDropSingleTupleTableSlot(w->slots[i]);
	table_close(w->rel, NoLock);
	MemoryContextDelete(w->cxt);

	if (written > 0)
		messaging_note_outbox_write();
	return written;
}
