/*-------------------------------------------------------------------------
 *
 * rowstore.c
 *	  Writing rows of the extension's own tables without the executor.
 *
 * The outbox insert of every publishing call and the relay's bookkeeping
 * for every confirmed event are on hot paths.  Going through SPI or the
 * executor costs a plan and an executor state per row; these functions
 * write the heap tuple and its index entries directly instead.  They fire
 * no triggers and check no constraints: callers validate what they write,
 * and the tables are the extension's own.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/rowstore.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "messaging.h"
#include "rowstore.h"

/*
 * The OID of one of the extension's tables, with an error a user can act
 * on when the extension is missing.
 */
Oid
messaging_table_relid(const char *name)
{
	Oid			nsp = get_namespace_oid(MESSAGING_SCHEMA, true);
	Oid			relid = InvalidOid;

	if (OidIsValid(nsp))
		relid = get_relname_relid(name, nsp);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s.%s\" does not exist", MESSAGING_SCHEMA, name),
				 errhint("Run CREATE EXTENSION messaging in this database.")));
	return relid;
}

/*
 * The OID of one of the extension's tables, or InvalidOid when this
 * database's version of the extension has no such table.
 */
Oid
messaging_table_relid_if_exists(const char *name)
{
	Oid			nsp = get_namespace_oid(MESSAGING_SCHEMA, true);

	return OidIsValid(nsp) ? get_relname_relid(name, nsp) : InvalidOid;
}

/*
 * Refuses a table whose columns are not those the C code writes, so that
 * a mismatched install script fails loudly instead of writing garbage.
 */
void
messaging_check_columns(Relation rel, int natts)
{
	if (RelationGetDescr(rel)->natts != natts)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s.%s\" has %d columns, expected %d",
						MESSAGING_SCHEMA, RelationGetRelationName(rel),
						RelationGetDescr(rel)->natts, natts),
				 errhint("Update the extension with ALTER EXTENSION messaging UPDATE.")));
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
 * Inserts the index entries of n new heap rows: slots[i] holds row i (with
 * its TID set), values[i] and nulls[i] its column values.  Indexes on plain
 * columns (the extension's own) are maintained directly from the values,
 * each index opened once for all rows; an index with expressions or a
 * predicate, which a DBA might add, goes through the executor's general
 * path.
 */
void
messaging_index_rows(Relation rel, TupleTableSlot **slots, Datum **values,
					 bool **nulls, int n)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		general = false;
	int			i;

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
			(void) index_insert(index, ivalues, inulls, &slots[i]->tts_tid,
								rel,
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

		/* keep only the indexes the loop above could not handle */
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
}

/*
 * Inserts one row into rel (opened by the caller with RowExclusiveLock)
 * and its indexes.
 */
void
messaging_insert_row(Relation rel, Datum *values, bool *nulls)
{
	HeapTuple	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	TupleTableSlot *slot;

	simple_heap_insert(rel, tuple);
	slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
	ExecStoreHeapTuple(tuple, slot, false);
	slot->tts_tid = tuple->t_self;
	messaging_index_rows(rel, &slot, &values, &nulls, 1);
	ExecDropSingleTupleTableSlot(slot);
	heap_freetuple(tuple);
}

/*
 * Inserts n rows into rel (opened by the caller with RowExclusiveLock) and
 * its indexes, with one heap_multi_insert() and each index opened once:
 * values[i] and nulls[i] are row i's columns.
 */
void
messaging_insert_rows(Relation rel, Datum **values, bool **nulls, int n)
{
	TupleDesc	desc;
	TupleTableSlot **slots;
	int			i;

	if (n <= 0)
		return;
	if (n == 1)
	{
		messaging_insert_row(rel, values[0], nulls[0]);
		return;
	}

	/* an unreferenced copy spares the resource owner a pin per slot */
	desc = CreateTupleDescCopy(RelationGetDescr(rel));
	slots = palloc(sizeof(TupleTableSlot *) * n);
	for (i = 0; i < n; i++)
	{
		slots[i] = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
		ExecStoreHeapTuple(heap_form_tuple(desc, values[i], nulls[i]),
						   slots[i], true);
	}
	heap_multi_insert(rel, slots, n, GetCurrentCommandId(true), 0, NULL);
	messaging_index_rows(rel, slots, values, nulls, n);

	for (i = 0; i < n; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	pfree(slots);
	FreeTupleDesc(desc);
}

/*
 * A one-dimensional array of n elements of elemtype, for passing sets of
 * values to SQL in one call.
 */
Datum
messaging_make_array(Datum *elems, bool *nulls, int n, Oid elemtype)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval,
											  typalign));
}
