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
 * Inserts a new heap tuple's entries into each index of its relation.
 * Indexes on plain columns (the extension's own) are maintained directly
 * from the row's values; an index with expressions or a predicate, which a
 * DBA might add, goes through the executor's general path.
 */
void
messaging_index_row(Relation rel, HeapTuple tuple, Datum *values,
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

/*
 * Inserts one row into rel (opened by the caller with RowExclusiveLock)
 * and its indexes.
 */
void
messaging_insert_row(Relation rel, Datum *values, bool *nulls)
{
	HeapTuple	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);

	simple_heap_insert(rel, tuple);
	messaging_index_row(rel, tuple, values, nulls);
	heap_freetuple(tuple);
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
