/*-------------------------------------------------------------------------
 *
 * relay.c
 *	  The relay worker: publishes committed outbox rows to RabbitMQ with
 *	  publisher confirms, and deletes them once the broker has them.
 *
 * One pass ("drain") is one database transaction:
 *
 *	0. Move the events that statement-level triggers staged in
 *	   messaging.outbox_staged into the outbox (staging.c), oldest first;
 *	   outbox rows from the oldest remaining staged row's first id on are
 *	   left for the next pass, so that the events of one transaction stay
 *	   in id order however they were written.
 *	1. Read up to messaging.publish_batch_size outbox rows in id order
 *	   with FOR UPDATE SKIP LOCKED, build each envelope and publish it
 *	   with the mandatory flag on a channel in confirm mode.  While the
 *	   broker has messaging.publish_window messages unconfirmed, stop and
 *	   read confirms; otherwise read whatever confirms have arrived and go
 *	   on, so that publishing never waits for one confirm at a time.
 *	2. Read the next rows (id greater than the last one read) the same
 *	   way, until the outbox yields nothing more or the pass has handled
 *	   forty batches or 64 MB of messages; rows that commit later with a
 *	   smaller id are picked up by the next pass, which starts again from
 *	   the smallest id.  Whenever the window is full, first record what
 *	   the broker has settled (below), so that this work overlaps the
 *	   broker's.
 *	3. Wait for the remaining confirms, record the rest, and commit
 *	   (asynchronously: a commit lost in a crash only republishes).
 *	   Recording: an acked row is deleted and only counted, a directed
 *	   event starts to await its acknowledgement (src/outcome.c); a
 *	   returned (unroutable) row, a row nacked
 *	   messaging.publish_max_attempts times, and a row no AMQP message
 *	   can carry or the broker refused move to failed_events; other
 *	   nacked rows stay for another pass (messaging._relay_outcome()).
 *
 * Nothing is deleted before the broker confirmed it, so a crash of the
 * worker, the server or the broker at any point leaves the row in the
 * outbox and it is published again: delivery is at-least-once, and a
 * republished event keeps its id (the AMQP message_id).
 *
 * When the connection fails, confirmed rows of the current pass are still
 * recorded, the rest stay, and the worker reconnects with exponential
 * backoff and jitter (see amqp_conn.c), logging the change of state once.
 * A broker that blocks the connection (resource alarm) is waited out
 * without publishing.  The worker sleeps on its latch, which committing
 * publishers set, and on the socket, servicing heartbeats while idle.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/relay.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

/* These are always necessary for a bgworker */
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"

/* these headers are used by this particular worker's code */
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "amqp_conn.h"
#include "envelope.h"
#include "messaging.h"
#include "outcome.h"
#include "rowstore.h"
#include "shmem.h"
#include "staging.h"

/* A pass handles at most this many batches, or bytes, before it commits. */
#define RELAY_BATCHES_PER_PASS	40
#define RELAY_PASS_BYTES		((int64) 64 * 1024 * 1024)

/*
 * Staged rows moved into the outbox per pass: each holds up to a page of
 * events, so this is about a pass's worth of events of a few hundred bytes.
 */
#define RELAY_UNSTAGE_ROWS		256

/* Messages from this size on are followed by a short look at the socket. */
#define RELAY_LARGE_MESSAGE			(64 * 1024)
#define RELAY_LARGE_MESSAGE_WAIT_MS	10

/* Slice of a blocking wait, so that interrupts are seen promptly. */
#define RELAY_WAIT_SLICE_MS		100

typedef enum RelayOutcome
{
	RELAY_INFLIGHT = 0,			/* published, no confirm yet */
	RELAY_ACKED,
	RELAY_NACKED,
	RELAY_RETURNED,				/* unroutable: basic.return received */
	RELAY_REJECTED				/* cannot be published at all */
} RelayOutcome;

/* One outbox row of the current pass. */
typedef struct RelayEvent
{
	ItemPointerData ctid;
	pg_uuid_t	id;
	char	   *event_type;
	char	   *target_app;
	char	   *tenant_id;
	char	   *source_app;
	char	   *exchange;
	char	   *routing_key;
	int32		attempts;
	TimestampTz created_at;
	uint64		tag;			/* delivery tag; 0 when never published */
	RelayOutcome outcome;
	bool		confirmed;		/* settled: acked, nacked, or rejected */
	char	   *error;
} RelayEvent;

/* State of the pass in progress. */
typedef struct RelayPass
{
	RelayEvent *events;
	int			nevents;		/* events read (and published or rejected) */
	int			capacity;
	int			unconfirmed;	/* published events not yet acked or nacked */
	int			low;			/* no event below this one is in flight */
	int			recorded;		/* events below this one are recorded */
	int64		bytes;			/* message bytes published */
	bool		broken;			/* connection lost during the pass */
} RelayPass;

static AmqpConn conn;
static AmqpBackoff backoff;
static uint64 next_tag = 1;		/* delivery tag of the next publish */
static char *connected_with = NULL;	/* broker URL and CA file in use */
static bool extension_ready = false;
static AmqpLink broker = {&conn, &backoff, MSG_WORKER_RELAY, "relay"};

/*
 * A broker closes the channel over a message it refuses outright (406
 * PRECONDITION_FAILED, e.g. larger than its max_message_size), and the
 * messages then in flight are lost with no confirm.  The relay then
 * publishes one message at a time ("isolating") up to the last event that
 * was in flight, so that the next close names the culprit, which fails,
 * while the others go out.
 */
static unsigned channel_close_code = 0;	/* of the last channel close */
static bool isolating = false;
static pg_uuid_t isolate_upto;
static MemoryContext pass_context = NULL;
static MemoryContext row_context = NULL;
static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr outcome_plan = NULL;
static SPIPlanPtr count_plan = NULL;
static SPIPlanPtr unstage_plan = NULL;
static SPIPlanPtr aside_plan = NULL;
static Oid	planned_staged = InvalidOid;	/* outbox_staged the plans know */
static TimestampTz last_count = 0;
static TimestampTz last_maintenance = 0;
static TimestampTz last_pass_end = 0;
static int	last_pass_events = 0;

