/*-------------------------------------------------------------------------
 *
 * staging.c
 *	  Staged events: the events of bulk changes, packed for the relay.
 *
 * A statement-level trigger may emit tens of thousands of events in one
 * statement.  Written as outbox rows, each would cost a heap row and a
 * primary key entry in the application's transaction, more than the
 * application's own row.  The stager packs them instead into a few rows of
 * messaging.outbox_staged: what the events of a statement share (type,
 * target, source, time) once per row, and per event a record of its id,
 * tenant and payload.  The relay moves staged rows into the outbox
 * (messaging_unstage()) at the start of each pass and publishes from
 * there as usual.  Every event keeps the id given here, and the relay
 * holds back outbox rows from the oldest staged row's first id on (see
 * relay.c), so the publishing order is what it would be had the events
 * gone to the outbox directly.
 *
 * A staged row stays below a page (the table's toast_tuple_target keeps
 * the toaster away), so rows are written with heap_multi_insert, one WAL
 * record per page.  An event too large for a row of its own goes to the
 * outbox directly, keeping its place in the id order.  A database still on
 * an extension version without the table gets every event in the outbox
 * directly.
 *
 * Payloads of one statement are mostly objects with the same keys (the
 * columns of one table).  A jsonb object is laid out as its header, the
 * keys' entries, the values' entries, the keys' bytes and the values'
 * bytes; the header, key entries and key bytes together are its "shape".
 * A row stores the shape of its first object payload once (column shape)
 * and every record whose payload has that shape keeps only the value
 * entries and bytes, which roughly halves a record for a table of short
 * columns.  Reassembling restores the very same bytes, alignment included,
 * since a value's padding depends only on its offset from the start.
 *
 * The body of a staged row, a bytea, is a sequence of records, each
 * starting 4-byte aligned:
 *
 *	StagedRecord header
 *	tenant id bytes (tenant_len of them; none when tenant_len is -1 or the
 *	  record has STAGED_SAME_TENANT), padded to 4
 *	the payload: with STAGED_SHAPED, the value entries and bytes of an
 *	  object of the row's shape; otherwise a jsonb datum with its 4-byte
 *	  varlena header
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/staging.c
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
#include "storage/bufmgr.h"
#include "storage/freespace.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "envelope.h"
#include "messaging.h"
#include "outbox.h"
#include "rowstore.h"
#include "shmem.h"
#include "staging.h"

/* Column numbers of messaging.outbox_staged. */
#define Anum_staged_first_id	1
#define Anum_staged_last_id		2
#define Anum_staged_event_type	3
#define Anum_staged_target_app	4
#define Anum_staged_source_app	5
#define Anum_staged_created_at	6
#define Anum_staged_events		7
#define Anum_staged_shape		8
#define Anum_staged_body		9
#define Natts_staged			9

/* Staged rows per heap_multi_insert. */
#define STAGED_BATCH_ROWS	32

/* StagedRecord.flags */
#define STAGED_SHAPED		0x0001	/* payload in the row's shape */
#define STAGED_SAME_TENANT	0x0002	/* tenant of the previous record */

typedef struct StagedRecord
{
	uint32		size;			/* of the record, header included, unpadded */
	int16		tenant_len;		/* -1: no tenant */
	uint16		flags;
	pg_uuid_t	id;
} StagedRecord;

/* ----------------------------------------------------------------
 * Shapes
 * ----------------------------------------------------------------
 */

/*
 * Where the shape of the jsonb object jb lies: the header and key entries
 * (*head bytes from the container's start) and the key bytes (*keys bytes
 * after all 2n entries).  Returns false for anything but a non-empty
 * object.
 */
static bool
shape_of(const Jsonb *jb, Size *head, Size *keys)
{
	uint32		header = jb->root.header;
	uint32		n = header & JB_CMASK;
	uint32		end = 0;
	uint32		i;

	if ((header & JB_FOBJECT) == 0 || n == 0)
		return false;
	for (i = 0; i < n; i++)
	{
		JEntry		e = jb->root.children[i];

		end = JBE_HAS_OFF(e) ? JBE_OFFLENFLD(e) : end + JBE_OFFLENFLD(e);
	}
	*head = sizeof(uint32) + sizeof(JEntry) * n;
	*keys = end;
	return true;
}

