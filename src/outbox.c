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
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "envelope.h"
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

/*
 * Staged events.
 *
 * A statement-level trigger may emit tens of thousands of events in one
 * statement.  Written as outbox rows, each costs a heap row and a primary
 * key entry in the application's transaction, more than the application's
 * own row.  The stager packs them instead into a few rows of
 * messaging.outbox_staged: the values the events of a statement share
 * (type, target, source, time) once per row, and per event a record of
 * its id, tenant and payload.  The relay moves staged rows into the outbox
 * (messaging_outbox_unstage()) before it reads the outbox, and publishes
 * from there as usual; since every event keeps the id given here, the
 * publishing order is the same as if the events had gone to the outbox
 * directly (see relay.c for the cutoff that keeps it so).
 *
 * A staged row stays below a page (the table's toast_tuple_target keeps
 * the toaster away), so rows are written with heap_multi_insert, one WAL
 * record per page.  An event too large for a row of its own goes to the
 * outbox directly.  A database still on an extension version without the
 * table gets every event in the outbox directly.
 *
 * The body of a staged row, a bytea, is a sequence of records, each
 * 4-byte aligned:
 *
 *	StagedRecord header
 *	tenant id bytes (tenant_len of them; none when tenant_len is -1),
 *	  padded to 4
 *	the payload, a jsonb datum with its 4-byte varlena header, padded to 4
 */

/* Column numbers of messaging.outbox_staged. */
#define Anum_staged_first_id	1
#define Anum_staged_last_id		2
#define Anum_staged_event_type	3
#define Anum_staged_target_app	4
#define Anum_staged_source_app	5
#define Anum_staged_created_at	6
#define Anum_staged_events		7
#define Anum_staged_body		8
#define Natts_staged			8

/* Staged rows per heap_multi_insert. */
#define STAGED_BATCH_ROWS	32

typedef struct StagedRecord
{
	uint32		size;			/* of the record, this header included */
	int32		tenant_len;		/* -1: no tenant */
	pg_uuid_t	id;
} StagedRecord;

struct OutboxStager
{
	MemoryContext cxt;
	MemoryContext batch_cxt;	/* the formed rows of the current batch */
	Relation	rel;			/* NULL: no staging table, events go direct */
	TupleDesc	desc;			/* unreferenced copy of rel's */
	OutboxWriter *direct;		/* for events that go to the outbox */
	OutboxEvent ev;				/* the shared values, for direct events */
	Datum		event_type;
	Datum		target_app;		/* (Datum) 0 for broadcast */
	Datum		source_app;
	Size		body_limit;		/* bytes a row's body may hold */

	/* the row being filled */
	StringInfoData body;		/* varlena header, then the records */
	int32		nevents;
	pg_uuid_t	first_id;
	pg_uuid_t	last_id;

	/* formed rows not yet written */
	TupleTableSlot *slots[STAGED_BATCH_ROWS];
	Datum	   *values[STAGED_BATCH_ROWS];
	bool	   *nulls[STAGED_BATCH_ROWS];
	int			nslots;
	int			n;

	uint64		written;
};

static void
stager_values(OutboxStager *s, Datum *v, bool *nl, Datum body)
{
	memset(nl, false, sizeof(bool) * Natts_staged);
	v[Anum_staged_first_id - 1] = UUIDPGetDatum(&s->first_id);
	v[Anum_staged_last_id - 1] = UUIDPGetDatum(&s->last_id);
	v[Anum_staged_event_type - 1] = s->event_type;
	v[Anum_staged_target_app - 1] = s->target_app;
	nl[Anum_staged_target_app - 1] = (s->target_app == (Datum) 0);
	v[Anum_staged_source_app - 1] = s->source_app;
	v[Anum_staged_created_at - 1] = TimestampTzGetDatum(s->ev.created_at);
	v[Anum_staged_events - 1] = Int32GetDatum(s->nevents);
	v[Anum_staged_body - 1] = body;
}

/*
 * Starts staging the events of one statement, which share their type,
 * target (NULL: broadcast), source application and time.  The stager
 * lives in the current memory context.
 */