/* Interval of messaging._relay_maintenance() calls. */
#define RELAY_MAINTENANCE_MS	10000

static void
set_state(MessagingConnState state, const char *error)
{
	amqp_conn_report(&conn, MSG_WORKER_RELAY, state, error);
}

/* The settings a connection was made with, to notice when they change. */
static char *
connection_settings(void)
{
	return MemoryContextStrdup(TopMemoryContext,
							   psprintf("%s\n%s", messaging_broker_url,
										messaging_broker_ca_file));
}

/*
 * Connects and prepares the publishing channel: declares both exchanges
 * (durable, idempotent) and enables confirm mode.
 */
static bool
relay_connect(void)
{
	char		name[64];

	set_state(MSG_CONN_CONNECTING, NULL);
	snprintf(name, sizeof(name), "messaging relay (pid %d)", MyProcPid);

	if (!amqp_conn_open(&conn, messaging_broker_url, messaging_broker_ca_file,
						name))
		goto fail;
	if (!amqp_conn_declare_exchange(&conn, 1, MESSAGING_TOPIC_EXCHANGE, "topic") ||
		!amqp_conn_declare_exchange(&conn, 1, MESSAGING_FANOUT_EXCHANGE, "fanout"))
		goto fail;
	if (!amqp_conn_confirm_channel(&conn, 1, false))
		goto fail;
	next_tag = 1;
	if (connected_with)
		pfree(connected_with);
	connected_with = connection_settings();

	amqp_link_up(&broker, "");
	return true;

fail:
	amqp_link_failed(&broker, "connect to",
					 "Events stay in the outbox.");
	return false;
}

/*
 * The connection broke: forget it and schedule a reconnect.
 */
static void
relay_lost_connection(void)
{
	amqp_link_lost(&broker);
}

/* The event published with a delivery tag; tags grow with the index. */
static RelayEvent *
event_for_tag(RelayPass *pass, uint64 tag)
{
	int			i;

	for (i = pass->low; i < pass->nevents; i++)
	{
		if (pass->events[i].tag == tag)
			return &pass->events[i];
		if (pass->events[i].tag > tag)
			break;
	}
	return NULL;
}

/*
 * Applies the broker's ack or nack to one event.  A returned event is
 * acked too (the return comes first) and stays returned; a nack outranks
 * both.
 */
static void
settle(RelayPass *pass, RelayEvent *ev, bool ack)
{
	if (ev->confirmed)
		return;
	ev->confirmed = true;
	if (!ack)
		ev->outcome = RELAY_NACKED;
	else if (ev->outcome == RELAY_INFLIGHT)
		ev->outcome = RELAY_ACKED;
	pass->unconfirmed--;
}

/* basic.ack / basic.nack: one tag, or every tag up to it. */
static void
handle_confirm(RelayPass *pass, uint64 tag, bool multiple, bool ack)
{
	if (multiple)
	{
		while (pass->low < pass->nevents &&
			   (pass->events[pass->low].confirmed ||
				pass->events[pass->low].tag <= tag))
			settle(pass, &pass->events[pass->low++], ack);
	}
	else
	{
		RelayEvent *ev = event_for_tag(pass, tag);

		if (ev != NULL)
			settle(pass, ev, ack);
	}
	while (pass->low < pass->nevents && pass->events[pass->low].confirmed)
		pass->low++;
}

/*
 * basic.return: the broker could route the message nowhere.  The message
 * comes back with its properties; its message_id names the event.  The
 * ack for it follows and does not change the outcome.
 */
static bool
handle_return(RelayPass *pass, const amqp_frame_t *frame)
{
	amqp_basic_return_t *m = frame->payload.method.decoded;
	unsigned	reply_code = m->reply_code;
	char	   *reply_text = amqp_bytes_to_cstring(m->reply_text);
	amqp_message_t msg;
	amqp_rpc_reply_t r;
	char	   *message_id;
	int			i;

	r = amqp_read_message(conn.state, frame->channel, &msg, 0);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
	{
		amqp_conn_status_error(&conn, r.library_error,
							   "read returned message");
		return false;
	}

	if (msg.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG)
	{
		message_id = amqp_bytes_to_cstring(msg.properties.message_id);
		for (i = pass->low; i < pass->nevents; i++)
		{
			RelayEvent *ev = &pass->events[i];
			char		idbuf[UUID_LEN * 2 + 5];

			if (ev->outcome != RELAY_INFLIGHT || ev->confirmed)
				continue;
			messaging_format_uuid(&ev->id, idbuf);
			if (strcmp(idbuf, message_id) == 0)
			{
				MemoryContext old = MemoryContextSwitchTo(pass_context);

				ev->outcome = RELAY_RETURNED;
				ev->error = psprintf("broker returned the message: %u %s "
									 "(no queue is bound to exchange \"%s\" "
									 "for routing key \"%s\")",
									 reply_code, reply_text, ev->exchange,
									 ev->routing_key);
				MemoryContextSwitchTo(old);
				break;
			}
		}
	}
	amqp_destroy_message(&msg);
	return true;
}

/*
 * Reads frames: the first wait lasts up to timeout_ms, then whatever else
 * is already available.  Returns false when the connection is gone.
 */