/* The number of keys of a shape. */
static inline uint32
shape_keys(const char *shape)
{
	uint32		header;

	memcpy(&header, shape, sizeof(header));
	return header & JB_CMASK;
}

/* ----------------------------------------------------------------
 * Writing (the triggers' side)
 * ----------------------------------------------------------------
 */

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
	Size		base_limit;		/* bytes a row's body may hold, no shape */

	/* the row being filled */
	StringInfoData body;		/* varlena header, then the records */
	StringInfoData shape;		/* varlena header, then the shape, if any */
	Size		body_limit;		/* bytes its body may hold */
	int32		nevents;
	pg_uuid_t	first_id;
	pg_uuid_t	last_id;
	StringInfoData tenant;		/* the previous record's tenant */
	bool		tenant_null;

	/* formed rows not yet written */
	TupleTableSlot *slots[STAGED_BATCH_ROWS];
	Datum	   *values[STAGED_BATCH_ROWS];
	bool	   *nulls[STAGED_BATCH_ROWS];
	int			nslots;
	int			n;

	uint64		written;
};

static void
stager_values(OutboxStager *s, Datum *v, bool *nl)
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
	SET_VARSIZE(s->shape.data, s->shape.len);
	v[Anum_staged_shape - 1] = PointerGetDatum(s->shape.data);
	nl[Anum_staged_shape - 1] = (s->shape.len == VARHDRSZ);
	SET_VARSIZE(s->body.data, s->body.len);
	v[Anum_staged_body - 1] = PointerGetDatum(s->body.data);
}

/* Empties the row being filled. */
static void
stager_reset_row(OutboxStager *s)
{
	s->nevents = 0;
	s->body.len = VARHDRSZ;
	s->shape.len = VARHDRSZ;
	s->body_limit = s->base_limit;
	s->tenant_null = true;
	resetStringInfo(&s->tenant);
}

/*
 * Starts staging the events of one statement, which share their type,
 * target (NULL: broadcast), source application and time.  The stager
 * lives in the current memory context.
 */
OutboxStager *
messaging_stager_begin(const char *event_type, const char *target_app,
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

		s->rel = table_open(relid, RowExclusiveLock);
		messaging_check_columns(s->rel, Natts_staged);
		s->desc = CreateTupleDescCopy(RelationGetDescr(s->rel));
		s->batch_cxt = AllocSetContextCreate(cxt, "messaging staged rows",
											 ALLOCSET_DEFAULT_SIZES);
		s->event_type = CStringGetTextDatum(event_type);
		s->target_app = target_app ? CStringGetTextDatum(target_app) : (Datum) 0;
		s->source_app = CStringGetTextDatum(source_app);

		initStringInfo(&s->body);
		messaging_append_zeros(&s->body, VARHDRSZ);
		initStringInfo(&s->shape);
		messaging_append_zeros(&s->shape, VARHDRSZ);
		initStringInfo(&s->tenant);

		/* what a row takes besides its records and shape, alignment included */
		stager_values(s, v, nl);
		s->base_limit = MaxHeapTupleSize -
			MAXALIGN(SizeofHeapTupleHeader + BITMAPLEN(Natts_staged)) -
			heap_compute_data_size(s->desc, v, nl) - MAXIMUM_ALIGNOF;
		stager_reset_row(s);
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

	stager_values(s, v, nl);
	old = MemoryContextSwitchTo(s->batch_cxt);
	tuple = heap_form_tuple(s->desc, v, nl);
	ExecStoreHeapTuple(tuple, s->slots[s->n], true);
	MemoryContextSwitchTo(old);

	s->written += s->nevents;
	stager_reset_row(s);
	if (++s->n == STAGED_BATCH_ROWS)
		stager_flush(s);
}

/* Sends one event to the outbox itself. */
static void
stager_direct(OutboxStager *s, const pg_uuid_t *id, const char *tenant_id,
			  Datum payload)
{
	if (s->direct == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(s->cxt);

		s->direct = messaging_outbox_writer_begin();
		MemoryContextSwitchTo(old);
	}
	memcpy(&s->ev.id, id, sizeof(pg_uuid_t));
	s->ev.tenant_id = tenant_id;
	s->ev.payload = payload;
	messaging_outbox_writer_add(s->direct, &s->ev);
}

