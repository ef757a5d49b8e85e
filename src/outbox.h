/*-------------------------------------------------------------------------
 *
 * outbox.h
 *	  Writing events into the transactional outbox.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/outbox.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_OUTBOX_H
#define MESSAGING_OUTBOX_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "lib/stringinfo.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/* One event as publish_event() and the triggers hand it over. */
typedef struct OutboxEvent
{
	pg_uuid_t	id;
	const char *event_type;
	Datum		payload;		/* jsonb */
	const char *target_app;		/* NULL: broadcast to every application */
	const char *tenant_id;		/* may be NULL */
	const char *source_app;
	const char *correlation_id; /* may be NULL */
	TimestampTz created_at;
} OutboxEvent;

/* Column numbers of messaging.outbox, 1-based as in pg_attribute. */
#define Anum_outbox_id				1
#define Anum_outbox_event_type		2
#define Anum_outbox_payload			3
#define Anum_outbox_target_app		4
#define Anum_outbox_tenant_id		5
#define Anum_outbox_source_app		6
#define Anum_outbox_correlation_id	7
#define Anum_outbox_created_at		8
#define Anum_outbox_attempts		9
#define Anum_outbox_last_error		10
#define Natts_outbox				10

extern Oid	messaging_outbox_relid(void);
extern void messaging_outbox_insert(const OutboxEvent *ev);

/* Writing the events of one statement in batches. */
typedef struct OutboxWriter OutboxWriter;

extern OutboxWriter *messaging_outbox_writer_begin(void);
extern void messaging_outbox_writer_add(OutboxWriter *w, const OutboxEvent *ev);
extern uint64 messaging_outbox_writer_end(OutboxWriter *w);

/* Appends n zero bytes to buf: padding, or room to fill in later. */
static inline void
messaging_append_zeros(StringInfo buf, int n)
{
	enlargeStringInfo(buf, n);
	memset(buf->data + buf->len, 0, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
}

#endif							/* MESSAGING_OUTBOX_H */
