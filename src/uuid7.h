/*-------------------------------------------------------------------------
 *
 * uuid7.h
 *	  Time-ordered event ids (UUID version 7).
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/uuid7.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_UUID7_H
#define MESSAGING_UUID7_H

#include "utils/timestamp.h"
#include "utils/uuid.h"

extern void messaging_uuid7_generate(TimestampTz at, pg_uuid_t *out);

#endif							/* MESSAGING_UUID7_H */
