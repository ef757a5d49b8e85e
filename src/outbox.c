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

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/index.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "messaging.h"
#include "outbox.h"
#include "shmem.h"

Oid
messaging_outbox_relid(void)
{
	Oid			nsp = get_namespace_oid(MESSAGING_SCHEMA, true);
	Oid			relid = InvalidOid;

	if (OidIsValid(nsp))
		relid = get_relname_relid("outbox", nsp);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"messaging.outbox\" does not exist"),
				 errhint("Run CREATE EXTENSION messaging in this database.")));
	return relid;
}

static Datum
cstring_datum_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL);
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

/* Whether an index can be maintained from the row's values alone. */
static bool
is_plain_index(Relation index, IndexInfo *info)
{
	return info->ii_Expressions == NIL && info->ii_Predicate == NIL &&
		info->ii_ExclusionOps == NULL &&
		(!info->ii_Unique || index->rd_index->indimmediate);
}

/*
 * Inserts into each index of the outbox.  Indexes on plain columns (the
 * extension's own) are maintained directly from the row's values; an index
 * with expressions or a predicate, which a DBA might add, goes through the
 * executor's general path.
 */
static void
outbox_insert_indexes(Relation rel, HeapTuple tuple, Datum *values,
					  bool *nulls)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		general = false;

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];
		int			i;

		if (!info->ii_ReadyForInserts || !is_plain_index(index, info))
		{
			general = general || info->ii_ReadyForInserts;
			index_close(index, NoLock);
			continue;
		}

		for (i = 0; i < info->ii_NumIndexAttrs; i++)
		{
			AttrNumber	attno = info->ii_IndexAttrNumbers[i];

			ivalues[i] = values[attno - 1];
			inulls[i] = nulls[attno - 1];
		}
		(void) index_insert(index, ivalues, inulls, &tuple->t_self, rel,
							info->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
							false, info);
		index_close(index, NoLock);
	}
	list_free(indexes);

	if (general)
	{
		EState	   *estate = CreateExecutorState();
		ResultRelInfo *rri = makeNode(ResultRelInfo);
		TupleTableSlot *slot;
		int			i;

		InitResultRelInfo(rri, rel, 1, NULL, 0);
		ExecOpenIndices(rri, false);

		/* keep only the indexes the loop above could not handle */
		for (i = 0; i < rri->ri_NumIndices; i++)
		{
			IndexInfo  *info = rri->ri_IndexRelationInfo[i];

			if (is_plain_index(rri->ri_IndexRelationDescs[i], info))
				info->ii_ReadyForInserts = false;
		}

		slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel),
									  &TTSOpsHeapTuple);
		ExecStoreHeapTuple(tuple, slot, false);
		slot->tts_tid = tuple->t_self;
		(void) messaging_insert_index_tuples(rri, slot, estate);

		ExecCloseIndices(rri);
		ExecResetTupleTable(estate->es_tupleTable, false);
		FreeExecutorState(estate);
	}
}

/* Refuses an outbox whose columns are not those of outbox.h. */
static void
outbox_check_columns(Relation rel)
{
	if (RelationGetDescr(rel)->natts != Natts_outbox)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"messaging.outbox\" has %d columns, expected %d",
						RelationGetDescr(rel)->natts, Natts_outbox),
				 errhint("Update the extension with ALTER EXTENSION messaging UPDATE.")));
}

void
messaging_outbox_insert(const OutboxEvent *ev)
{
	Relation	rel;
	Datum		values[Natts_outbox];
	bool		nulls[Natts_outbox];
	HeapTuple	tuple;

	rel = table_open(messaging_outbox_relid(), RowExclusiveLock);
	if (RelationGetDescr(rel)->natts != Natts_outbox)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"messaging.outbox\" has %d columns, expected %d",
						RelationGetDescr(rel)->natts, Natts_outbox),
				 errhint("Update the extension with ALTER EXTENSION messaging UPDATE.")));

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

	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	simple_heap_insert(rel, tuple);
	outbox_insert_indexes(rel, tuple, values, nulls);

	heap_freetuple(tuple);
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
	List	   *indexes;
	ListCell   *lc;
	bool		general = false;
	int			i;

	if (n <= 0)
		return;

	rel = table_open(messaging_outbox_relid(), RowExclusiveLock);
	outbox_check_columns(rel);
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

	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];
		int			k;

		if (!info->ii_ReadyForInserts || !is_plain_index(index, info))
		{
			general = general || info->ii_ReadyForInserts;
			index_close(index, NoLock);
			continue;
		}
		for (i = 0; i < n; i++)
		{
			for (k = 0; k < info->ii_NumIndexAttrs; k++)
			{
				AttrNumber	attno = info->ii_IndexAttrNumbers[k];

				ivalues[k] = values[i][attno - 1];
				inulls[k] = nulls[i][attno - 1];
			}
			(void) index_insert(index, ivalues, inulls, &slots[i]->tts_tid, rel,
								info->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
								false, info);
		}
		index_close(index, NoLock);
	}
	list_free(indexes);

	if (general)
	{
		EState	   *estate = CreateExecutorState();
		ResultRelInfo *rri = makeNode(ResultRelInfo);

		InitResultRelInfo(rri, rel, 1, NULL, 0);
		ExecOpenIndices(rri, false);
		for (i = 0; i < rri->ri_NumIndices; i++)
		{
			IndexInfo  *info = rri->ri_IndexRelationInfo[i];

			if (is_plain_index(rri->ri_IndexRelationDescs[i], info))
				info->ii_ReadyForInserts = false;
		}
		for (i = 0; i < n; i++)
		{
			ResetPerTupleExprContext(estate);
			(void) messaging_insert_index_tuples(rri, slots[i], estate);
		}
		ExecCloseIndices(rri);
		FreeExecutorState(estate);
	}

	for (i = 0; i < n; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	pfree(slots);
	pfree(values);
	pfree(nulls);
	FreeTupleDesc(desc);
	table_close(rel, NoLock);

	messaging_note_outbox_write();
}
