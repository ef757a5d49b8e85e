/*-------------------------------------------------------------------------
 *
 * rowstore.h
 *	  Writing rows of the extension's own tables without the executor.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/rowstore.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_ROWSTORE_H
#define MESSAGING_ROWSTORE_H

#include "access/htup.h"
#include "executor/tuptable.h"
#include "utils/relcache.h"

/*
 * messaging.awaiting_ack: event_id, event_type, source_app, target_app,
 * tenant_id, created_at, published_at.
 */
#define Natts_awaiting_ack		7

extern Oid	messaging_table_relid(const char *name);
extern Oid	messaging_table_relid_if_exists(const char *name);
extern void messaging_check_columns(Relation rel, int natts);
extern void messaging_index_rows(Relation rel, TupleTableSlot **slots,
								 Datum **values, bool **nulls, int n);
extern void messaging_insert_row(Relation rel, Datum *values, bool *nulls);
extern void messaging_insert_rows(Relation rel, Datum **values, bool **nulls,
								  int n);
extern Datum messaging_make_array(Datum *elems, bool *nulls, int n,
								  Oid elemtype);

#endif							/* MESSAGING_ROWSTORE_H */