static bool
relay_read_frames(RelayPass *pass, long timeout_ms)
{
	long		wait_ms = timeout_ms;
	bool		first = true;

	for (;;)
	{
		amqp_frame_t frame;
		int			rc;

		/* after the first frame, take only what is already buffered */
		if (wait_ms == 0 && !first &&
			!amqp_frames_enqueued(conn.state) && !amqp_data_in_buffer(conn.state))
		{
			amqp_maybe_release_buffers(conn.state);
			return true;
		}
		first = false;

		rc = amqp_conn_next_frame(&conn, &frame, wait_ms);
		if (rc == AMQP_STATUS_TIMEOUT)
		{
			amqp_maybe_release_buffers(conn.state);
			return true;
		}
		if (rc != AMQP_STATUS_OK)
			return false;
		wait_ms = 0;

		if (frame.frame_type != AMQP_FRAME_METHOD)
			continue;

		switch (frame.payload.method.id)
		{
			case AMQP_BASIC_ACK_METHOD:
				{
					amqp_basic_ack_t *m = frame.payload.method.decoded;

					if (pass)
						handle_confirm(pass, m->delivery_tag, m->multiple, true);
					break;
				}
			case AMQP_BASIC_NACK_METHOD:
				{
					amqp_basic_nack_t *m = frame.payload.method.decoded;

					if (pass)
						handle_confirm(pass, m->delivery_tag, m->multiple, false);
					break;
				}
			case AMQP_BASIC_RETURN_METHOD:
				if (pass == NULL)
				{
					amqp_message_t msg;

					(void) amqp_read_message(conn.state, frame.channel, &msg, 0);
					amqp_destroy_message(&msg);
				}
				else if (!handle_return(pass, &frame))
					return false;
				break;
			case AMQP_CHANNEL_CLOSE_METHOD:
				{
					amqp_channel_close_t *m = frame.payload.method.decoded;
					amqp_channel_close_ok_t ok;

					snprintf(conn.error, sizeof(conn.error),
							 "broker closed the publishing channel: %u %.*s",
							 m->reply_code, (int) m->reply_text.len,
							 (char *) m->reply_text.bytes);
					channel_close_code = m->reply_code;
					(void) amqp_send_method(conn.state, frame.channel,
											AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
					return false;
				}
			default:
				{
					bool		was_blocked = conn.blocked;

					if (!amqp_conn_handle_connection_frame(&conn, &frame))
						return false;
					if (conn.blocked == was_blocked)
						break;
					if (conn.blocked)
					{
						ereport(LOG,
								(errmsg("messaging relay is blocked by RabbitMQ"),
								 errdetail("%s", conn.error),
								 errhint("The broker raised a resource alarm; events wait in the "
										 "outbox until it clears.")));
						set_state(MSG_CONN_BLOCKED, conn.error);
					}
					else
					{
						ereport(LOG,
								(errmsg("messaging relay is no longer blocked by RabbitMQ")));
						set_state(MSG_CONN_CONNECTED, NULL);
					}
					break;
				}
		}
	}
}

/*
 * Waits until fewer than `limit` events are unconfirmed.  Gives up (and
 * declares the connection broken) after messaging.confirm_timeout without
 * progress.
 */
static bool
relay_wait_confirms(RelayPass *pass, int limit)
{
	TimestampTz progress_at = GetCurrentTimestamp();
	int			last = pass->unconfirmed;

	while (pass->unconfirmed > limit)
	{
		CHECK_FOR_INTERRUPTS();
		if (!relay_read_frames(pass, RELAY_WAIT_SLICE_MS))
			return false;
		if (pass->unconfirmed != last)
		{
			last = pass->unconfirmed;
			progress_at = GetCurrentTimestamp();
		}
		else if (TimestampDifferenceExceeds(progress_at, GetCurrentTimestamp(),
											messaging_confirm_timeout))
		{
			snprintf(conn.error, sizeof(conn.error),
					 "no publisher confirm from the broker within %d ms",
					 messaging_confirm_timeout);
			return false;
		}
		if (!amqp_conn_keepalive(&conn))
			return false;
	}
	return true;
}

static char *
getattr_text(HeapTuple tup, TupleDesc desc, int attno)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, attno, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static SPIPlanPtr
keep_plan(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static void
forget_plan(SPIPlanPtr *plan)
{
	if (*plan != NULL)
		SPI_freeplan(*plan);
	*plan = NULL;
}

/*
 * The relay's statements, prepared once.  Those that read the outbox also
 * read messaging.outbox_staged where the database has it (from version
 * 1.1 of the extension on), and are prepared again when that changes.
 */
static void
prepare_plans(void)
{
	Oid			staged = messaging_table_relid_if_exists("outbox_staged");

	if (staged != planned_staged)
	{
		forget_plan(&fetch_plan);
		forget_plan(&count_plan);
		forget_plan(&unstage_plan);
		forget_plan(&aside_plan);
		planned_staged = staged;
	}

	/*
	 * Rows from a smaller id than the oldest staged row's first id wait
	 * until it is unstaged: a transaction that staged events and wrote
	 * others directly commits both at once, and this keeps them in id
	 * order even when it commits between unstaging and reading.  The
	 * condition is part of the reading statement so that both see the
	 * same snapshot.
	 */
	if (fetch_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, INT4OID};

#define FETCH_HEAD "SELECT ctid, id, event_type, payload, target_app," \
	" tenant_id, source_app, correlation_id, created_at, attempts" \
	" FROM messaging.outbox WHERE id > $1"
#define FETCH_CUTOFF " AND id < coalesce((SELECT s.first_id" \
	" FROM messaging.outbox_staged s ORDER BY s.first_id LIMIT 1)," \
	" 'ffffffff-ffff-ffff-ffff-ffffffffffff')"
#define FETCH_TAIL " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"

		fetch_plan = keep_plan(OidIsValid(staged) ?
							   FETCH_HEAD FETCH_CUTOFF FETCH_TAIL :
							   FETCH_HEAD FETCH_TAIL,
							   2, types);
	}
	if (unstage_plan == NULL && OidIsValid(staged))
	{
		Oid			types[1] = {INT4OID};

		unstage_plan = keep_plan("DELETE FROM messaging.outbox_staged"
								 " WHERE ctid = ANY (ARRAY(SELECT ctid"
								 "  FROM messaging.outbox_staged ORDER BY first_id"
								 "  LIMIT $1 FOR UPDATE SKIP LOCKED))"
								 " RETURNING first_id, event_type, target_app,"
								 " source_app, created_at, events, shape, body",
								 1, types);
	}
	if (aside_plan == NULL && OidIsValid(staged))
	{
		Oid			types[8] = {UUIDOID, TEXTOID, TEXTOID, TEXTOID, INT4OID,
		BYTEAOID, TEXTOID, TIMESTAMPTZOID};

		aside_plan = keep_plan("INSERT INTO messaging.failed_events"
							   " (event_id, event_type, target_app, source_app,"
							   "  exchange, routing_key, envelope, reason, error,"
							   "  attempts, created_at)"
							   " VALUES ($1, $2, $3, $4, '', '',"
							   "  jsonb_build_object('staged_events', $5,"
							   "   'staged_body', encode($6, 'hex')),"
							   "  'unpublishable', $7, 0, $8)"
							   " ON CONFLICT (event_id) DO NOTHING",
							   8, types);
	}
	if (outcome_plan == NULL)
	{
		Oid			types[12] = {TIDARRAYOID, UUIDARRAYOID, TEXTARRAYOID,
			TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
		TIMESTAMPTZARRAYOID};

		outcome_plan = keep_plan("SELECT messaging._relay_outcome($1, $2, $3,"
								 " $4, $5, $6, $7, $8, $9, $10, $11, $12)",
								 12, types);
	}
	if (count_plan == NULL)
		count_plan = keep_plan(OidIsValid(staged) ?
							   "SELECT (SELECT count(*) FROM messaging.outbox)"
							   " + (SELECT coalesce(sum(events), 0)"
							   "    FROM messaging.outbox_staged)" :
							   "SELECT count(*) FROM messaging.outbox",
							   0, NULL);
}

/*
 * Publishes one outbox row.  Returns false when the connection broke.
 */
static bool
publish_row(RelayPass *pass, HeapTuple tup, TupleDesc desc,
			StringInfo body, StringInfo key)
{
	RelayEvent *ev;
	EnvelopeFields f;
	amqp_basic_properties_t props;
	bool		isnull;
	char		idbuf[UUID_LEN * 2 + 5];
	char	   *correlation_id;
	const char *exchange;
	MemoryContext old;

	old = MemoryContextSwitchTo(pass_context);
	if (pass->nevents == pass->capacity)
	{
		pass->capacity *= 2;
		pass->events = repalloc(pass->events,
								sizeof(RelayEvent) * pass->capacity);
	}
	ev = &pass->events[pass->nevents];
	memset(ev, 0, sizeof(RelayEvent));

	ev->ctid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1, &isnull));
	memcpy(&ev->id, DatumGetUUIDP(SPI_getbinval(tup, desc, 2, &isnull)),
		   sizeof(pg_uuid_t));
	ev->event_type = getattr_text(tup, desc, 3);
	ev->target_app = getattr_text(tup, desc, 5);
	ev->tenant_id = getattr_text(tup, desc, 6);
	ev->source_app = getattr_text(tup, desc, 7);
	ev->created_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
	ev->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
	exchange = messaging_route(ev->target_app, ev->event_type, key);
	ev->exchange = (char *) exchange;
	ev->routing_key = pstrdup(key->data);

	/*
	 * What only this message needs (the payload, detoasted, can be large)
	 * lives in a context reset for every row.
	 */
	MemoryContextReset(row_context);
	MemoryContextSwitchTo(row_context);
	correlation_id = getattr_text(tup, desc, 8);

	f.id = &ev->id;
	f.event_type = ev->event_type;
	f.source_app = ev->source_app;
	f.target_app = ev->target_app;
	f.tenant_id = ev->tenant_id;
	f.correlation_id = correlation_id;
	f.time = ev->created_at;
	f.data = DatumGetJsonbP(SPI_getbinval(tup, desc, 4, &isnull));

	resetStringInfo(body);
	messaging_envelope_build(body, &f);
	messaging_format_uuid(&ev->id, idbuf);
	pass->bytes += body->len;
	MemoryContextSwitchTo(old);

	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG |
		AMQP_BASIC_DELIVERY_MODE_FLAG |
		AMQP_BASIC_MESSAGE_ID_FLAG |
		AMQP_BASIC_TYPE_FLAG |
		AMQP_BASIC_APP_ID_FLAG |
		AMQP_BASIC_TIMESTAMP_FLAG;
	props.content_type = amqp_cstring_bytes(MESSAGING_CONTENT_TYPE);
	props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
	props.message_id = amqp_cstring_bytes(idbuf);
	props.type = amqp_cstring_bytes(ev->event_type);
	props.app_id = amqp_cstring_bytes(ev->source_app);
	props.timestamp = (uint64_t) (timestamptz_to_time_t(ev->created_at));
	if (correlation_id != NULL)
	{
		props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
		props.correlation_id = amqp_cstring_bytes(correlation_id);
	}

	/*
	 * AMQP short strings hold 255 bytes; publish_event() keeps within that,
	 * but a row written into the outbox by other means may not.  Such an
	 * event can never be sent: it fails without reaching the broker.
	 */
	if (key->len > 255 || strlen(ev->event_type) > 255 ||
		strlen(ev->source_app) > 255 ||
		(correlation_id != NULL && strlen(correlation_id) > 255))
	{
		ev->outcome = RELAY_REJECTED;
		ev->confirmed = true;
		ev->error = MemoryContextStrdup(pass_context,
										"the routing key, type, source application or "
										"correlation id is longer than AMQP's 255 bytes");
		pass->nevents++;
		return true;
	}

	if (amqp_conn_publish(&conn, 1, exchange, key->data, true, &props,
						  amqp_cstring_bytes(body->data)) != AMQP_STATUS_OK)
		return false;

	ev->tag = next_tag++;
	ev->outcome = RELAY_INFLIGHT;
	pass->nevents++;
	pass->unconfirmed++;
	return true;
}