/*
 * Adds one event: its id (ids must increase from call to call), tenant
 * (may be NULL) and payload, a jsonb the caller has checked.  The caller's
 * memory can be reused as soon as this returns.
 */
void
messaging_stager_add(OutboxStager *s, const pg_uuid_t *id,
					 const char *tenant_id, Datum payload)
{
	Jsonb	   *jb = DatumGetJsonbP(payload);
	const char *data = (const char *) &jb->root;
	Size		data_len = VARSIZE(jb) - VARHDRSZ;
	Size		head = 0;
	Size		keys = 0;
	const char *key_bytes;
	bool		object;
	bool		shaped = false;
	bool		same_tenant;
	Size		tenant_len = tenant_id ? strlen(tenant_id) : 0;
	Size		size;
	StagedRecord rec;

	if (s->rel == NULL)
	{
		stager_direct(s, id, tenant_id, PointerGetDatum(jb));
		return;
	}

	object = shape_of(jb, &head, &keys);
	/* an object's key bytes follow its header and all 2n entries */
	key_bytes = data + 2 * head - sizeof(uint32);
	for (;;)
	{
		/* a row's first object gives the row its shape */
		if (object && s->shape.len == VARHDRSZ && s->nevents == 0 &&
			head + keys + 2 * VARHDRSZ < s->base_limit / 2)
		{
			appendBinaryStringInfoNT(&s->shape, data, head);
			appendBinaryStringInfoNT(&s->shape, key_bytes, keys);
			s->body_limit = s->base_limit - INTALIGN(s->shape.len);
		}
		shaped = object && (Size) s->shape.len == VARHDRSZ + head + keys &&
			memcmp(s->shape.data + VARHDRSZ, data, head) == 0 &&
			memcmp(s->shape.data + VARHDRSZ + head, key_bytes, keys) == 0;
		same_tenant = s->nevents > 0 &&
			(tenant_id == NULL ? s->tenant_null :
			 !s->tenant_null && strcmp(tenant_id, s->tenant.data) == 0);

		size = sizeof(StagedRecord) +
			(same_tenant ? 0 : INTALIGN(tenant_len)) +
			(shaped ? data_len - head - keys : VARSIZE(jb));

		if (s->body.len - VARHDRSZ + INTALIGN(size) <= s->body_limit)
			break;
		if (s->nevents == 0)
		{
			/* too large for any row */
			stager_direct(s, id, tenant_id, PointerGetDatum(jb));
			return;
		}
		stager_finish_row(s);
	}

	rec.size = (uint32) size;
	rec.tenant_len = tenant_id ? (int16) tenant_len : -1;
	rec.flags = (shaped ? STAGED_SHAPED : 0) | (same_tenant ? STAGED_SAME_TENANT : 0);
	memcpy(&rec.id, id, sizeof(pg_uuid_t));
	appendBinaryStringInfoNT(&s->body, (char *) &rec, sizeof(rec));
	if (!same_tenant)
	{
		if (tenant_len > 0)
		{
			appendBinaryStringInfoNT(&s->body, tenant_id, tenant_len);
			messaging_append_zeros(&s->body, INTALIGN(tenant_len) - tenant_len);
		}
		resetStringInfo(&s->tenant);
		if (tenant_id != NULL)
			appendBinaryStringInfoNT(&s->tenant, tenant_id, tenant_len);
		s->tenant_null = (tenant_id == NULL);
	}
	if (shaped)
	{
		/* the value entries, then the value bytes */
		appendBinaryStringInfoNT(&s->body, data + head, head - sizeof(uint32));
		appendBinaryStringInfoNT(&s->body, key_bytes + keys,
								 data + data_len - (key_bytes + keys));
	}
	else
		appendBinaryStringInfoNT(&s->body, (char *) jb, VARSIZE(jb));
	messaging_append_zeros(&s->body, INTALIGN(size) - size);

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
messaging_stager_end(OutboxStager *s)
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

/* ----------------------------------------------------------------
 * Space (the relay's side)
 * ----------------------------------------------------------------
 */

/*
 * Adds empty pages to messaging.outbox_staged until the free space map
 * lists at least reserve pages with room for a staged row, at most
 * STAGED_EXTEND_STEP at a time; returns how many were added.
 *
 * A bulk change writes its staged rows into pages the free space map
 * offers, and extends the file page by page only when it offers none;
 * extending costs the writer about as much as writing the page.  The
 * relay therefore extends ahead of need, as the server itself does when
 * writers queue for the extension lock: the new pages are left
 * uninitialised and unlogged (a writer initialises a page when it first
 * uses it; after a crash they are all-zero pages, which vacuum and
 * writers both handle) and entered into the free space map.  Pages the
 * relay emptied become free again when vacuum has passed (the table keeps
 * them: vacuum_truncate is off).
 */
#define STAGED_EXTEND_STEP	1024

BlockNumber
messaging_staging_reserve_space(BlockNumber reserve)
{
	Oid			relid = messaging_table_relid_if_exists("outbox_staged");
	Relation	rel;
	BlockNumber nblocks;
	BlockNumber blk;
	BlockNumber free = 0;
	BlockNumber first = InvalidBlockNumber;
	BlockNumber added = 0;
	Size		room = BLCKSZ / 2;

	if (!OidIsValid(relid) || reserve == 0)
		return 0;
	rel = table_open(relid, RowExclusiveLock);
	nblocks = RelationGetNumberOfBlocks(rel);
	for (blk = 0; blk < nblocks && free < reserve; blk++)
		if (GetRecordedFreeSpace(rel, blk) >= room)
			free++;

	if (free < reserve)
	{
		BlockNumber want = Min(reserve - free, STAGED_EXTEND_STEP);

		LockRelationForExtension(rel, ExclusiveLock);
		while (added < want)
		{
			Buffer		buf = ReadBufferExtended(rel, MAIN_FORKNUM, P_NEW,
												 RBM_ZERO_AND_LOCK, NULL);

			blk = BufferGetBlockNumber(buf);
			if (!PageIsNew(BufferGetPage(buf)))
				elog(ERROR, "page %u of relation \"%s\" should be empty but is not",
					 blk, RelationGetRelationName(rel));
			UnlockReleaseBuffer(buf);
			if (first == InvalidBlockNumber)
				first = blk;
			RecordPageWithFreeSpace(rel, blk, BLCKSZ - SizeOfPageHeaderData);
			added++;
			CHECK_FOR_INTERRUPTS();
		}
		UnlockRelationForExtension(rel, ExclusiveLock);
		/* make the new pages findable from the map's upper levels */
		FreeSpaceMapVacuumRange(rel, first, blk + 1);
	}
	table_close(rel, NoLock);
	return added;
}

/* ----------------------------------------------------------------
 * Reading (the relay's side, and the views)
 * ----------------------------------------------------------------
 */

/*
 * A staged row is only ever written by the stager, but a bug or a damaged
 * page could still leave one the relay cannot read.  Every record, and
 * every payload's jsonb structure, is therefore checked before anything
 * trusts it: the relay moves a row that fails the check aside (into
 * failed_events, see relay.c) instead of failing every pass, and the SQL
 * readers skip it with a warning.
 */

/* Limits the nesting the check follows, as jsonb itself does. */
#define STAGED_MAX_DEPTH	1000

/*
 * Whether the len bytes at c are a jsonb container whose every entry lies
 * within them: entry types, offsets, numerics' headers and nested
 * containers, down to the scalars.  Key order is not checked; it only
 * matters to lookups, which then fail instead of misbehaving.
 */
static bool
container_ok(const char *c, Size len, int depth)
{
	uint32		header;
	uint32		count;
	uint32		nentries;
	Size		base;
	uint32		end = 0;
	uint32		i;

	if (depth > STAGED_MAX_DEPTH || len < sizeof(uint32))
		return false;
	memcpy(&header, c, sizeof(header));
	count = header & JB_CMASK;
	if ((header & JB_FOBJECT) && !(header & (JB_FARRAY | JB_FSCALAR)))
		nentries = count * 2;
	else if ((header & JB_FARRAY) && !(header & JB_FOBJECT))
	{
		if ((header & JB_FSCALAR) && count != 1)
			return false;
		nentries = count;
	}
	else
		return false;
	if (nentries > (len - sizeof(uint32)) / sizeof(JEntry))
		return false;
	base = sizeof(uint32) + sizeof(JEntry) * nentries;

	for (i = 0; i < nentries; i++)
	{
		JEntry		e;
		uint32		start = end;
		uint32		type;
		Size		at;

		memcpy(&e, c + sizeof(uint32) + sizeof(JEntry) * i, sizeof(JEntry));
		end = JBE_HAS_OFF(e) ? JBE_OFFLENFLD(e) : end + JBE_OFFLENFLD(e);
		if (end < start || base + end > len)
			return false;
		type = e & JENTRY_TYPEMASK;
		if ((header & JB_FOBJECT) && i < count && type != JENTRY_ISSTRING)
			return false;
		at = base + INTALIGN(start);
		switch (type)
		{
			case JENTRY_ISSTRING:
			case JENTRY_ISBOOL_FALSE:
			case JENTRY_ISBOOL_TRUE:
			case JENTRY_ISNULL:
				break;
			case JENTRY_ISNUMERIC:
				{
					uint32		vl;

					if (at + VARHDRSZ + sizeof(uint16) > base + end)
						return false;
					memcpy(&vl, c + at, sizeof(vl));
					if (VARATT_IS_EXTENDED((struct varlena *) &vl) ||
						VARSIZE(&vl) < VARHDRSZ + sizeof(uint16) ||
						at + VARSIZE(&vl) > base + end)
						return false;
					break;
				}
			case JENTRY_ISCONTAINER:
				if (at > base + end ||
					!container_ok(c + at, base + end - at, depth + 1))
					return false;
				break;
			default:
				return false;
		}
	}
	return true;
}

/* Reading the records of one staged row. */
typedef struct StagedCursor
{
	const pg_uuid_t *first_id;	/* of the row, for messages */
	char	   *start;			/* the first record */
	char	   *p;				/* the next record */
	char	   *end;
	int32		count;			/* records the row says it has; -1: unknown */
	int32		left;			/* of those, not yet read */
	const char *shape;			/* NULL: none */
	Size		shape_len;
	const char *tenant;			/* of the previous record */
	int16		tenant_len;
	const char *error;			/* what is wrong with the row, or NULL */
} StagedCursor;

/*
 * The jsonb datum of the cursor's row's shape and part (value entries and
 * bytes), in a new palloc'd buffer; NULL if they do not fit together.
 */
static Jsonb *
shape_join(StagedCursor *c, const char *part, Size part_len)
{
	uint32		n = shape_keys(c->shape);
	Size		head = sizeof(uint32) + sizeof(JEntry) * n;
	Size		ventries = sizeof(JEntry) * n;
	Jsonb	   *jb;
	char	   *p;

	if (c->shape_len < head || part_len < ventries)
		return NULL;
	jb = palloc(VARHDRSZ + c->shape_len + part_len);
	SET_VARSIZE(jb, VARHDRSZ + c->shape_len + part_len);
	p = (char *) &jb->root;
	memcpy(p, c->shape, head);
	p += head;
	memcpy(p, part, ventries);
	p += ventries;
	memcpy(p, c->shape + head, c->shape_len - head);
	p += c->shape_len - head;
	memcpy(p, part + ventries, part_len - ventries);
	return jb;
}

/* body must be a 4-byte aligned, uncompressed copy; shape may be NULL. */
static void
staged_open(StagedCursor *c, const pg_uuid_t *first_id, bytea *body,
			bytea *shape, int32 nevents)
{
	c->first_id = first_id;
	c->start = c->p = VARDATA(body);
	c->end = c->p + VARSIZE(body) - VARHDRSZ;
	c->count = c->left = nevents;
	c->shape = shape ? VARDATA(shape) : NULL;
	c->shape_len = shape ? VARSIZE(shape) - VARHDRSZ : 0;
	c->tenant = NULL;
	c->tenant_len = -1;
	c->error = NULL;
}

/* Records what is wrong with the row; returns false for staged_next(). */
static bool
staged_bad(StagedCursor *c, const char *what)
{
	c->error = what;
	return false;
}

/*
 * The next record: its header, tenant (NULL for none; rec->tenant_len
 * bytes, not terminated) and payload.  A shaped payload is reassembled
 * in a new palloc'd buffer; others point into the body.  Returns false
 * after the last one, or at the first thing wrong with the row, which
 * c->error then names.
 */
static bool
staged_next(StagedCursor *c, StagedRecord *rec, const char **tenant,
			Jsonb **payload)
{
	char	   *q;
	Size		rest;

	if (c->error != NULL)
		return false;
	if (c->left == 0 || (c->left < 0 && c->p >= c->end))
	{
		if (c->p < c->end)
			return staged_bad(c, "more events than counted");
		return false;
	}
	if (c->end - c->p < (ptrdiff_t) sizeof(StagedRecord))
		return staged_bad(c, "fewer events than counted");
	memcpy(rec, c->p, sizeof(StagedRecord));
	if (rec->size > (Size) (c->end - c->p) || rec->size < sizeof(StagedRecord) ||
		rec->tenant_len < -1 || rec->tenant_len > MESSAGING_MAX_TENANT_ID ||
		(rec->flags & ~(STAGED_SHAPED | STAGED_SAME_TENANT)) != 0 ||
		((rec->flags & STAGED_SHAPED) && c->shape == NULL))
		return staged_bad(c, "a record overruns the row");

	q = c->p + sizeof(StagedRecord);
	if (!(rec->flags & STAGED_SAME_TENANT))
	{
		c->tenant = rec->tenant_len < 0 ? NULL : q;
		c->tenant_len = rec->tenant_len;
		q += INTALIGN(Max(rec->tenant_len, 0));
	}
	else
		rec->tenant_len = c->tenant_len;
	*tenant = c->tenant;
	if (q > c->p + rec->size)
		return staged_bad(c, "a record overruns the row");
	rest = c->p + rec->size - q;

	if (rec->flags & STAGED_SHAPED)
	{
		*payload = shape_join(c, q, rest);
		if (*payload == NULL)
			return staged_bad(c, "a payload does not fit its shape");
	}
	else
	{
		*payload = (Jsonb *) q;
		if (rest < VARHDRSZ || VARATT_IS_EXTENDED(*payload) ||
			VARSIZE(*payload) != rest)
			return staged_bad(c, "a payload has the wrong size");
	}
	if (!container_ok((char *) &(*payload)->root, VARSIZE(*payload) - VARHDRSZ, 0))
		return staged_bad(c, "a payload is not valid jsonb");
	c->p += INTALIGN(rec->size);
	if (c->left > 0)
		c->left--;
	return true;
}

/* Opens the cursor on a row of messaging.outbox_staged as stored. */
static void
staged_open_row(StagedCursor *c, pg_uuid_t *first_id, Datum first_id_d,
				Datum body, Datum shape, bool shape_null, int32 nevents)
{
	memcpy(first_id, DatumGetUUIDP(first_id_d), sizeof(pg_uuid_t));
	/* copies, so that the records are aligned as they were written */
	staged_open(c, first_id, DatumGetByteaPCopy(body),
				shape_null ? NULL : DatumGetByteaPCopy(shape), nevents);
}

/*
 * Reads the whole row once to check it, then goes back to its first
 * record; returns false (c->error says why) when the row cannot be read,
 * so that a caller uses none of its events rather than some.
 */
static bool
staged_check(StagedCursor *c)
{
	StagedRecord rec;
	const char *tenant;
	Jsonb	   *payload;

	while (staged_next(c, &rec, &tenant, &payload))
		;
	c->p = c->start;
	c->left = c->count;
	c->tenant = NULL;
	c->tenant_len = -1;
	return c->error == NULL;
}

/* The SQL readers' warning about a row they skip. */
static void
staged_warn(StagedCursor *c)
{
	char		idbuf[UUID_LEN * 2 + 5];

	messaging_format_uuid(c->first_id, idbuf);
	ereport(WARNING,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("skipping staged events starting at %s: %s", idbuf, c->error),
			 errdetail("The relay moves such a row to messaging.failed_events.")));
}

