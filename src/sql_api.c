/*-------------------------------------------------------------------------
 *
 * sql_api.c
 *	  SQL-callable functions of the messaging extension: publish_event()
 *	  and the connection_status view's function.
 *
 * publish_event() validates its arguments, writes one outbox row in the
 * caller's transaction and returns the new event's id.  It does no network
 * I/O: the relay worker publishes the row after commit, and a rollback
 * (or a rolled-back savepoint) removes it with everything else.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/sql_api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "messaging.h"
#include "outbox.h"
#include "shmem.h"
#include "uuid7.h"
#include "validate.h"

PG_FUNCTION_INFO_V1(messaging_publish_event);
PG_FUNCTION_INFO_V1(messaging_connection_status);
PG_FUNCTION_INFO_V1(messaging_counter_writer);

static const char *
text_arg_or_null(FunctionCallInfo fcinfo, int argno)
{
	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * messaging.publish_event(event_type text, payload jsonb,
 *						   target_app text, tenant_id text,
 *						   source_app text, correlation_id text)
 *		RETURNS uuid
 */
Datum
messaging_publish_event(PG_FUNCTION_ARGS)
{
	OutboxEvent ev;
	pg_uuid_t  *result;

	ev.event_type = text_arg_or_null(fcinfo, 0);
	messaging_check_event_type(ev.event_type, "event_type");

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be null"),
				 errhint("Pass '{}'::jsonb for an event without data.")));
	ev.payload = PG_GETARG_DATUM(1);
	messaging_check_payload_size(ev.payload, "payload");

	ev.target_app = text_arg_or_null(fcinfo, 2);
	messaging_check_app_name(ev.target_app, "target_app");

	ev.tenant_id = text_arg_or_null(fcinfo, 3);
	messaging_check_tenant_id(ev.tenant_id, "tenant_id");

	ev.source_app = text_arg_or_null(fcinfo, 4);
	if (ev.source_app == NULL)
		ev.source_app = messaging_app_name;
	else
		messaging_check_app_name(ev.source_app, "source_app");

	ev.correlation_id = text_arg_or_null(fcinfo, 5);
	messaging_check_correlation_id(ev.correlation_id, "correlation_id");

	/* Make sure a toasted or compressed payload is stored flat. */
	ev.payload = PointerGetDatum(PG_DETOAST_DATUM(ev.payload));

	ev.created_at = GetCurrentTimestamp();
	messaging_uuid7_generate(ev.created_at, &ev.id);

	messaging_outbox_insert(&ev);

	result = palloc(sizeof(pg_uuid_t));
	memcpy(result, &ev.id, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}

static const char *
conn_state_name(MessagingConnState state)
{
	switch (state)
	{
		case MSG_CONN_DISCONNECTED:
			return "disconnected";
		case MSG_CONN_CONNECTING:
			return "connecting";
		case MSG_CONN_CONNECTED:
			return "connected";
		case MSG_CONN_BLOCKED:
			return "blocked";
		case MSG_CONN_STANDBY:
			return "standby";
	}
	return "disconnected";
}

/*
 * messaging._connection_status() RETURNS SETOF record
 *
 * One row per worker, read from shared memory.  Broker credentials are
 * never stored there, so none can show.
 */
Datum
messaging_connection_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	static const char *const names[MSG_NUM_WORKERS] = {"relay", "consumer"};
	int			i;

	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < MSG_NUM_WORKERS; i++)
	{
		MessagingWorkerStatus st;
		Datum		values[14];
		bool		nulls[14];

		messaging_status_read((MessagingWorkerKind) i, &st);
		memset(nulls, false, sizeof(nulls));

		values[0] = CStringGetTextDatum(names[i]);
		if (st.pid != 0)
			values[1] = Int32GetDatum(st.pid);
		else
			nulls[1] = true;
		values[2] = CStringGetTextDatum(st.pid != 0 ?
										conn_state_name(st.state) :
										"disconnected");
		if (st.host[0] != '\0')
		{
			values[3] = CStringGetTextDatum(st.host);
			values[4] = Int32GetDatum(st.port);
		}
		else
			nulls[3] = nulls[4] = true;
		if (st.pid != 0 && st.connected_since != 0)
			values[5] = TimestampTzGetDatum(st.connected_since);
		else
			nulls[5] = true;
		if (st.last_error[0] != '\0')
		{
			values[6] = CStringGetTextDatum(st.last_error);
			values[7] = TimestampTzGetDatum(st.last_error_at);
		}
		else
			nulls[6] = nulls[7] = true;
		values[8] = Int64GetDatum(st.reconnects);
		values[9] = Int64GetDatum(st.succeeded);
		values[10] = Int64GetDatum(st.failed);
		values[11] = Int64GetDatum(st.backlog);
		if (st.last_success != 0)
			values[12] = TimestampTzGetDatum(st.last_success);
		else
			nulls[12] = true;
		if (i == MSG_WORKER_CONSUMER && st.depth_read_at != 0)
			values[13] = Int64GetDatum(st.dead_letter_depth);
		else
			nulls[13] = true;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc,
							 values, nulls);
	}

	return (Datum) 0;
}

/*
 * messaging._counter_writer() RETURNS smallint
 *
 * The counter rows the calling process writes: 0 for the relay, 2 for the
 * consumer, 1 for any other session.  Keeping the workers' rows apart from
 * the sessions' means that a session's open transaction never makes a
 * worker wait for a counter row.
 */
Datum
messaging_counter_writer(PG_FUNCTION_ARGS)
{
	MessagingWorkerStatus st;

	messaging_status_read(MSG_WORKER_RELAY, &st);
	if (st.pid == MyProcPid)
		PG_RETURN_INT16(0);
	messaging_status_read(MSG_WORKER_CONSUMER, &st);
	if (st.pid == MyProcPid)
		PG_RETURN_INT16(2);
	PG_RETURN_INT16(1);
}
