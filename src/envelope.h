/*-------------------------------------------------------------------------
 *
 * envelope.h
 *	  CloudEvents 1.0 envelopes and the routing of outgoing events.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/envelope.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_ENVELOPE_H
#define MESSAGING_ENVELOPE_H

#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

typedef struct EnvelopeFields
{
	const pg_uuid_t *id;
	const char *event_type;
	const char *source_app;
	const char *target_app;		/* NULL for a broadcast */
	const char *tenant_id;		/* may be NULL */
	const char *correlation_id; /* may be NULL */
	TimestampTz time;
	Jsonb	   *data;
} EnvelopeFields;

extern void messaging_envelope_build(StringInfo buf, const EnvelopeFields *f);
extern void messaging_format_uuid(const pg_uuid_t *id, char *out);
extern const char *messaging_route(const char *target_app,
								   const char *event_type,
								   StringInfo routing_key);

#endif							/* MESSAGING_ENVELOPE_H */