static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL);
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

/*
 * The common case: hands the confirmed events among from .. upto-1 to
 * messaging_record_confirmed() (src/outcome.c).  Returns how many there
 * were.
 */
static int
record_published(RelayPass *pass, int from, int upto)
{
	ConfirmedEvent *done = palloc(sizeof(ConfirmedEvent) * Max(upto - from, 1));
	int			n = 0;
	int			i;

	for (i = from; i < upto; i++)
	{
		RelayEvent *ev = &pass->events[i];

		if (ev->outcome != RELAY_ACKED)
			continue;
		done[n].ctid = ev->ctid;
		done[n].id = ev->id;
		done[n].event_type = ev->event_type;
		done[n].target_app = ev->target_app;
		done[n].tenant_id = ev->tenant_id;
		done[n].source_app = ev->source_app;
		done[n].created_at = ev->created_at;
		n++;
	}
	messaging_record_confirmed(done, n);
	pfree(done);
	return n;
}

/*
 * Records the settled events pass->recorded .. upto-1 in the pass's
 * transaction and adds what left the outbox to *published and *failed.
 * Confirmed events, nearly all of them, are done in C by
 * record_published(); the rest (returned, nacked, and confirmed broadcasts
 * to audit when messaging.track_success is on) go to
 * messaging._relay_outcome().  Called while later messages are still in
 * flight, so that this work overlaps the broker's.
 */
