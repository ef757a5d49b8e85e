/*-------------------------------------------------------------------------
 *
 * tracking.c
 *	  C parts of event tracking: reading the shared-memory record of recent
 *	  events for event_status(), and changing it when an acknowledgement or
 *	  a timeout settles an event.
 *
 * Successful events leave no table row (unless messaging.track_success is
 * on); the bounded ring in shared memory (see shmem.c) is what lets
 * event_status() still answer "acknowledged" or "delivered" for them for a
 * while.  The tables stay the authority: event_status() consults them
 * first and the ring only for what they cannot say.
 *
 * The ring is not transactional, so a status change requested by SQL
 * (acknowledge_event(), the acknowledgement timeout) is queued in the
 * current transaction and applied from a transaction callback only when
 * that transaction commits.  A rolled-back transaction or subtransaction
 * drops its queued changes, so the ring never claims an outcome that the
 * tables do not have.  The change becomes visible in the ring just after
 * the commit becomes visible in the tables; event_status() is written to
 * tolerate that short gap.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/tracking.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "messaging.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(messaging_recent_event);
PG_FUNCTION_INFO_V1(messaging_recent_settle);

/* A ring status change waiting for its transaction to commit. */
typedef struct PendingSettle
{
	pg_uuid_t	id;
	RecentEventStatus status;
	TimestampTz at;
	int			nest_level;		/* subtransaction that queued it */
} PendingSettle;

/* Queued changes of the current transaction, in TopTransactionContext. */
static List *pending_settles = NIL;
static bool callbacks_registered = false;

static const char *
recent_status_name(RecentEventStatus status)
{
	switch (status)
	{
		case RECENT_PUBLISHED:
			return "published";
		case RECENT_DELIVERED:
			return "delivered";
		case RECENT_ACKNOWLEDGED:
			return "acknowledged";
		case RECENT_FAILED:
			return "failed";
		case RECENT_EMPTY:
			break;
	}
	return NULL;
}

static void
tracking_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			foreach(lc, pending_settles)
			{
				PendingSettle *p = (PendingSettle *) lfirst(lc);

				(void) messaging_recent_set_status(&p->id, p->status, p->at);
			}
			pending_settles = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:

			/*
			 * XXX: a prepared transaction may commit in another session,
			 * which knows nothing of this list; the ring then keeps the
			 * older status, and only the tables answer correctly.
			 */
			pending_settles = NIL;
			break;
		default:
			break;
	}
}

static void
tracking_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (pending_settles == NIL)
		return;

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			foreach(lc, pending_settles)
			{
				PendingSettle *p = (PendingSettle *) lfirst(lc);

				if (p->nest_level >= level)
					pending_settles = foreach_delete_current(pending_settles,
															 lc);
			}
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			/* the parent now owns what the subtransaction queued */
			foreach(lc, pending_settles)
			{
				PendingSettle *p = (PendingSettle *) lfirst(lc);

				if (p->nest_level >= level)
					p->nest_level = level - 1;
			}
			break;
		default:
			break;
	}
}

static RecentEventStatus
parse_settle_status(const char *name)
{
	if (strcmp(name, "acknowledged") == 0)
		return RECENT_ACKNOWLEDGED;
	if (strcmp(name, "failed") == 0)
		return RECENT_FAILED;
	if (strcmp(name, "delivered") == 0)
		return RECENT_DELIVERED;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unrecognized event outcome \"%s\"", name),
			 errhint("Use \"acknowledged\", \"delivered\" or \"failed\".")));
	return RECENT_EMPTY;		/* keep the compiler quiet */
}

/*
 * messaging._recent_settle(event_ids uuid[], status text, at timestamptz)
 *		RETURNS void
 *
 * Queues a status change of recorded events for the commit of the current
 * transaction.  Events no longer in the ring are skipped at commit.
 */
Datum
messaging_recent_settle(PG_FUNCTION_ARGS)
{
	ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(0);
	char	   *status_name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(2);
	RecentEventStatus status = parse_settle_status(status_name);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	int			level = GetCurrentTransactionNestLevel();
	MemoryContext old;

	if (messaging_recent_events == 0)
		PG_RETURN_VOID();

	if (!callbacks_registered)
	{
		RegisterXactCallback(tracking_xact_callback, NULL);
		RegisterSubXactCallback(tracking_subxact_callback, NULL);
		callbacks_registered = true;
	}

	deconstruct_array(ids, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR,
					  &elems, &nulls, &n);

	old = MemoryContextSwitchTo(TopTransactionContext);
	for (i = 0; i < n; i++)
	{
		PendingSettle *p;

		if (nulls[i])
			continue;
		p = palloc(sizeof(PendingSettle));
		memcpy(&p->id, DatumGetUUIDP(elems[i]), sizeof(pg_uuid_t));
		p->status = status;
		p->at = at;
		p->nest_level = level;
		pending_settles = lappend(pending_settles, p);
	}
	MemoryContextSwitchTo(old);

	PG_RETURN_VOID();
}

/*
 * messaging._recent_event(event_id uuid, OUT status text, ...)
 *		RETURNS record
 *
 * What the ring knows about an event; every column is null when it knows
 * nothing (never seen, or overwritten by newer events).
 */
Datum
messaging_recent_event(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	TupleDesc	desc;
	RecentEvent ev;
	Datum		values[8];
	bool		nulls[8];
	const char *status;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);

	memset(nulls, true, sizeof(nulls));
	memset(values, 0, sizeof(values));

	if (messaging_recent_find(id, &ev) &&
		(status = recent_status_name(ev.status)) != NULL)
	{
		values[0] = CStringGetTextDatum(status);
		nulls[0] = false;
		values[1] = CStringGetTextDatum(ev.event_type);
		nulls[1] = false;
		if (ev.target_app[0] != '\0')
		{
			values[2] = CStringGetTextDatum(ev.target_app);
			nulls[2] = false;
		}
		if (ev.tenant_id[0] != '\0')
		{
			values[3] = CStringGetTextDatum(ev.tenant_id);
			nulls[3] = false;
		}
		values[4] = Int32GetDatum(ev.attempts);
		nulls[4] = false;
		if (ev.created_at != 0)
		{
			values[5] = TimestampTzGetDatum(ev.created_at);
			nulls[5] = false;
		}
		if (ev.published_at != 0)
		{
			values[6] = TimestampTzGetDatum(ev.published_at);
			nulls[6] = false;
		}
		if (ev.status == RECENT_ACKNOWLEDGED && ev.acknowledged_at != 0)
		{
			values[7] = TimestampTzGetDatum(ev.acknowledged_at);
			nulls[7] = false;
		}
	}

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