/*
 * Moves the events of staged rows into the outbox and returns how many
 * moved; see staging.h for the rows' columns.  A row that cannot be read
 * moves nothing: errors[r] (palloc'd by the caller, n entries) then says
 * why, and is NULL for every row that moved.
 */
uint64
messaging_unstage(HeapTuple *rows, TupleDesc desc, uint64 n,
				  const char **errors)
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
		bool		shape_null;
		Datum		d;
		pg_uuid_t	first_id;
		OutboxEvent ev;
		StagedCursor cur;
		StagedRecord rec;
		const char *tenant;
		Jsonb	   *payload;

		CHECK_FOR_INTERRUPTS();
		errors[r] = NULL;
		old = MemoryContextSwitchTo(row_cxt);
		ev.event_type = TextDatumGetCString(heap_getattr(rows[r], 2, desc, &isnull));
		d = heap_getattr(rows[r], 3, desc, &isnull);
		ev.target_app = isnull ? NULL : TextDatumGetCString(d);
		ev.source_app = TextDatumGetCString(heap_getattr(rows[r], 4, desc, &isnull));
		ev.created_at = DatumGetTimestampTz(heap_getattr(rows[r], 5, desc, &isnull));
		ev.correlation_id = NULL;
		d = heap_getattr(rows[r], 7, desc, &shape_null);

		staged_open_row(&cur, &first_id, heap_getattr(rows[r], 1, desc, &isnull),
						heap_getattr(rows[r], 8, desc, &isnull), d, shape_null,
						DatumGetInt32(heap_getattr(rows[r], 6, desc, &isnull)));
		if (!staged_check(&cur))
			errors[r] = cur.error;
		else
		{
			while (staged_next(&cur, &rec, &tenant, &payload))
			{
				memcpy(&ev.id, &rec.id, sizeof(pg_uuid_t));
				ev.tenant_id = tenant ? pnstrdup(tenant, rec.tenant_len) : NULL;
				ev.payload = JsonbPGetDatum(payload);
				messaging_outbox_writer_add(w, &ev);
			}
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
	}
	moved = messaging_outbox_writer_end(w);
	MemoryContextDelete(row_cxt);
	return moved;
}