static void
record_outcomes(RelayPass *pass, int upto, int *published, int *failed)
{
	int			n = 0;
	int			i;
	Datum	   *cols[12];
	bool	   *nulls[12];
	Datum		args[12];
	static const Oid elemtypes[12] = {TIDOID, UUIDOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID,
	TIMESTAMPTZOID};
	int			c;
	int			rc;
	int			count = upto - pass->recorded;
	MemoryContext old;
	MemoryContext scratch;

	if (count <= 0)
		return;

	scratch = AllocSetContextCreate(CurrentMemoryContext,
									"messaging relay outcomes",
									ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(scratch);

	*published += record_published(pass, pass->recorded, upto);

	for (c = 0; c < 12; c++)
	{
		cols[c] = palloc(sizeof(Datum) * count);
		nulls[c] = palloc0(sizeof(bool) * count);
	}

	for (i = pass->recorded; i < upto; i++)
	{
		RelayEvent *ev = &pass->events[i];
		const char *outcome;

		switch (ev->outcome)
		{
			case RELAY_ACKED:
				/* done by record_published(); audited broadcasts only */
				if (!messaging_track_success || ev->target_app != NULL)
					continue;
				outcome = "delivered";
				break;
			case RELAY_RETURNED:
				outcome = "unroutable";
				(*failed)++;
				break;
			case RELAY_REJECTED:
				outcome = "unpublishable";
				(*failed)++;
				break;
			case RELAY_NACKED:
				if (ev->attempts + 1 >= messaging_publish_max_attempts)
				{
					outcome = "nacked";
					(*failed)++;
					ev->error = MemoryContextStrdup(pass_context,
													psprintf("broker rejected the message %d times",
															 ev->attempts + 1));
				}
				else
				{
					outcome = "retry";
					ev->error = "broker rejected the message";
				}
				break;
			default:
				continue;
		}

		cols[0][n] = PointerGetDatum(&ev->ctid);
		cols[1][n] = UUIDPGetDatum(&ev->id);
		cols[2][n] = CStringGetTextDatum(outcome);
		cols[3][n] = text_or_null(ev->error, &nulls[3][n]);
		cols[4][n] = CStringGetTextDatum(ev->event_type);
		cols[5][n] = text_or_null(ev->target_app, &nulls[5][n]);
		cols[6][n] = text_or_null(ev->tenant_id, &nulls[6][n]);
		cols[7][n] = CStringGetTextDatum(ev->source_app);
		cols[8][n] = CStringGetTextDatum(ev->exchange);
		cols[9][n] = CStringGetTextDatum(ev->routing_key);
		cols[10][n] = Int32GetDatum(ev->attempts + 1);
		cols[11][n] = TimestampTzGetDatum(ev->created_at);
		n++;
	}
	pass->recorded = upto;

	if (n > 0)
	{
		for (c = 0; c < 12; c++)
			args[c] = messaging_make_array(cols[c], nulls[c], n, elemtypes[c]);

		rc = SPI_execute_plan(outcome_plan, args, NULL, false, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not record publish outcomes: %s",
				 SPI_result_code_string(rc));
		SPI_freetuptable(SPI_tuptable);
	}

	MemoryContextSwitchTo(old);
	MemoryContextDelete(scratch);
}

/* Puts the settled events of a committed pass into the recent record. */
static void
remember_outcomes(RelayPass *pass)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (messaging_recent_events == 0)
		return;

	for (i = 0; i < pass->nevents; i++)
	{
		RelayEvent *ev = &pass->events[i];
		RecentEvent rec;

		if (ev->outcome == RELAY_INFLIGHT ||
			(ev->outcome == RELAY_NACKED &&
			 ev->attempts + 1 < messaging_publish_max_attempts))
			continue;

		memset(&rec, 0, sizeof(rec));
		rec.id = ev->id;
		if (ev->outcome == RELAY_ACKED)
			rec.status = ev->target_app ? RECENT_PUBLISHED : RECENT_DELIVERED;
		else
			rec.status = RECENT_FAILED;
		rec.attempts = ev->attempts + 1;
		rec.created_at = ev->created_at;
		rec.published_at = now;
		strlcpy(rec.event_type, ev->event_type, sizeof(rec.event_type));
		if (ev->target_app)
			strlcpy(rec.target_app, ev->target_app, sizeof(rec.target_app));
		if (ev->tenant_id)
			strlcpy(rec.tenant_id, ev->tenant_id, sizeof(rec.tenant_id));
		messaging_recent_put(&rec);
	}
}