OutboxStager *
messaging_outbox_stager_begin(const char *event_type, const char *target_app,
							  const char *source_app, TimestampTz created_at)
{
	MemoryContext cxt;
	MemoryContext old;
	OutboxStager *s;
	Oid			relid;

	cxt = AllocSetContextCreate(CurrentMemoryContext, "messaging outbox stager",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	s = palloc0(sizeof(OutboxStager));
	s->cxt = cxt;
	s->ev.event_type = pstrdup(event_type);
	s->ev.target_app = target_app ? pstrdup(target_app) : NULL;
	s->ev.source_app = pstrdup(source_app);
	s->ev.created_at = created_at;

	relid = messaging_table_relid_if_exists("outbox_staged");
	if (OidIsValid(relid))
	{
		Datum		v[Natts_staged];
		bool		nl[Natts_staged];
		bytea	   *empty = palloc(VARHDRSZ);

		s->rel = table_open(relid, RowExclusiveLock);
		messaging_check_columns(s->rel, Natts_staged);
		s->desc = CreateTupleDescCopy(RelationGetDescr(s->rel));
		s->batch_cxt = AllocSetContextCreate(cxt, "messaging staged rows",
											 ALLOCSET_DEFAULT_SIZES);
		s->event_type = CStringGetTextDatum(event_type);
		s->target_app = target_app ? CStringGetTextDatum(target_app) : (Datum) 0;
		s->source_app = CStringGetTextDatum(source_app);

		/* what a row takes besides its records, alignment included */
		SET_VARSIZE(empty, VARHDRSZ);
		stager_values(s, v, nl, PointerGetDatum(empty));
		s->body_limit = MaxHeapTupleSize -
			MAXALIGN(SizeofHeapTupleHeader + BITMAPLEN(Natts_staged)) -
			heap_compute_data_size(s->desc, v, nl) - MAXIMUM_ALIGNOF;

		initStringInfo(&s->body);
		messaging_append_zeros(&s->body, VARHDRSZ);
	}
	MemoryContextSwitchTo(old);
	return s;
}

/* Writes the formed rows: heap first, then the primary key. */
static void
stager_flush(OutboxStager *s)
{
	MemoryContext old;
	int			i;

	if (s->n == 0)
		return;
	old = MemoryContextSwitchTo(s->batch_cxt);
	heap_multi_insert(s->rel, s->slots, s->n, GetCurrentCommandId(true), 0,
					  NULL);
	for (i = 0; i < s->n; i++)
		slot_getallattrs(s->slots[i]);
	messaging_index_rows(s->rel, s->slots, s->values, s->nulls, s->n);
	MemoryContextSwitchTo(old);
	for (i = 0; i < s->n; i++)
		ExecClearTuple(s->slots[i]);
	MemoryContextReset(s->batch_cxt);
	s->n = 0;
}

/* Forms the row being filled and starts the next. */
static void
stager_finish_row(OutboxStager *s)
{
	Datum		v[Natts_staged];
	bool		nl[Natts_staged];
	MemoryContext old;
	HeapTuple	tuple;

	if (s->nevents == 0)
		return;

	if (s->n == s->nslots)
	{
		TupleTableSlot *slot;

		old = MemoryContextSwitchTo(s->cxt);
		slot = MakeSingleTupleTableSlot(s->desc, &TTSOpsHeapTuple);
		MemoryContextSwitchTo(old);
		s->slots[s->nslots] = slot;
		s->values[s->nslots] = slot->tts_values;
		s->nulls[s->nslots] = slot->tts_isnull;
		s->nslots++;
	}

	SET_VARSIZE(s->body.data, s->body.len);
	stager_values(s, v, nl, PointerGetDatum(s->body.data));
	old = MemoryContextSwitchTo(s->batch_cxt);
	tuple = heap_form_tuple(s->desc, v, nl);
	ExecStoreHeapTuple(tuple, s->slots[s->n], true);
	MemoryContextSwitchTo(old);

	s->written += s->nevents;
	s->nevents = 0;
	s->body.len = VARHDRSZ;
	if (++s->n == STAGED_BATCH_ROWS)
		stager_flush(s);
}

/*
 * Adds one event: its id (ids must increase from call to call), tenant
 * (may be NULL) and payload, a jsonb the caller has checked.  The caller's
 * memory can be reused as soon as this returns.
 */
void
messaging_outbox_stager_add(OutboxStager *s, const pg_uuid_t *id,
							const char *tenant_id, Datum payload)
{
	struct varlena *jb = PG_DETOAST_DATUM(payload);
	int32		tenant_len = tenant_id ? (int32) strlen(tenant_id) : -1;
	Size		size;
	StagedRecord rec;

	size = sizeof(StagedRecord) + INTALIGN(Max(tenant_len, 0)) +
		INTALIGN(VARSIZE(jb));

	if (s->rel == NULL || size > s->body_limit)
	{
		if (s->direct == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(s->cxt);

			s->direct = messaging_outbox_writer_begin();
			MemoryContextSwitchTo(old);
		}
		/* what is staged so far keeps its place before this event */
		memcpy(&s->ev.id, id, sizeof(pg_uuid_t));
		s->ev.tenant_id = tenant_id;
		s->ev.payload = PointerGetDatum(jb);
		messaging_outbox_writer_add(s->direct, &s->ev);
		return;
	}

	if (s->body.len - VARHDRSZ + size > s->body_limit)
		stager_finish_row(s);

	rec.size = (uint32) size;
	rec.tenant_len = tenant_len;
	memcpy(&rec.id, id, sizeof(pg_uuid_t));
	appendBinaryStringInfoNT(&s->body, (char *) &rec, sizeof(rec));
	if (tenant_len > 0)
	{
		appendBinaryStringInfoNT(&s->body, tenant_id, tenant_len);
		messaging_append_zeros(&s->body, INTALIGN(tenant_len) - tenant_len);
	}
	appendBinaryStringInfoNT(&s->body, (char *) jb, VARSIZE(jb));
	messaging_append_zeros(&s->body, INTALIGN(VARSIZE(jb)) - VARSIZE(jb));

	if (s->nevents == 0)
		memcpy(&s->first_id, id, sizeof(pg_uuid_t));
	memcpy(&s->last_id, id, sizeof(pg_uuid_t));
	s->nevents++;

	if ((Pointer) jb != DatumGetPointer(payload))
		pfree(jb);
}

/*
 * Writes what is left and frees the stager; returns how many events were
 * written, staged or direct.
 */
uint64
messaging_outbox_stager_end(OutboxStager *s)
{
	uint64		written = 0;
	int			i;

	if (s->rel != NULL)
	{
		stager_finish_row(s);
		stager_flush(s);
		for (i = 0; i < s->nslots; i++)
			ExecDropSingleTupleTableSlot(s->slots[i]);
		table_close(s->rel, NoLock);
		written = s->written;
		if (written > 0)
			messaging_note_outbox_write();
	}
	if (s->direct != NULL)
		written += messaging_outbox_writer_end(s->direct);
	MemoryContextDelete(s->cxt);
	return written;
}

static void
staged_corrupt(const pg_uuid_t *first_id, const char *what)
{
	char		idbuf[UUID_LEN * 2 + 5];

	messaging_format_uuid(first_id, idbuf);
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("staged events starting at %s are corrupt: %s", idbuf, what),
			 errhint("Delete the row with first_id '%s' from messaging.outbox_staged to let "
					 "the relay go on; its events are lost.", idbuf)));
}

