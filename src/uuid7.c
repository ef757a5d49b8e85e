/*-------------------------------------------------------------------------
 *
 * uuid7.c
 *	  Time-ordered event ids (UUID version 7, RFC 9562).
 *
 * Layout: 48 bits of Unix time in milliseconds, the version nibble (7),
 * 12 bits that count events within the same millisecond of this backend
 * (so ids from one session sort in call order), the variant bits, and 62
 * random bits.  When more than 4096 ids are asked for in one millisecond
 * the clock part is advanced by one, keeping the order.
 *
 * Randomness comes from the backend's pseudo-random generator, seeded
 * from a strong source when the backend starts: event ids must not
 * collide, but they are not secrets.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/uuid7.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "fmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "uuid7.h"

PG_FUNCTION_INFO_V1(messaging_uuid_generate_v7);

static uint64 last_ms = 0;
static uint32 last_seq = 0;

void
messaging_uuid7_generate(TimestampTz at, pg_uuid_t *out)
{
	uint64		ms;
	uint32		seq;
	uint64		rnd;
	int			i;

	/* TimestampTz counts microseconds since 2000-01-01. */
	ms = (uint64) (at / 1000) +
		(uint64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;

	if (ms <= last_ms)
	{
		ms = last_ms;
		seq = last_seq + 1;
		if (seq > 0xFFF)
		{
			ms++;
			seq = 0;
		}
	}
	else
		seq = (uint32) (pg_prng_uint32(&pg_global_prng_state) & 0x1FF);
	last_ms = ms;
	last_seq = seq;

	for (i = 0; i < 6; i++)
		out->data[i] = (unsigned char) (ms >> (40 - 8 * i));
	out->data[6] = (unsigned char) (0x70 | ((seq >> 8) & 0x0F));
	out->data[7] = (unsigned char) (seq & 0xFF);

	rnd = pg_prng_uint64(&pg_global_prng_state);
	out->data[8] = (unsigned char) (0x80 | ((rnd >> 56) & 0x3F));
	for (i = 9; i < 16; i++)
		out->data[i] = (unsigned char) (rnd >> (8 * (15 - i)));
}

/*
 * messaging.uuid_generate_v7() RETURNS uuid
 */
Datum
messaging_uuid_generate_v7(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	messaging_uuid7_generate(GetCurrentTimestamp(), id);
	PG_RETURN_UUID_P(id);
}