/*
 * A staged row that cannot be read (staging.c checks every record) is
 * deleted like the others but goes to failed_events, as one unpublishable
 * entry under its first id carrying its bytes, rather than failing every
 * pass.  row has unstage_plan's columns.
 */
static void
set_aside_staged(HeapTuple row, TupleDesc desc, const char *error)
{
	Datum		args[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool		isnull;
	char		idbuf[UUID_LEN * 2 + 5];
	int			i;
	/* aside_plan's parameters from unstage_plan's columns; 0: the error */
	static const int cols[8] = {1, 2, 3, 4, 6, 8, 0, 5};

	for (i = 0; i < 8; i++)
	{
		if (cols[i] == 0)
			continue;
		args[i] = SPI_getbinval(row, desc, cols[i], &isnull);
		if (isnull)
			nulls[i] = 'n';
	}
	args[6] = CStringGetTextDatum(psprintf("staged events could not be read: %s", error));
	if (SPI_execute_plan(aside_plan, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record unreadable staged events");

	messaging_format_uuid(DatumGetUUIDP(args[0]), idbuf);
	ereport(WARNING,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("messaging relay could not read staged events starting at %s: %s",
					idbuf, error),
			 errdetail("The row held %d events.", DatumGetInt32(args[4])),
			 errhint("It is recorded in messaging.failed_events with its bytes.")));
}

/*
 * Moves staged events (of statement-level triggers) into the outbox, in
 * the pass's transaction, at most RELAY_UNSTAGE_ROWS staged rows at a
 * time.  Returns true when staged rows are probably left.
 */
static bool
relay_unstage(void)
{
	Datum		args[1] = {Int32GetDatum(RELAY_UNSTAGE_ROWS)};
	uint64		rows;
	int			rc;

	if (unstage_plan == NULL)
		return false;
	rc = SPI_execute_plan(unstage_plan, args, NULL, false, 0);
	if (rc != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "could not read staged events: %s", SPI_result_code_string(rc));
	rows = SPI_processed;
	if (rows > 0)
	{
		SPITupleTable *staged = SPI_tuptable;
		const char **errors = palloc(sizeof(char *) * rows);
		uint64		r;

		(void) messaging_unstage(staged->vals, staged->tupdesc, rows, errors);
		for (r = 0; r < rows; r++)
			if (errors[r] != NULL)
				set_aside_staged(staged->vals[r], staged->tupdesc, errors[r]);
		pfree(errors);
		SPI_freetuptable(staged);
	}

	/* writers used pages: have new ones ready for the next bulk change */
	if (rows > 0)
		(void) messaging_staging_reserve_space(messaging_staging_reserve);
	return rows == RELAY_UNSTAGE_ROWS;
}

/* The outbox's row count, staged events included; -1 if unknown. */
static int64
count_outbox(void)
{
	bool		isnull;

	if (SPI_execute_plan(count_plan, NULL, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		return -1;
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Starts one of the relay's transactions, the way every background worker
 * should: statement time, transaction, SPI, a snapshot, and the activity
 * shown in pg_stat_activity.
 */
static void
relay_txn_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	debug_query_string = activity;
	pgstat_report_activity(STATE_RUNNING, activity);
	prepare_plans();
}

static void
relay_txn_end(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	debug_query_string = NULL;
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * The broker closed the channel over a message it refuses (see
 * isolating).  Publishing one at a time, the one message in flight is the
 * culprit: it fails.  Otherwise the relay starts isolating, up to the last
 * event in flight.
 */
static void
isolate_refused(RelayPass *pass)
{
	RelayEvent *last = NULL;
	int			i;

	for (i = pass->low; i < pass->nevents; i++)
	{
		RelayEvent *ev = &pass->events[i];

		if (ev->tag != 0 && !ev->confirmed)
			last = ev;
	}
	if (last == NULL)
		return;

	if (isolating && pass->unconfirmed == 1)
	{
		char		idbuf[UUID_LEN * 2 + 5];

		last->outcome = RELAY_REJECTED;
		last->confirmed = true;
		last->error = MemoryContextStrdup(pass_context, conn.error);
		pass->unconfirmed--;
		messaging_format_uuid(&last->id, idbuf);
		ereport(LOG,
				(errmsg("messaging relay could not publish event %s", idbuf),
				 errdetail("RabbitMQ refused it: %s", conn.error),
				 errhint("The event is recorded in messaging.failed_events.")));
		return;
	}

	isolating = true;
	memcpy(&isolate_upto, &last->id, sizeof(pg_uuid_t));
	ereport(LOG,
			(errmsg("messaging relay publishes one message at a time to find the event RabbitMQ "
					"refused"),
			 errdetail("%s", conn.error)));
}

/*
 * Opens the publishing channel, in confirm mode.  Delivery tags start
 * again at 1.
 */
static bool
open_channel(void)
{
	if (!amqp_conn_confirm_channel(&conn, 1, true))
		return false;
	next_tag = 1;
	return true;
}

/*
 * One pass over the outbox, in one transaction.  Returns true when the
 * outbox probably holds more rows right now.
 */
static bool
relay_drain(void)
{
	RelayPass	pass;
	pg_uuid_t	after;
	StringInfoData body;
	StringInfoData key;
	int			batches = 0;
	bool		more = false;
	int			published = 0;
	int			failed = 0;
	int64		backlog = -1;
	TimestampTz t_start = GetCurrentTimestamp();
	TimestampTz t_published;
	TimestampTz t_confirmed;
	TimestampTz t_recorded;
	TimestampTz tf0;
	int64		t_fetch = 0;
	int64		t_window = 0;

	MemoryContextReset(pass_context);
	memset(&pass, 0, sizeof(pass));
	memset(&after, 0, sizeof(after));
	channel_close_code = 0;
	pass.capacity = Max(messaging_publish_batch_size, 16);
	pass.events = MemoryContextAlloc(pass_context,
									 sizeof(RelayEvent) * pass.capacity);

	relay_txn_begin("messaging relay: publish outbox");
	initStringInfo(&body);
	initStringInfo(&key);
	more = relay_unstage();

	while (batches < RELAY_BATCHES_PER_PASS && !pass.broken)
	{
		Datum		args[2];
		int			rc;
		uint64		nrows;
		uint64		i;
		SPITupleTable *rows;

		args[0] = UUIDPGetDatum(&after);
		args[1] = Int32GetDatum(messaging_publish_batch_size);
		tf0 = GetCurrentTimestamp();
		rc = SPI_execute_plan(fetch_plan, args, NULL, false, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not read outbox: %s", SPI_result_code_string(rc));
		t_fetch += GetCurrentTimestamp() - tf0;

		nrows = SPI_processed;
		rows = SPI_tuptable;
		batches++;
		for (i = 0; i < nrows; i++)
		{
			HeapTuple	tup = rows->vals[i];

			int			window = isolating ? 1 : messaging_publish_window;

			CHECK_FOR_INTERRUPTS();

			/*
			 * Keep the window: while it is full, first record what is
			 * settled (the broker has a window's worth of work meanwhile),
			 * then read confirms.
			 */
			if (pass.unconfirmed >= window &&
				pass.low - pass.recorded >= messaging_publish_batch_size)
				record_outcomes(&pass, pass.low, &published, &failed);

			tf0 = GetCurrentTimestamp();
			if (pass.unconfirmed >= window &&
				!relay_wait_confirms(&pass, window - 1))
			{
				pass.broken = true;
				break;
			}
			t_window += GetCurrentTimestamp() - tf0;
			if (conn.blocked)
				break;
			if (!publish_row(&pass, tup, rows->tupdesc, &body, &key))
			{
				pass.broken = true;
				break;
			}
			if (isolating &&
				memcmp(pass.events[pass.nevents - 1].id.data, isolate_upto.data,
					   UUID_LEN) > 0)
				isolating = false;
			/*
			 * Pick up confirms that have arrived, without waiting.  After a
			 * large message give the broker a moment: under a resource alarm
			 * it answers with connection.blocked and stops reading, and the
			 * next large write would stall before the relay could see it.
			 */
			if (((pass.nevents & 63) == 0 || body.len > RELAY_LARGE_MESSAGE) &&
				!relay_read_frames(&pass, body.len > RELAY_LARGE_MESSAGE ?
								   RELAY_LARGE_MESSAGE_WAIT_MS : 0))
			{
				pass.broken = true;
				break;
			}
		}
		if (nrows > 0)
			memcpy(&after, &pass.events[pass.nevents - 1].id, sizeof(pg_uuid_t));
		SPI_freetuptable(rows);

		if (nrows < (uint64) messaging_publish_batch_size || conn.blocked)
			break;
		if (batches == RELAY_BATCHES_PER_PASS || pass.bytes >= RELAY_PASS_BYTES)
		{
			more = true;
			break;
		}
	}

	t_published = GetCurrentTimestamp();
	if (!pass.broken && pass.unconfirmed > 0 && !relay_wait_confirms(&pass, 0))
		pass.broken = true;
	t_confirmed = GetCurrentTimestamp();

	if (pass.broken && channel_close_code == AMQP_PRECONDITION_FAILED)
		isolate_refused(&pass);

	/* events still in flight after a broken connection stay in the outbox */
	record_outcomes(&pass, pass.nevents, &published, &failed);
	t_recorded = GetCurrentTimestamp();

	/* Refresh the backlog figure now and then. */
	if (!more && !pass.broken)
		backlog = pass.unconfirmed;
	else if (TimestampDifferenceExceeds(last_count, GetCurrentTimestamp(), 2000))
	{
		backlog = count_outbox();
		last_count = GetCurrentTimestamp();
	}

	relay_txn_end();

	if (pass.nevents > 0)
		remember_outcomes(&pass);

	{
		MessagingWorkerStatus *st = messaging_status_begin(MSG_WORKER_RELAY);

		st->succeeded += published;
		st->failed += failed;
		if (published > 0)
			st->last_success = GetCurrentTimestamp();
		if (backlog >= 0)
			st->backlog = backlog;
		messaging_status_end();
	}

	if (pass.nevents > 0)
		elog(DEBUG1, "messaging relay published %d events, %d failed, %d unsettled"
			 " (publish %ld us [fetch %ld, window %ld], confirm %ld us,"
			 " record %ld us, commit %ld us)",
			 published, failed, pass.unconfirmed,
			 (long) (t_published - t_start), (long) t_fetch, (long) t_window,
			 (long) (t_confirmed - t_published),
			 (long) (t_recorded - t_confirmed),
			 (long) (GetCurrentTimestamp() - t_recorded));

	last_pass_end = GetCurrentTimestamp();
	last_pass_events = pass.nevents;

	if (pass.broken)
	{
		if (channel_close_code == AMQP_PRECONDITION_FAILED && conn.state != NULL)
		{
			/* only the channel is gone: open it again */
			if (!open_channel())
				relay_lost_connection();
		}
		else
			relay_lost_connection();
	}

	return more;
}

/*
 * Under a steady stream of small transactions every commit wakes the relay,
 * and a pass per handful of events costs more than the events.  When the
 * last pass was small and ended less than messaging.publish_linger ago,
 * wait out the rest of that time first so that the next pass takes what
 * gathered meanwhile.  An event after a quiet spell is published at once.
 */
static void
relay_linger(void)
{
	long		elapsed_ms;

	if (messaging_publish_linger <= 0 || last_pass_end == 0 ||
		last_pass_events >= messaging_publish_batch_size)
		return;

	elapsed_ms = (long) ((GetCurrentTimestamp() - last_pass_end) / 1000);
	if (elapsed_ms >= messaging_publish_linger)
		return;

	(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 messaging_publish_linger - elapsed_ms,
					 MESSAGING_WAIT_EVENT);
	CHECK_FOR_INTERRUPTS();
}

/*
 * The worker's error recovery: an error in a pass (say, the extension was
 * dropped under us) is logged, the transaction rolled back, and the worker
 * goes on after a pause; published but unrecorded events are published
 * again later.
 */
static void
relay_recover_from_error(void)
{
	ErrorData  *edata;
	MemoryContext ctx = CurrentMemoryContext;

	MemoryContextSwitchTo(TopMemoryContext);
	edata = CopyErrorData();
	FlushErrorState();
	MemoryContextSwitchTo(ctx);

	ereport(LOG,
			(errmsg("messaging relay could not publish the outbox: %s",
					edata->message),
			 edata->detail ? errdetail("%s", edata->detail) : 0));
	set_state(conn.state ? MSG_CONN_CONNECTED : MSG_CONN_DISCONNECTED,
			  edata->message);
	FreeErrorData(edata);

	AbortCurrentTransaction();
	SPI_finish();
	debug_query_string = NULL;
	pgstat_report_activity(STATE_IDLE, NULL);

	/* the plans may refer to dropped objects */
	fetch_plan = outcome_plan = count_plan = unstage_plan = aside_plan = NULL;
	planned_staged = InvalidOid;
	extension_ready = false;

	/*
	 * Events of the failed pass may already be confirmed by the broker; the
	 * connection is recycled so that no stray confirm is matched against
	 * the next pass.
	 */
	if (conn.state)
	{
		amqp_conn_close(&conn);
		amqp_backoff_failed(&backoff, messaging_reconnect_max_delay);
	}
}

/*
 * Housekeeping that needs no caller: acknowledgement timeouts and periodic
 * cleanup, done in SQL by messaging._relay_maintenance(), and the empty
 * pages kept ready for staged events (messaging.staging_reserve).
 */
static void
relay_maintenance(void)
{
	int			rc;

	if (!TimestampDifferenceExceeds(last_maintenance, GetCurrentTimestamp(),
									RELAY_MAINTENANCE_MS))
		return;
	last_maintenance = GetCurrentTimestamp();

	relay_txn_begin("SELECT messaging._relay_maintenance()");
	rc = SPI_execute(debug_query_string, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not run messaging maintenance: %s",
			 SPI_result_code_string(rc));
	(void) messaging_staging_reserve_space(messaging_staging_reserve);
	relay_txn_end();
}

/*
 * Counts the outbox, at most every two seconds, for the backlog figure of
 * connection_status while the relay is not connected.
 */
static void
relay_count_backlog(void)
{
	int64		backlog = -1;

	if (!TimestampDifferenceExceeds(last_count, GetCurrentTimestamp(), 2000))
		return;
	last_count = GetCurrentTimestamp();

	relay_txn_begin("messaging relay: count outbox");
	backlog = count_outbox();
	relay_txn_end();

	if (backlog >= 0)
	{
		MessagingWorkerStatus *st = messaging_status_begin(MSG_WORKER_RELAY);

		st->backlog = backlog;
		messaging_status_end();
	}
}

void
messaging_relay_main(Datum main_arg)
{
	amqp_link_start(&broker);

	/*
	 * The relay's own commits need not wait for the WAL flush: losing one in
	 * a crash only means its events are published once more, which
	 * at-least-once delivery allows.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	pass_context = AllocSetContextCreate(TopMemoryContext,
										 "messaging relay pass",
										 ALLOCSET_DEFAULT_SIZES);
	row_context = AllocSetContextCreate(TopMemoryContext,
										"messaging relay row",
										ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		bool		more = false;
		int			rc;

		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			char	   *now_with;

			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			now_with = connection_settings();
			if (conn.state != NULL && connected_with != NULL &&
				strcmp(connected_with, now_with) != 0)
			{
				ereport(LOG,
						(errmsg("messaging relay reconnecting because \"%s\" changed",
								strncmp(connected_with, now_with,
										strcspn(connected_with, "\n") + 1) != 0 ?
								"messaging.broker_url" :
								"messaging.broker_ca_file")));
				amqp_conn_close(&conn);
				amqp_backoff_reset(&backoff);
			}
			pfree(now_with);
			if (conn.state == NULL)
			{
				/* perhaps what failed was just fixed: try again at once */
				amqp_backoff_reset(&backoff);
				set_state(MSG_CONN_DISCONNECTED, NULL);
			}
		}

		PG_TRY();
		{
			if (!extension_ready)
				extension_ready = messaging_extension_ready();

			if (extension_ready && conn.state == NULL &&
				amqp_backoff_remaining_ms(&backoff) == 0)
				(void) relay_connect();

			if (extension_ready && conn.state != NULL && !conn.blocked)
			{
				relay_linger();
				more = relay_drain();
			}

			if (extension_ready)
				relay_maintenance();

			/* keep the backlog figure current while nothing drains */
			if (extension_ready && conn.state == NULL)
				relay_count_backlog();
		}
		PG_CATCH();
		{
			relay_recover_from_error();
			more = false;
		}
		PG_END_TRY();

		if (conn.state != NULL && !amqp_conn_keepalive(&conn))
			relay_lost_connection();

		if (more)
			continue;

		rc = amqp_link_sleep(&broker, extension_ready);

		if ((rc & WL_SOCKET_READABLE) && conn.state != NULL &&
			!relay_read_frames(NULL, 0))
			relay_lost_connection();
	}
}