/* Reading the records of one staged row's body. */
typedef struct StagedCursor
{
	const pg_uuid_t *first_id;	/* of the row, for messages */
	char	   *p;				/* the next record */
	char	   *end;
	int32		left;			/* records the row says are left */
} StagedCursor;

/* body must be a 4-byte aligned, uncompressed copy. */
static void
staged_open(StagedCursor *c, const pg_uuid_t *first_id, bytea *body,
			int32 nevents)
{
	c->first_id = first_id;
	c->p = VARDATA(body);
	c->end = c->p + VARSIZE(body) - VARHDRSZ;
	c->left = nevents;
}

/*
 * The next record: its header, tenant (NULL for none; *tenant_len bytes,
 * not terminated) and payload.  Returns false after the last one.
 */
static bool
staged_next(StagedCursor *c, StagedRecord *rec, const char **tenant,
			struct varlena **payload)
{
	Size		tenant_space;

	if (c->left == 0)
	{
		if (c->p != c->end)
			staged_corrupt(c->first_id, "more events than counted");
		return false;
	}
	if (c->end - c->p < (ptrdiff_t) sizeof(StagedRecord))
		staged_corrupt(c->first_id, "fewer events than counted");
	memcpy(rec, c->p, sizeof(StagedRecord));
	tenant_space = INTALIGN(Max(rec->tenant_len, 0));
	if (rec->size > (Size) (c->end - c->p) || rec->tenant_len < -1 ||
		rec->size < sizeof(StagedRecord) + tenant_space + VARHDRSZ)
		staged_corrupt(c->first_id, "a record overruns the row");
	*payload = (struct varlena *) (c->p + sizeof(StagedRecord) + tenant_space);
	if (VARATT_IS_EXTENDED(*payload) ||
		INTALIGN(VARSIZE(*payload)) != rec->size - sizeof(StagedRecord) - tenant_space)
		staged_corrupt(c->first_id, "a payload has the wrong size");
	*tenant = rec->tenant_len < 0 ? NULL : c->p + sizeof(StagedRecord);
	c->p += rec->size;
	c->left--;
	return true;
}

