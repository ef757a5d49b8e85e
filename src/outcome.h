/*-------------------------------------------------------------------------
 *
 * outcome.h
 *	  Recording events the broker has confirmed.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/outcome.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_OUTCOME_H
#define MESSAGING_OUTCOME_H

#include "storage/itemptr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/* What the bookkeeping needs of one confirmed outbox row. */
typedef struct ConfirmedEvent
{
	ItemPointerData ctid;		/* the outbox row, locked by the caller */
	pg_uuid_t	id;
	const char *event_type;
	const char *target_app;		/* NULL for a broadcast */
	const char *tenant_id;		/* may be NULL */
	const char *source_app;
	TimestampTz created_at;
} ConfirmedEvent;

extern void messaging_record_confirmed(const ConfirmedEvent *events, int n);

#endif							/* MESSAGING_OUTCOME_H */