/*
 * messaging._staged_event(first_id uuid, body bytea, shape bytea,
 *		wanted uuid) RETURNS TABLE (event_id uuid, tenant_id text)
 *
 * For event_status(): event wanted and its tenant when the body of the
 * staged row first_id holds it (one row), or no row.  Not strict: shape
 * may be null.
 */
PG_FUNCTION_INFO_V1(messaging_staged_event);

Datum
messaging_staged_event(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	pg_uuid_t	first_id;
	pg_uuid_t  *wanted;
	StagedCursor cur;
	StagedRecord rec;
	const char *tenant;
	Jsonb	   *payload;

	InitMaterializedSRF(fcinfo, 0);
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3))
		return (Datum) 0;
	wanted = PG_GETARG_UUID_P(3);
	/* the count is not at hand: read to the end */
	staged_open_row(&cur, &first_id, PG_GETARG_DATUM(0), PG_GETARG_DATUM(1),
					PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2),
					PG_ARGISNULL(2), -1);
	while (staged_next(&cur, &rec, &tenant, &payload))
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
	if (cur.error != NULL)
		staged_warn(&cur);
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
		Jsonb	   *payload;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(row_cxt);
		heap_deform_tuple(tuple, desc, row, rownull);

		staged_open_row(&cur, &first_id, row[Anum_staged_first_id - 1],
						row[Anum_staged_body - 1], row[Anum_staged_shape - 1],
						rownull[Anum_staged_shape - 1],
						DatumGetInt32(row[Anum_staged_events - 1]));
		if (!staged_check(&cur))
		{
			/* a row that cannot be read shows none of its events */
			staged_warn(&cur);
			MemoryContextSwitchTo(old);
			MemoryContextReset(row_cxt);
			continue;
		}

		memset(nl, false, sizeof(nl));
		v[1] = row[Anum_staged_event_type - 1];
		v[3] = row[Anum_staged_target_app - 1];
		nl[3] = rownull[Anum_staged_target_app - 1];
		v[5] = row[Anum_staged_source_app - 1];
		v[6] = row[Anum_staged_created_at - 1];
		while (staged_next(&cur, &rec, &tenant, &payload))
		{
			v[0] = UUIDPGetDatum(&rec.id);
			v[2] = JsonbPGetDatum(payload);
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
