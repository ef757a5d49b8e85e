/*-------------------------------------------------------------------------
 *
 * staging.h
 *	  Staged events: the events of bulk changes, packed for the relay.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/staging.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_STAGING_H
#define MESSAGING_STAGING_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "storage/block.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/*
 * Staging the events of one statement that share type, target, source
 * and time (the statement-level triggers' side).
 */
typedef struct OutboxStager OutboxStager;

extern OutboxStager *messaging_stager_begin(const char *event_type,
											const char *target_app,
											const char *source_app,
											TimestampTz created_at);
extern void messaging_stager_add(OutboxStager *s, const pg_uuid_t *id,
								 const char *tenant_id, Datum payload);
extern uint64 messaging_stager_end(OutboxStager *s);

/*
 * The relay's side: staged rows, deleted with RETURNING, into the outbox.
 * The columns, in this order: first_id, event_type, target_app,
 * source_app, created_at, events, shape, body.  errors[r] is set for each
 * row that could not be read (and moved nothing), NULL otherwise.
 */
extern uint64 messaging_unstage(HeapTuple *rows, TupleDesc desc, uint64 n,
								const char **errors);
extern BlockNumber messaging_staging_reserve_space(BlockNumber reserve);

#endif							/* MESSAGING_STAGING_H */