/*
 * Moves the events of staged rows into the outbox.  Each of the n rows
 * has the columns first_id, event_type, target_app, source_app,
 * created_at, events and body, in that order (the caller deleted them
 * from messaging.outbox_staged with RETURNING).  Returns how many events
 * moved.
 */
uint64
messaging_outbox_unstage(HeapTuple *rows, TupleDesc desc, uint64 n)
{
	OutboxWriter *w;
	MemoryContext row_cxt;
	MemoryContext old;
	uint64		moved;
	uint64		r;

	if (n == 0)
		return 0;
	w = messaging_outbox_writer_begin();
	row_cxt = AllocSetContextCreate(CurrentMemoryContext, "messaging unstage",
									ALLOCSET_DEFAULT_SIZES);
	for (r = 0; r < n; r++)
	{
		bool		isnull;
		Datum		d;
		pg_uuid_t	first_id;
		OutboxEvent ev;
		StagedCursor cur;
		StagedRecord rec;
		const char *tenant;
		struct varlena *payload;

		old = MemoryContextSwitchTo(row_cxt);
		memcpy(&first_id, DatumGetUUIDP(heap_getattr(rows[r], 1, desc, &isnull)),
			   sizeof(pg_uuid_t));
		ev.event_type = TextDatumGetCString(heap_getattr(rows[r], 2, desc, &isnull));
		d = heap_getattr(rows[r], 3, desc, &isnull);
		ev.target_app = isnull ? NULL : TextDatumGetCString(d);
		ev.source_app = TextDatumGetCString(heap_getattr(rows[r], 4, desc, &isnull));
		ev.created_at = DatumGetTimestampTz(heap_getattr(rows[r], 5, desc, &isnull));
		ev.correlation_id = NULL;
		/* a copy, so that the records are aligned as they were written */
		staged_open(&cur, &first_id,
					DatumGetByteaPCopy(heap_getattr(rows[r], 7, desc, &isnull)),
					DatumGetInt32(heap_getattr(rows[r], 6, desc, &isnull)));

		while (staged_next(&cur, &rec, &tenant, &payload))
		{
			memcpy(&ev.id, &rec.id, sizeof(pg_uuid_t));
			ev.tenant_id = tenant ? pnstrdup(tenant, rec.tenant_len) : NULL;
			ev.payload = PointerGetDatum(payload);
			messaging_outbox_writer_add(w, &ev);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
	}
	moved = messaging_outbox_writer_end(w);
	MemoryContextDelete(row_cxt);
	return moved;
}

/*
 * messaging._staged_event(first_id uuid, body bytea, wanted uuid)
 *		RETURNS TABLE (event_id uuid, tenant_id text)
 *
 * For event_status(): event wanted and its tenant when the body of the
 * staged row first_id holds it (one row), or no row.
 */
PG_FUNCTION_INFO_V1(messaging_staged_event);

Datum
messaging_staged_event(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	pg_uuid_t  *first_id = PG_GETARG_UUID_P(0);
	bytea	   *body = PG_GETARG_BYTEA_P_COPY(1);
	pg_uuid_t  *wanted = PG_GETARG_UUID_P(2);
	StagedCursor cur;
	StagedRecord rec;
	const char *tenant;
	struct varlena *payload;

	InitMaterializedSRF(fcinfo, 0);
	/* the count is not at hand: read to the end */
	staged_open(&cur, first_id, body, -1);
	while (cur.p < cur.end && staged_next(&cur, &rec, &tenant, &payload))
	{
		Datum		values[2];
		bool		nulls[2] = {false, tenant == NULL};

		if (memcmp(&rec.id, wanted, sizeof(pg_uuid_t)) != 0)
			continue;
		values[0] = UUIDPGetDatum(wanted);
		values[1] = tenant == NULL ? (Datum) 0 :
			PointerGetDatum(cstring_to_text_with_len(tenant, rec.tenant_len));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		break;
	}
	return (Datum) 0;
}

/*
 * messaging._staged_events() RETURNS TABLE (id uuid, event_type text,
 *		payload jsonb, target_app text, tenant_id text, source_app text,
 *		created_at timestamptz)
 *
 * Every staged event, one row each, for the view messaging.pending_events.
 */
PG_FUNCTION_INFO_V1(messaging_staged_events);

Datum
messaging_staged_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid = messaging_table_relid_if_exists("outbox_staged");
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	MemoryContext row_cxt;
	MemoryContext old;

	InitMaterializedSRF(fcinfo, 0);
	if (!OidIsValid(relid))
		return (Datum) 0;

	rel = table_open(relid, AccessShareLock);
	messaging_check_columns(rel, Natts_staged);
	row_cxt = AllocSetContextCreate(CurrentMemoryContext, "messaging staged row",
									ALLOCSET_DEFAULT_SIZES);
	scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		TupleDesc	desc = RelationGetDescr(rel);
		Datum		row[Natts_staged];
		bool		rownull[Natts_staged];
		Datum		v[7];
		bool		nl[7];
		pg_uuid_t	first_id;
		StagedCursor cur;
		StagedRecord rec;
		const char *tenant;
		struct varlena *payload;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(row_cxt);
		heap_deform_tuple(tuple, desc, row, rownull);
		memcpy(&first_id, DatumGetUUIDP(row[Anum_staged_first_id - 1]),
			   sizeof(pg_uuid_t));
		staged_open(&cur, &first_id,
					DatumGetByteaPCopy(row[Anum_staged_body - 1]),
					DatumGetInt32(row[Anum_staged_events - 1]));

		memset(nl, false, sizeof(nl));
		v[1] = row[Anum_staged_event_type - 1];
		v[3] = row[Anum_staged_target_app - 1];
		nl[3] = rownull[Anum_staged_target_app - 1];
		v[5] = row[Anum_staged_source_app - 1];
		v[6] = row[Anum_staged_created_at - 1];
		while (staged_next(&cur, &rec, &tenant, &payload))
		{
			v[0] = UUIDPGetDatum(&rec.id);
			v[2] = PointerGetDatum(payload);
			nl[4] = (tenant == NULL);
			v[4] = tenant ?
				PointerGetDatum(cstring_to_text_with_len(tenant, rec.tenant_len)) :
				(Datum) 0;
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	MemoryContextDelete(row_cxt);
	return (Datum) 0;
}
