/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  Writing events into the transactional outbox, messaging.outbox.
 *
 * publish_event() and the row triggers insert here in the caller's
 * transaction; the relay worker publishes what commits.  The insert is done
 * directly through the table access method and the executor's index
 * maintenance rather than through SPI, because it sits on the hot path of
 * every publishing transaction: it costs about as much as the row's share
 * of a plain INSERT.  Nothing here talks to the network.
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

#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "executor/executor.h"
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

void
messaging_outbox_insert(const OutboxEvent *ev)
{
	Relation	rel;
	Datum		values[Natts_outbox];
	bool		nulls[Natts_outbox];
	HeapTuple	tuple;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;

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

	estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);

	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel),
								  &TTSOpsHeapTuple);
	ExecStoreHeapTuple(tuple, slot, false);
	simple_table_tuple_insert(rel, slot);
	if (rri->ri_NumIndices > 0)
		(void) messaging_insert_index_tuples(rri, slot, estate);

	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	heap_freetuple(tuple);
	table_close(rel, NoLock);

	messaging_note_outbox_write();
}
