/*-------------------------------------------------------------------------
 *
 * envelope.c
 *	  CloudEvents 1.0 envelopes (JSON, structured content mode) and the
 *	  routing of outgoing events.
 *
 * An event travels as one JSON object:
 *
 *	{"specversion": "1.0", "id": "<uuid>", "source": "<source app>",
 *	 "type": "<event type>", "time": "<RFC 3339, UTC>",
 *	 "datacontenttype": "application/json", "data": <payload>,
 *	 "tenantid": ..., "targetapp": ..., "correlationid": ...}
 *
 * The last three are CloudEvents extension attributes, present only when
 * set.  Routing: an event for one application goes to the topic exchange
 * inter-app-events with routing key "<target app>.<event type>"; an event
 * without a target goes to the fanout exchange inter-app-broadcast, with
 * the event type as (ignored) routing key.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/envelope.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "envelope.h"
#include "messaging.h"

PG_FUNCTION_INFO_V1(messaging_event_envelope);

void
messaging_format_uuid(const pg_uuid_t *id, char *out)
{
	static const char hex[] = "0123456789abcdef";
	int			i;
	char	   *p = out;

	for (i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		*p++ = hex[id->data[i] >> 4];
		*p++ = hex[id->data[i] & 0x0F];
	}
	*p = '\0';
}

/* RFC 3339 in UTC with microseconds, independent of DateStyle/TimeZone. */
static void
append_rfc3339(StringInfo buf, TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	appendStringInfo(buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
					 tm.tm_year, tm.tm_mon, tm.tm_mday,
					 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

static void
append_member(StringInfo buf, const char *key, const char *value)
{
	appendStringInfoChar(buf, ',');
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
	escape_json(buf, value);
}

void
messaging_envelope_build(StringInfo buf, const EnvelopeFields *f)
{
	char		idbuf[UUID_LEN * 2 + 5];

	messaging_format_uuid(f->id, idbuf);

	appendStringInfoString(buf, "{\"specversion\":\"1.0\",\"id\":\"");
	appendStringInfoString(buf, idbuf);
	appendStringInfoChar(buf, '"');
	append_member(buf, "source", f->source_app);
	append_member(buf, "type", f->event_type);
	appendStringInfoString(buf, ",\"time\":\"");
	append_rfc3339(buf, f->time);
	appendStringInfoString(buf,
						   "\",\"datacontenttype\":\"application/json\",\"data\":");
	(void) JsonbToCString(buf, &f->data->root, VARSIZE(f->data));
	if (f->tenant_id != NULL)
		append_member(buf, "tenantid", f->tenant_id);
	if (f->target_app != NULL)
		append_member(buf, "targetapp", f->target_app);
	if (f->correlation_id != NULL)
		append_member(buf, "correlationid", f->correlation_id);
	appendStringInfoChar(buf, '}');
}

/*
 * Returns the exchange an event goes to and fills in its routing key.
 */
const char *
messaging_route(const char *target_app, const char *event_type,
				StringInfo routing_key)
{
	resetStringInfo(routing_key);
	if (target_app == NULL)
	{
		appendStringInfoString(routing_key, event_type);
		return MESSAGING_FANOUT_EXCHANGE;
	}
	appendStringInfo(routing_key, "%s.%s", target_app, event_type);
	return MESSAGING_TOPIC_EXCHANGE;
}

static const char *
text_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		return NULL;
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * messaging.event_envelope(id uuid, event_type text, source_app text,
 *							time timestamptz, data jsonb, target_app text,
 *							tenant_id text, correlation_id text)
 *		RETURNS jsonb
 *
 * The envelope as the relay sends it, for failure records and inspection.
 */
Datum
messaging_event_envelope(PG_FUNCTION_ARGS)
{
	EnvelopeFields f;
	StringInfoData buf;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) ||
		PG_ARGISNULL(3) || PG_ARGISNULL(4))
		PG_RETURN_NULL();

	f.id = PG_GETARG_UUID_P(0);
	f.event_type = text_arg(fcinfo, 1);
	f.source_app = text_arg(fcinfo, 2);
	f.time = PG_GETARG_TIMESTAMPTZ(3);
	f.data = PG_GETARG_JSONB_P(4);
	f.target_app = text_arg(fcinfo, 5);
	f.tenant_id = text_arg(fcinfo, 6);
	f.correlation_id = text_arg(fcinfo, 7);

	initStringInfo(&buf);
	messaging_envelope_build(&buf, &f);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
