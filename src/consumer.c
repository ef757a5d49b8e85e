/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  The consumer worker: consumes the application's queue and runs the
 *	  registered SQL handlers for each event, with deduplication, retries
 *	  through delay queues, and dead letters.
 *
 * Topology.  At each connection the worker declares, idempotently, the
 * exchanges inter-app-events (topic) and inter-app-broadcast (fanout), the
 * durable queue messaging.consumer_queue bound to the first with
 * "<messaging.app_name>.#" and to the second, the dead letter queue
 * "<queue>.dlq", and one delay queue per retry tier, "<queue>.retry.<ms>ms",
 * whose messages expire after <ms> milliseconds back into the main queue
 * (x-message-ttl, x-dead-letter-exchange "" and x-dead-letter-routing-key
 * <queue>).  Retry n waits messaging.retry_delay * 2^(n-1).  A queue holds
 * a single delay because per-message TTLs only expire at the head of a
 * queue; naming it by its delay means that changing messaging.retry_delay
 * declares new queues instead of clashing with the arguments of the old
 * ones.  No broker plugin is needed.
 *
 * The worker has its own connection: channel 1 consumes with manual
 * acknowledgements and basic.qos messaging.consumer_prefetch; channel 2
 * publishes (retries, dead letters, replays) in confirm mode, one message
 * at a time, and reads queue depths.  Deliveries that arrive while the
 * worker waits for a confirm are kept in a local list, so nothing read off
 * the socket is lost.
 *
 * Per message, in order:
 *
 *	1. Validation: the body must be at most messaging.max_message_bytes,
 *	   valid UTF-8, a JSON object accepted by jsonb (so no \u0000), with a
 *	   string "type" that is a valid event type and a string "id" that is a
 *	   UUID.  A message failing any of these can never succeed: it is
 *	   dead-lettered at once.
 *	2. One transaction: record the event id in messaging.handled_events (a
 *	   conflict means the event was handled before: it is only
 *	   acknowledged), handle "event.acknowledged" events through
 *	   messaging.acknowledge_event(), run each handler whose pattern
 *	   matches the event type (most specific pattern first, then handler
 *	   id) as its owner with statement_timeout = messaging.handler_timeout,
 *	   bump the counters, commit.
 *	3. basic.ack.  A crash between commit and ack redelivers the message,
 *	   which step 2 recognises as handled.
 *
 * If the transaction fails, its work is rolled back.  While the message
 * has been tried at most messaging.max_retries times it is published to
 * the next delay queue with its attempt count in the header
 * x-messaging-attempt (the broker's own x-death header grows on each pass,
 * so it is dropped), and only once the broker confirmed that copy is the
 * original acknowledged.  After the last retry the message goes to the
 * dead letter queue and to messaging.dead_letters, then is acknowledged.
 * The message waits in a delay queue, not in the worker, so others keep
 * flowing.
 *
 * Failures of the connection or the broker (a cancelled consumer, a
 * redeclared queue with other arguments, a closed channel) drop the
 * connection; it is made again with the relay's backoff, and everything
 * is declared again.  Every connection has a generation number, and a
 * delivery is only acknowledged on the connection it came from.
 *
 * Heartbeats: rabbitmq-c does nothing in the background, so while a
 * handler runs no heartbeat is sent.  The worker sends one, when due,
 * before each handler; one handler may still keep the connection silent
 * for messaging.handler_timeout, so that must stay below the heartbeat
 * interval (a LOG message says so at connect time otherwise).
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/consumer.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

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
#include "mb/pg_wchar.h"
#include "pgstat.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "amqp_conn.h"
#include "consumer.h"
#include "messaging.h"
#include "shmem.h"
#include "validate.h"

#define CH_CONSUME		1
#define CH_PUBLISH		2

/* Slice of a blocking wait, so that interrupts are seen promptly. */
#define CONSUMER_WAIT_SLICE_MS	100

/* Intervals of the periodic work. */
#define CONSUMER_DEPTH_MS		5000

/* Longest error text carried in a header. */
#define CONSUMER_HEADER_ERROR_LEN	1000

#define ACK_EVENT_TYPE	"event.acknowledged"

/* A message read from the consume channel, waiting to be handled. */
typedef struct Delivery
{
	uint64		generation;		/* connection it arrived on */
	uint64		tag;
	bool		redelivered;
	char	   *exchange;
	char	   *routing_key;
	amqp_message_t msg;			/* properties and body (library memory) */
} Delivery;

/* What validation extracted from a message. */
typedef struct IncomingEvent
{
	Jsonb	   *envelope;
	char	   *id;
	pg_uuid_t	uuid;
	char	   *type;
	char	   *source;			/* "" when absent */
	char	   *tenant;			/* NULL when absent */
	bool		has_uuid;		/* id was checked and parsed */
	/* event.acknowledged only */
	pg_uuid_t	ack_id;
	bool		ack_success;
	char	   *ack_error;
} IncomingEvent;

typedef enum HandleOutcome
{
	OUTCOME_HANDLED,			/* handlers ran and committed */
	OUTCOME_UNHANDLED,			/* no handler matched */
	OUTCOME_DUPLICATE,			/* handled before */
	OUTCOME_INVALID,			/* can never succeed */
	OUTCOME_FAILED				/* rolled back; retry */
} HandleOutcome;

typedef struct HandlerRow
{
	int64		id;
	char	   *pattern;
	Oid			func;
	Oid			owner;
} HandlerRow;

bool		messaging_debug_exit_before_ack = false;

static AmqpConn conn;
static AmqpBackoff backoff;
static uint64 generation = 0;
static bool cancelled = false;	/* broker cancelled our consumer */
static AmqpLink broker = {&conn, &backoff, MSG_WORKER_CONSUMER, "consumer"};
static bool extension_ready = false;
static char *topology_key = NULL;	/* settings the topology was made for */
static List *pending = NIL;		/* of Delivery *, in consumer_context */
static MemoryContext consumer_context = NULL;
static MemoryContext message_context = NULL;

/* Confirm of the one message in flight on the publishing channel. */
static uint64 publish_seq = 0;
static int	confirm_state = 0;	/* 0 waiting, 1 acked, -1 nacked */
static bool publish_returned = false;

static TimestampTz last_depth = 0;
static TimestampTz last_replay = 0;

static SPIPlanPtr dedupe_plan = NULL;
static SPIPlanPtr handlers_plan = NULL;
static SPIPlanPtr counters_plan = NULL;
static SPIPlanPtr ack_plan = NULL;
static SPIPlanPtr dead_letter_plan = NULL;

/* Name of the handler running, for error messages. */
static char current_handler[NAMEDATALEN * 3];

static bool consumer_lost_connection(void);

void
messaging_consumer_define_settings(void)
{
	DefineCustomBoolVariable("messaging.debug_exit_before_ack",
							 "Makes the consumer exit after committing a handled "
							 "event and before acknowledging it.",
							 "For testing redelivery only; never set it in "
							 "production.",
							 &messaging_debug_exit_before_ack,
							 false,
							 PGC_SIGHUP,
							 GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);
}

static void
set_state(MessagingConnState state, const char *error)
{
	amqp_conn_report(&conn, MSG_WORKER_CONSUMER, state, error);
}

static void
count_outcome(bool handled, bool failed)
{
	MessagingWorkerStatus *st = messaging_status_begin(MSG_WORKER_CONSUMER);

	if (handled)
	{
		st->succeeded++;
		st->last_success = GetCurrentTimestamp();
	}
	if (failed)
		st->failed++;
	messaging_status_end();
}

/* ----------
 * Topology
 * ----------
 */

static long
retry_delay_ms(int attempt)
{
	int64		delay = messaging_retry_delay;
	int			i;

	for (i = 1; i < attempt && delay < PG_INT32_MAX; i++)
		delay *= 2;
	return (long) Min(delay, (int64) PG_INT32_MAX);
}

static char *
retry_queue_name(int attempt)
{
	return psprintf("%s.retry.%ldms", messaging_consumer_queue,
					retry_delay_ms(attempt));
}

static char *
dlq_name(void)
{
	return psprintf("%s.dlq", messaging_consumer_queue);
}

static char *
make_topology_key(void)
{
	return MemoryContextStrdup(TopMemoryContext,
							   psprintf("%s|%s|%s|%s|%d|%d|%d",
										messaging_broker_url,
										messaging_broker_ca_file,
										messaging_consumer_queue,
										messaging_app_name,
										messaging_retry_delay,
										messaging_max_retries,
										messaging_consumer_prefetch));
}

static bool
declare_queue(const char *name, amqp_table_t args)
{
	char		what[300];

	amqp_queue_declare(conn.state, CH_CONSUME, amqp_cstring_bytes(name),
					   0, 1, 0, 0, args);
	snprintf(what, sizeof(what), "declare queue \"%s\"", name);
	return amqp_conn_reply_ok(&conn, what);
}

static bool
bind_queue(const char *queue, const char *exchange, const char *key)
{
	char		what[300];

	amqp_queue_bind(conn.state, CH_CONSUME, amqp_cstring_bytes(queue),
					amqp_cstring_bytes(exchange), amqp_cstring_bytes(key),
					amqp_empty_table);
	snprintf(what, sizeof(what), "bind queue \"%s\" to exchange \"%s\"",
			 queue, exchange);
	return amqp_conn_reply_ok(&conn, what);
}

static bool
declare_topology(void)
{
	const char *queue = messaging_consumer_queue;
	amqp_table_entry_t e[3];
	amqp_table_t args;
	int			n;

	if (!amqp_conn_declare_exchange(&conn, CH_CONSUME, MESSAGING_TOPIC_EXCHANGE, "topic") ||
		!amqp_conn_declare_exchange(&conn, CH_CONSUME, MESSAGING_FANOUT_EXCHANGE, "fanout"))
		return false;

	if (!declare_queue(queue, amqp_empty_table) ||
		!bind_queue(queue, MESSAGING_TOPIC_EXCHANGE,
					psprintf("%s.#", messaging_app_name)) ||
		!bind_queue(queue, MESSAGING_FANOUT_EXCHANGE, "") ||
		!declare_queue(dlq_name(), amqp_empty_table))
		return false;

	for (n = 1; n <= messaging_max_retries; n++)
	{
		e[0].key = amqp_cstring_bytes("x-message-ttl");
		e[0].value.kind = AMQP_FIELD_KIND_I64;
		e[0].value.value.i64 = retry_delay_ms(n);
		e[1].key = amqp_cstring_bytes("x-dead-letter-exchange");
		e[1].value.kind = AMQP_FIELD_KIND_UTF8;
		e[1].value.value.bytes = amqp_cstring_bytes("");
		e[2].key = amqp_cstring_bytes("x-dead-letter-routing-key");
		e[2].value.kind = AMQP_FIELD_KIND_UTF8;
		e[2].value.value.bytes = amqp_cstring_bytes(queue);
		args.num_entries = 3;
		args.entries = e;
		if (!declare_queue(retry_queue_name(n), args))
			return false;
	}
	return true;
}

static bool
open_publish_channel(void)
{
	if (!amqp_conn_confirm_channel(&conn, CH_PUBLISH, true))
		return false;
	publish_seq = 0;
	return true;
}

static void
discard_pending(void)
{
	ListCell   *lc;

	foreach(lc, pending)
	{
		Delivery   *d = lfirst(lc);

		amqp_destroy_message(&d->msg);
		pfree(d->exchange);
		pfree(d->routing_key);
		pfree(d);
	}
	list_free(pending);
	pending = NIL;
}

static bool
consumer_connect(void)
{
	char		name[64];
	MemoryContext old;

	set_state(MSG_CONN_CONNECTING, NULL);
	snprintf(name, sizeof(name), "messaging consumer (pid %d)", MyProcPid);

	/* the declarations allocate a little; keep it out of long-lived memory */
	MemoryContextReset(message_context);
	old = MemoryContextSwitchTo(message_context);

	if (!amqp_conn_open(&conn, messaging_broker_url, messaging_broker_ca_file,
						name))
		goto fail;
	if (!declare_topology())
		goto fail;
	if (!open_publish_channel())
		goto fail;

	amqp_basic_qos(conn.state, CH_CONSUME, 0,
				   (uint16_t) messaging_consumer_prefetch, 0);
	if (!amqp_conn_reply_ok(&conn, "set the consumer prefetch"))
		goto fail;
	amqp_basic_consume(conn.state, CH_CONSUME,
					   amqp_cstring_bytes(messaging_consumer_queue),
					   amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
	if (!amqp_conn_reply_ok(&conn, psprintf("consume from queue \"%s\"",
											messaging_consumer_queue)))
		goto fail;
	MemoryContextSwitchTo(old);

	generation++;
	cancelled = false;
	discard_pending();
	if (topology_key)
		pfree(topology_key);
	topology_key = make_topology_key();
	last_depth = 0;

	amqp_link_up(&broker, psprintf(", consuming queue \"%s\"",
								   messaging_consumer_queue));
	if (conn.heartbeat > 0 &&
		messaging_handler_timeout > conn.heartbeat * 1000)
		ereport(LOG,
				(errmsg("\"%s\" is above the heartbeat interval of %d s",
						"messaging.handler_timeout", conn.heartbeat),
				 errdetail("No heartbeat is sent while a handler runs, so the broker "
						   "may close the connection of a slow handler, and the "
						   "event is then redelivered."),
				 errhint("Lower \"%s\" or raise \"%s\".",
						 "messaging.handler_timeout", "messaging.heartbeat")));
	return true;

fail:
	MemoryContextSwitchTo(old);
	amqp_link_failed(&broker, "set up consumption from",
					 "Messages wait in the broker.");
	return false;
}

/*
 * The connection broke (conn.error says why): forget it, and everything
 * read on it, and schedule a reconnect.  Returns false for convenience.
 */
static bool
consumer_lost_connection(void)
{
	amqp_link_lost(&broker);
	discard_pending();
	return false;
}

/* ----------
 * Frames
 * ----------
 */

static void
channel_closed(const amqp_frame_t *frame)
{
	amqp_channel_close_t *m = frame->payload.method.decoded;
	amqp_channel_close_ok_t ok;

	snprintf(conn.error, sizeof(conn.error),
			 "broker closed the %s channel: %u %.*s",
			 frame->channel == CH_CONSUME ? "consuming" : "publishing",
			 m->reply_code, (int) m->reply_text.len,
			 (char *) m->reply_text.bytes);
	(void) amqp_send_method(conn.state, frame->channel,
							AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
}

static bool
read_delivery(const amqp_frame_t *frame)
{
	amqp_basic_deliver_t *m = frame->payload.method.decoded;
	Delivery   *d;
	amqp_rpc_reply_t r;
	MemoryContext old = MemoryContextSwitchTo(consumer_context);

	d = palloc0(sizeof(Delivery));
	d->generation = generation;
	d->tag = m->delivery_tag;
	d->redelivered = m->redelivered;
	d->exchange = amqp_bytes_to_cstring(m->exchange);
	d->routing_key = amqp_bytes_to_cstring(m->routing_key);
	MemoryContextSwitchTo(old);

	r = amqp_read_message(conn.state, frame->channel, &d->msg, 0);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
	{
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
			amqp_conn_status_error(&conn, r.library_error,
								   "read delivered message");
		else
			snprintf(conn.error, sizeof(conn.error),
					 "could not read delivered message");
		pfree(d->exchange);
		pfree(d->routing_key);
		pfree(d);
		return false;
	}

	old = MemoryContextSwitchTo(consumer_context);
	pending = lappend(pending, d);
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * Reads one frame, waiting up to timeout_ms, and acts on it.  Returns
 * AMQP_STATUS_OK when a frame was handled, AMQP_STATUS_TIMEOUT when none
 * came, anything else when the connection is unusable (conn.error says
 * why).
 */
static int
read_frame(long timeout_ms)
{
	amqp_frame_t frame;
	int			rc;

	rc = amqp_conn_next_frame(&conn, &frame, timeout_ms);
	if (rc != AMQP_STATUS_OK)
		return rc;
	if (frame.frame_type != AMQP_FRAME_METHOD)
		return AMQP_STATUS_OK;

	switch (frame.payload.method.id)
	{
		case AMQP_BASIC_DELIVER_METHOD:
			if (!read_delivery(&frame))
				return AMQP_STATUS_CONNECTION_CLOSED;
			break;
		case AMQP_BASIC_ACK_METHOD:
			{
				amqp_basic_ack_t *m = frame.payload.method.decoded;

				if (m->delivery_tag == publish_seq ||
					(m->multiple && m->delivery_tag >= publish_seq))
					confirm_state = 1;
				break;
			}
		case AMQP_BASIC_NACK_METHOD:
			{
				amqp_basic_nack_t *m = frame.payload.method.decoded;

				if (m->delivery_tag == publish_seq ||
					(m->multiple && m->delivery_tag >= publish_seq))
					confirm_state = -1;
				break;
			}
		case AMQP_BASIC_RETURN_METHOD:
			{
				amqp_message_t msg;
				amqp_rpc_reply_t r;

				r = amqp_read_message(conn.state, frame.channel, &msg, 0);
				if (r.reply_type != AMQP_RESPONSE_NORMAL)
				{
					snprintf(conn.error, sizeof(conn.error),
							 "could not read returned message");
					return AMQP_STATUS_CONNECTION_CLOSED;
				}
				amqp_destroy_message(&msg);
				publish_returned = true;
				break;
			}
		case AMQP_BASIC_CANCEL_METHOD:
			if (!cancelled)
				ereport(LOG,
						(errmsg("messaging consumer was cancelled by the broker, consuming queue "
								"\"%s\"",
								messaging_consumer_queue),
						 errdetail("The queue was probably deleted; it is declared again.")));
			cancelled = true;
			break;
		case AMQP_CHANNEL_CLOSE_METHOD:
			channel_closed(&frame);
			return AMQP_STATUS_CONNECTION_CLOSED;
		default:
			if (!amqp_conn_handle_connection_frame(&conn, &frame))
				return AMQP_STATUS_CONNECTION_CLOSED;
			break;
	}
	return AMQP_STATUS_OK;
}

/* Reads whatever frames are available without waiting. */
static bool
read_available(void)
{
	int			rc;

	while ((rc = read_frame(0)) == AMQP_STATUS_OK)
		;
	return rc == AMQP_STATUS_TIMEOUT;
}

/* Sends a heartbeat when half an interval passed since the last one. */
static void
beat_if_due(void)
{
	(void) amqp_conn_beat(&conn);
}

/*
 * Publishes one message through the default exchange to a queue, and
 * waits for the broker's confirm.  Returns false when the broker did not
 * take it; conn.error then says why and the connection is to be dropped.
 */
static bool
publish_confirmed(const char *queue, amqp_basic_properties_t *props,
				  amqp_bytes_t body)
{
	TimestampTz start = GetCurrentTimestamp();
	int			rc;

	confirm_state = 0;
	publish_returned = false;
	if (amqp_conn_publish(&conn, CH_PUBLISH, "", queue, true, props,
						  body) != AMQP_STATUS_OK)
		return false;
	publish_seq++;

	while (confirm_state == 0)
	{
		CHECK_FOR_INTERRUPTS();
		rc = read_frame(CONSUMER_WAIT_SLICE_MS);
		if (rc != AMQP_STATUS_OK && rc != AMQP_STATUS_TIMEOUT)
			return false;
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(),
									   messaging_confirm_timeout))
		{
			snprintf(conn.error, sizeof(conn.error),
					 "no publisher confirm from the broker within %d ms for a message to queue "
					 "\"%s\"",
					 messaging_confirm_timeout, queue);
			return false;
		}
		beat_if_due();
	}
	if (confirm_state < 0)
	{
		snprintf(conn.error, sizeof(conn.error),
				 "broker rejected a message for queue \"%s\"", queue);
		return false;
	}
	if (publish_returned)
	{
		snprintf(conn.error, sizeof(conn.error),
				 "broker could not route a message to queue \"%s\"", queue);
		return false;
	}
	return true;
}

static bool
ack_delivery(Delivery *d)
{
	int			rc;

	/* a tag means nothing on another connection */
	if (d->generation != generation || conn.state == NULL)
		return true;
	rc = amqp_basic_ack(conn.state, CH_CONSUME, d->tag, 0);
	if (rc != AMQP_STATUS_OK)
	{
		amqp_conn_status_error(&conn, rc, "acknowledge a message");
		return false;
	}
	return true;
}

/* ----------
 * Headers
 * ----------
 */

static const amqp_field_value_t *
find_header(const amqp_basic_properties_t *p, const char *key)
{
	int			i;
	size_t		len = strlen(key);

	if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
		return NULL;
	for (i = 0; i < p->headers.num_entries; i++)
	{
		const amqp_table_entry_t *e = &p->headers.entries[i];

		if (e->key.len == len && memcmp(e->key.bytes, key, len) == 0)
			return &e->value;
	}
	return NULL;
}

static bool
field_int64(const amqp_field_value_t *v, int64 *out)
{
	if (v == NULL)
		return false;
	switch (v->kind)
	{
		case AMQP_FIELD_KIND_I8:
			*out = v->value.i8;
			return true;
		case AMQP_FIELD_KIND_U8:
			*out = v->value.u8;
			return true;
		case AMQP_FIELD_KIND_I16:
			*out = v->value.i16;
			return true;
		case AMQP_FIELD_KIND_U16:
			*out = v->value.u16;
			return true;
		case AMQP_FIELD_KIND_I32:
			*out = v->value.i32;
			return true;
		case AMQP_FIELD_KIND_U32:
			*out = v->value.u32;
			return true;
		case AMQP_FIELD_KIND_I64:
			*out = v->value.i64;
			return true;
		case AMQP_FIELD_KIND_U64:
		case AMQP_FIELD_KIND_TIMESTAMP:
			*out = (int64) v->value.u64;
			return true;
		default:
			return false;
	}
}

static int
message_attempt(const Delivery *d)
{
	int64		n;

	if (!field_int64(find_header(&d->msg.properties, CONSUMER_ATTEMPT_HEADER), &n))
		return 0;
	return (int) Max(0, Min(n, 1000));
}

static TimestampTz
message_first_seen(const Delivery *d)
{
	int64		ms;

	if (!field_int64(find_header(&d->msg.properties, "x-messaging-first-seen"), &ms) ||
		ms <= 0)
		return GetCurrentTimestamp();
	return time_t_to_timestamptz((pg_time_t) (ms / 1000)) + (ms % 1000) * 1000;
}

/* Whether a header of the original is left out of a republished copy. */
static bool
dropped_header(amqp_bytes_t key)
{
	static const char *const prefixes[] = {"x-death", "x-first-death-",
	"x-last-death-", "x-messaging-"};
	int			i;

	for (i = 0; i < (int) lengthof(prefixes); i++)
	{
		size_t		len = strlen(prefixes[i]);

		if (key.len >= len && memcmp(key.bytes, prefixes[i], len) == 0)
			return true;
	}
	return false;
}

static void
set_utf8_entry(amqp_table_entry_t *e, const char *key, const char *value)
{
	e->key = amqp_cstring_bytes(key);
	e->value.kind = AMQP_FIELD_KIND_UTF8;
	e->value.value.bytes = amqp_cstring_bytes(value);
}

static void
set_int_entry(amqp_table_entry_t *e, const char *key, int64 value)
{
	e->key = amqp_cstring_bytes(key);
	e->value.kind = AMQP_FIELD_KIND_I64;
	e->value.value.i64 = value;
}

/* Cuts a string to at most len bytes, on a character boundary. */
static char *
clip(const char *s, int len)
{
	int			n = strlen(s);

	if (n <= len)
		return pstrdup(s);
	n = pg_mbcliplen(s, n, len);
	return pnstrdup(s, n);
}

/*
 * Properties of a copy of d's message: the original ones, with the
 * headers of the broker's dead-lettering and our own replaced by the
 * attempt count, error and (for dead letters) reason.  Allocated in the
 * message context.
 */
static amqp_basic_properties_t
copy_properties(const Delivery *d, int attempt, const char *error,
				const char *reason)
{
	amqp_basic_properties_t p = d->msg.properties;
	const amqp_table_t *orig = &d->msg.properties.headers;
	int			norig = (p._flags & AMQP_BASIC_HEADERS_FLAG) ? orig->num_entries : 0;
	amqp_table_entry_t *e = palloc(sizeof(amqp_table_entry_t) * (norig + 6));
	TimestampTz first_seen = message_first_seen(d);
	int			n = 0;
	int			i;

	for (i = 0; i < norig; i++)
		if (!dropped_header(orig->entries[i].key))
			e[n++] = orig->entries[i];

	set_int_entry(&e[n++], CONSUMER_ATTEMPT_HEADER, attempt);
	set_int_entry(&e[n++], "x-messaging-first-seen",
				  (int64) timestamptz_to_time_t(first_seen) * 1000 +
				  (first_seen % USECS_PER_SEC) / 1000);
	set_utf8_entry(&e[n++], "x-messaging-error",
				   clip(error, CONSUMER_HEADER_ERROR_LEN));
	if (reason != NULL)
	{
		set_utf8_entry(&e[n++], "x-messaging-reason", reason);
		set_utf8_entry(&e[n++], "x-messaging-original-exchange", d->exchange);
		set_utf8_entry(&e[n++], "x-messaging-original-routing-key",
					   d->routing_key);
	}
	p._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
	p.headers.num_entries = n;
	p.headers.entries = e;
	/* a copy must not expire on its own */
	p._flags &= ~AMQP_BASIC_EXPIRATION_FLAG;
	return p;
}

static void json_field(StringInfo buf, const amqp_field_value_t *v);

/* Appends bytes as a JSON string, hex-encoded unless valid UTF-8 text. */
static void
json_bytes(StringInfo buf, amqp_bytes_t b)
{
	const char *s = b.bytes;
	size_t		i;

	if (b.len == 0 ||
		(memchr(s, '\0', b.len) == NULL &&
		 pg_encoding_verifymbstr(PG_UTF8, s, b.len) == (int) b.len &&
		 GetDatabaseEncoding() == PG_UTF8))
	{
		char	   *c = pnstrdup(s, b.len);

		escape_json(buf, c);
		pfree(c);
		return;
	}
	appendStringInfoString(buf, "\"\\\\x");
	for (i = 0; i < b.len; i++)
		appendStringInfo(buf, "%02x", (unsigned char) s[i]);
	appendStringInfoChar(buf, '"');
}

static void
json_table(StringInfo buf, const amqp_table_t *t)
{
	int			i;

	appendStringInfoChar(buf, '{');
	for (i = 0; i < t->num_entries; i++)
	{
		if (i > 0)
			appendStringInfoChar(buf, ',');
		json_bytes(buf, t->entries[i].key);
		appendStringInfoChar(buf, ':');
		json_field(buf, &t->entries[i].value);
	}
	appendStringInfoChar(buf, '}');
}

static void
json_field(StringInfo buf, const amqp_field_value_t *v)
{
	int64		n;
	int			i;

	if (field_int64(v, &n))
	{
		appendStringInfo(buf, INT64_FORMAT, n);
		return;
	}
	switch (v->kind)
	{
		case AMQP_FIELD_KIND_BOOLEAN:
			appendStringInfoString(buf, v->value.boolean ? "true" : "false");
			break;
		case AMQP_FIELD_KIND_F32:
		case AMQP_FIELD_KIND_F64:
			{
				double		f = v->kind == AMQP_FIELD_KIND_F32 ?
				v->value.f32 : v->value.f64;

				if (isfinite(f))
					appendStringInfo(buf, "%.17g", f);
				else
					appendStringInfoString(buf, "null");
				break;
			}
		case AMQP_FIELD_KIND_DECIMAL:
			appendStringInfo(buf, "{\"decimals\":%u,\"value\":%u}",
							 v->value.decimal.decimals, v->value.decimal.value);
			break;
		case AMQP_FIELD_KIND_UTF8:
		case AMQP_FIELD_KIND_BYTES:
			json_bytes(buf, v->value.bytes);
			break;
		case AMQP_FIELD_KIND_TABLE:
			json_table(buf, &v->value.table);
			break;
		case AMQP_FIELD_KIND_ARRAY:
			appendStringInfoChar(buf, '[');
			for (i = 0; i < v->value.array.num_entries; i++)
			{
				if (i > 0)
					appendStringInfoChar(buf, ',');
				json_field(buf, &v->value.array.entries[i]);
			}
			appendStringInfoChar(buf, ']');
			break;
		default:
			appendStringInfoString(buf, "null");
			break;
	}
}

/* ----------
 * SQL
 * ----------
 */

static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static void
forget_plans(void)
{
	dedupe_plan = handlers_plan = counters_plan = ack_plan = NULL;
	dead_letter_plan = NULL;
}

static void
begin_xact(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	debug_query_string = activity;
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
commit_xact(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	debug_query_string = NULL;
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

static Datum
text_or_null(const char *s, char *isnull)
{
	*isnull = s ? ' ' : 'n';
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

static void
bump_counters(const IncomingEvent *ev, int acknowledged, int failed,
			  int unhandled)
{
	Datum		args[7];
	char		nulls[7];

	if (counters_plan == NULL)
	{
		Oid			types[7] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID,
		INT8OID, INT8OID};

		counters_plan = prepare("SELECT messaging._bump_counters(ARRAY[$1],"
								" ARRAY[$2], ARRAY[$3], ARRAY[$4], ARRAY[0::bigint],"
								" ARRAY[$5], ARRAY[$6], ARRAY[1::bigint], ARRAY[$7])",
								7, types);
	}
	memset(nulls, ' ', sizeof(nulls));
	args[0] = text_or_null(ev->tenant, &nulls[0]);
	args[1] = CStringGetTextDatum(ev->source);
	args[2] = CStringGetTextDatum(messaging_app_name);
	args[3] = CStringGetTextDatum(ev->type);
	args[4] = Int64GetDatum(acknowledged);
	args[5] = Int64GetDatum(failed);
	args[6] = Int64GetDatum(unhandled);
	if (SPI_execute_plan(counters_plan, args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not bump event counters");
}

/* ----------
 * Validation
 * ----------
 */

static bool
is_uuid_text(const char *s)
{
	int			i;

	if (strlen(s) != 36)
		return false;
	for (i = 0; i < 36; i++)
	{
		if (i == 8 || i == 13 || i == 18 || i == 23)
		{
			if (s[i] != '-')
				return false;
		}
		else if (!isxdigit((unsigned char) s[i]))
			return false;
	}
	return true;
}

/* The string value of key in an object, or NULL; *present says if found. */
static char *
object_string(JsonbContainer *obj, const char *key, bool *present,
			  bool *is_string)
{
	JsonbValue	v;

	*present = *is_string = false;
	if (getKeyJsonValueFromContainer(obj, key, strlen(key), &v) == NULL)
		return NULL;
	*present = true;
	if (v.type != jbvString)
		return NULL;
	*is_string = true;
	return pnstrdup(v.val.string.val, v.val.string.len);
}

/*
 * Checks the parsed envelope; returns NULL when fine, otherwise what is
 * wrong with it.
 */
static char *
check_envelope(IncomingEvent *ev)
{
	JsonbContainer *root = &ev->envelope->root;
	bool		present;
	bool		is_string;

	if (!JB_ROOT_IS_OBJECT(ev->envelope))
		return pstrdup("message body is not a JSON object");

	ev->type = object_string(root, "type", &present, &is_string);
	if (!present)
		return pstrdup("event has no \"type\" attribute");
	if (!is_string)
		return pstrdup("event attribute \"type\" is not a string");
	if (!messaging_is_event_type(ev->type))
		return psprintf("event type \"%s\" is not valid: it must be lower-case dot-separated words",
						clip(ev->type, 200));

	ev->id = object_string(root, "id", &present, &is_string);
	if (!present)
		return pstrdup("event has no \"id\" attribute");
	if (!is_string)
		return pstrdup("event attribute \"id\" is not a string");
	if (!is_uuid_text(ev->id))
		return psprintf("event id \"%s\" is not a UUID", clip(ev->id, 100));
	memcpy(&ev->uuid, DatumGetUUIDP(DirectFunctionCall1(uuid_in,
														CStringGetDatum(ev->id))),
		   sizeof(pg_uuid_t));
	ev->has_uuid = true;

	ev->source = object_string(root, "source", &present, &is_string);
	if (ev->source == NULL)
		ev->source = pstrdup("");
	else
		ev->source = clip(ev->source, 255);
	ev->tenant = object_string(root, "tenantid", &present, &is_string);
	if (ev->tenant)
		ev->tenant = clip(ev->tenant, MESSAGING_MAX_TENANT_ID);

	if (strcmp(ev->type, ACK_EVENT_TYPE) == 0)
	{
		JsonbValue	data;
		JsonbValue	v;
		char	   *id;

		if (getKeyJsonValueFromContainer(root, "data", 4, &data) == NULL ||
			data.type != jbvBinary ||
			!JsonContainerIsObject(data.val.binary.data))
			return pstrdup("acknowledgement has no \"data\" object");
		id = object_string(data.val.binary.data, "event_id", &present,
						   &is_string);
		if (id == NULL || !is_uuid_text(id))
			return pstrdup("acknowledgement has no \"event_id\" UUID string in its data");
		memcpy(&ev->ack_id, DatumGetUUIDP(DirectFunctionCall1(uuid_in,
															  CStringGetDatum(id))),
			   sizeof(pg_uuid_t));

		ev->ack_success = true;
		if (getKeyJsonValueFromContainer(data.val.binary.data, "success", 7, &v))
		{
			if (v.type == jbvBool)
				ev->ack_success = v.val.boolean;
			else if (v.type != jbvNull)
				return pstrdup("acknowledgement attribute \"success\" is not a boolean");
		}
		ev->ack_error = object_string(data.val.binary.data, "error", &present,
									  &is_string);
	}
	return NULL;
}

/*
 * Checks of the raw body that need no transaction.  Returns NULL or the
 * problem.
 */
static char *
check_body(const Delivery *d)
{
	const char *s = d->msg.body.bytes;
	int			len = (int) d->msg.body.len;
	int			valid;

	if (d->msg.body.len > (size_t) messaging_max_message_bytes)
		return psprintf("message body of %zu bytes exceeds \"messaging.max_message_bytes\" (%d "
						"bytes)",
						d->msg.body.len, messaging_max_message_bytes);
	if (len == 0)
		return pstrdup("message body is empty");
	valid = pg_encoding_verifymbstr(PG_UTF8, s, len);
	if (valid != len)
		return psprintf("message body is not valid UTF-8 (invalid byte sequence at offset %d)",
						valid);
	return NULL;
}

/* ----------
 * Handlers
 * ----------
 */

static int
handler_order(const ListCell *a, const ListCell *b)
{
	const HandlerRow *ha = lfirst(a);
	const HandlerRow *hb = lfirst(b);
	int			c = messaging_topic_compare(ha->pattern, hb->pattern);

	if (c != 0)
		return c;
	return ha->id < hb->id ? -1 : (ha->id > hb->id ? 1 : 0);
}

static List *
matching_handlers(const char *event_type)
{
	List	   *result = NIL;
	uint64		i;

	if (handlers_plan == NULL)
		handlers_plan = prepare("SELECT id, pattern, handler::oid, owner::oid"
								" FROM messaging.handlers ORDER BY id", 0, NULL);
	if (SPI_execute_plan(handlers_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read messaging.handlers");

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *pattern = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));

		if (messaging_topic_match(pattern, event_type))
		{
			HandlerRow *h = palloc(sizeof(HandlerRow));

			h->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			h->pattern = pattern;
			h->func = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
			h->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
			result = lappend(result, h);
		}
	}
	list_sort(result, handler_order);
	return result;
}

/*
 * Runs one handler as its owner, bounded by messaging.handler_timeout.
 * Errors propagate; the caller's transaction abort restores the user id,
 * the settings and the timeout.
 */
static void
run_handler(const HandlerRow *h, Datum envelope, const char *event_type)
{
	FmgrInfo	flinfo;
	LOCAL_FCINFO(fcinfo, 1);
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	char		timeout[32];
	char	   *activity;

	if (!SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(h->func)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler function %u of pattern \"%s\" does not exist",
						h->func, h->pattern),
				 errhint("Unregister the handler with id " INT64_FORMAT ".",
						 h->id)));
	snprintf(current_handler, sizeof(current_handler), "%s",
			 format_procedure(h->func));
	{
		Oid		   *argtypes;
		int			nargs;

		/* the table's trigger checked this; a function's OID keeps it */
		if (get_func_signature(h->func, &argtypes, &nargs) != VOIDOID ||
			nargs != 1 || argtypes[0] != JSONBOID)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
					 errmsg("function %s cannot be an event handler",
							current_handler)));
	}
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(h->owner)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("owner role %u of handler %s does not exist",
						h->owner, current_handler)));
	if (pg_proc_aclcheck(h->func, h->owner, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" may no longer execute handler %s",
						GetUserNameFromId(h->owner, false), current_handler)));

	activity = psprintf("messaging consumer: %s for event type \"%s\"",
						current_handler, event_type);
	debug_query_string = activity;
	pgstat_report_activity(STATE_RUNNING, activity);
	beat_if_due();

	fmgr_info(h->func, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = envelope;
	fcinfo->args[0].isnull = false;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(h->owner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	save_nestlevel = NewGUCNestLevel();
	snprintf(timeout, sizeof(timeout), "%d", messaging_handler_timeout);
	(void) set_config_option("statement_timeout", timeout, PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	enable_timeout_after(STATEMENT_TIMEOUT, messaging_handler_timeout);

	(void) FunctionCallInvoke(fcinfo);

	/* a timeout that fired after the handler returned is void */
	disable_timeout(STATEMENT_TIMEOUT, false);
	AtEOXact_GUC(true, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	/* later handlers see what this one did */
	CommandCounterIncrement();
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
	current_handler[0] = '\0';
}

/*
 * The transaction of one valid event.  Returns the outcome; errors
 * propagate to the caller.
 */
static HandleOutcome
handle_event(IncomingEvent *ev, int *nhandlers)
{
	Datum		args[2];
	List	   *handlers;
	ListCell   *lc;
	bool		is_ack = strcmp(ev->type, ACK_EVENT_TYPE) == 0;

	if (dedupe_plan == NULL)
	{
		Oid			types[2] = {UUIDOID, TEXTOID};

		dedupe_plan = prepare("INSERT INTO messaging.handled_events"
							  " (event_id, source_app) VALUES ($1, $2)"
							  " ON CONFLICT (event_id) DO NOTHING", 2, types);
	}
	args[0] = UUIDPGetDatum(&ev->uuid);
	args[1] = CStringGetTextDatum(ev->source);
	if (SPI_execute_plan(dedupe_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record handled event");
	if (SPI_processed == 0)
		return OUTCOME_DUPLICATE;

	if (is_ack)
	{
		Datum		aargs[3];
		char		nulls[3] = {' ', ' ', ' '};

		if (ack_plan == NULL)
		{
			Oid			types[3] = {UUIDOID, BOOLOID, TEXTOID};

			ack_plan = prepare("SELECT messaging.acknowledge_event($1, $2, $3)",
							   3, types);
		}
		aargs[0] = UUIDPGetDatum(&ev->ack_id);
		aargs[1] = BoolGetDatum(ev->ack_success);
		aargs[2] = text_or_null(ev->ack_error, &nulls[2]);
		snprintf(current_handler, sizeof(current_handler),
				 "messaging.acknowledge_event");
		if (SPI_execute_plan(ack_plan, aargs, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not record acknowledgement");
		current_handler[0] = '\0';
	}

	handlers = matching_handlers(ev->type);
	foreach(lc, handlers)
		run_handler(lfirst(lc), JsonbPGetDatum(ev->envelope), ev->type);
	*nhandlers = list_length(handlers);

	if (handlers == NIL && !is_ack)
	{
		bump_counters(ev, 0, 0, 1);
		return OUTCOME_UNHANDLED;
	}
	bump_counters(ev, 1, 0, 0);
	return OUTCOME_HANDLED;
}

/*
 * Validates and handles a message in one transaction.  *error receives
 * the reason of OUTCOME_INVALID and OUTCOME_FAILED.
 */
static HandleOutcome
process_in_xact(Delivery *d, IncomingEvent *ev, char **error, int *nhandlers)
{
	HandleOutcome outcome = OUTCOME_INVALID;
	volatile bool parsed = false;
	MemoryContext ctx = CurrentMemoryContext;
	char	   *problem;

	*error = NULL;
	*nhandlers = 0;
	memset(ev, 0, sizeof(IncomingEvent));

	problem = check_body(d);
	if (problem != NULL)
	{
		*error = problem;
		return OUTCOME_INVALID;
	}

	begin_xact("messaging consumer: handle event");
	current_handler[0] = '\0';
	PG_TRY();
	{
		char	   *text = pnstrdup(d->msg.body.bytes, d->msg.body.len);

		if (GetDatabaseEncoding() != PG_UTF8)
			text = pg_any_to_server(text, strlen(text), PG_UTF8);
		ev->envelope = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
														  CStringGetDatum(text)));
		problem = check_envelope(ev);
		parsed = true;
		if (problem == NULL)
			outcome = handle_event(ev, nhandlers);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(ctx);
		disable_timeout(STATEMENT_TIMEOUT, false);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		debug_query_string = NULL;
		pgstat_report_activity(STATE_IDLE, NULL);

		if (!parsed)
		{
			*error = psprintf("message body is not valid JSON: %s%s%s",
							  edata->message,
							  edata->detail ? ": " : "",
							  edata->detail ? edata->detail : "");
			return OUTCOME_INVALID;
		}
		if (current_handler[0])
			*error = psprintf("%s failed: %s%s%s", current_handler,
							  edata->message,
							  edata->detail ? ": " : "",
							  edata->detail ? edata->detail : "");
		else
			*error = psprintf("could not handle event: %s", edata->message);
		FreeErrorData(edata);
		current_handler[0] = '\0';
		return OUTCOME_FAILED;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(ctx);
	if (problem != NULL)
	{
		/* nothing was written */
		SPI_finish();
		PopActiveSnapshot();
		AbortCurrentTransaction();
		debug_query_string = NULL;
		pgstat_report_activity(STATE_IDLE, NULL);
		*error = problem;
		return OUTCOME_INVALID;
	}
	commit_xact();
	return outcome;
}

/*
 * Records a dead letter: first on the broker (the DLQ), then in
 * messaging.dead_letters, then the caller acknowledges.  Returns false
 * when the connection broke.
 */
static bool
dead_letter(Delivery *d, const IncomingEvent *ev, const char *reason,
			const char *error, int attempts)
{
	amqp_basic_properties_t props = copy_properties(d, attempts, error, reason);
	const amqp_basic_properties_t *p = &d->msg.properties;
	StringInfoData headers;
	StringInfoData properties;
	Datum		args[13];
	char		nulls[13];
	bytea	   *body;
	char	   *dlq = dlq_name();

	if (!publish_confirmed(dlq, &props, d->msg.body))
		return false;
	memset(nulls, ' ', sizeof(nulls));

	initStringInfo(&headers);
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
		json_table(&headers, &p->headers);
	else
		appendStringInfoString(&headers, "{}");

	/* the properties a replay restores */
	initStringInfo(&properties);
	appendStringInfoChar(&properties, '{');
	if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
	{
		appendStringInfoString(&properties, "\"content_type\":");
		json_bytes(&properties, p->content_type);
		appendStringInfoChar(&properties, ',');
	}
	if (p->_flags & AMQP_BASIC_TYPE_FLAG)
	{
		appendStringInfoString(&properties, "\"type\":");
		json_bytes(&properties, p->type);
		appendStringInfoChar(&properties, ',');
	}
	if (p->_flags & AMQP_BASIC_APP_ID_FLAG)
	{
		appendStringInfoString(&properties, "\"app_id\":");
		json_bytes(&properties, p->app_id);
		appendStringInfoChar(&properties, ',');
	}
	if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
	{
		appendStringInfoString(&properties, "\"correlation_id\":");
		json_bytes(&properties, p->correlation_id);
		appendStringInfoChar(&properties, ',');
	}
	if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
		appendStringInfo(&properties, "\"timestamp\":" UINT64_FORMAT ",",
						 (uint64) p->timestamp);
	if (properties.data[properties.len - 1] == ',')
		properties.data[--properties.len] = '\0';
	appendStringInfoChar(&properties, '}');

	body = palloc(VARHDRSZ + d->msg.body.len);
	SET_VARSIZE(body, VARHDRSZ + d->msg.body.len);
	memcpy(VARDATA(body), d->msg.body.bytes, d->msg.body.len);

	begin_xact("messaging consumer: record dead letter");
	if (dead_letter_plan == NULL)
	{
		Oid			types[13] = {TEXTOID, UUIDOID, TEXTOID, TEXTOID, TEXTOID,
			TEXTOID, TEXTOID, TEXTOID, BYTEAOID, TEXTOID, TEXTOID, INT4OID,
		TIMESTAMPTZOID};

		dead_letter_plan = prepare("INSERT INTO messaging.dead_letters"
								   " (message_id, event_id, event_type, source_app,"
								   " exchange, routing_key, headers, properties,"
								   " body, reason, error, attempts, first_seen_at)"
								   " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb,"
								   " $8::jsonb, $9, $10, $11, $12, $13)",
								   13, types);
	}
	args[0] = (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ?
		CStringGetTextDatum(clip(amqp_bytes_to_cstring(p->message_id), 255)) :
		(nulls[0] = 'n', (Datum) 0);
	if (ev != NULL && ev->has_uuid)
	{
		args[1] = UUIDPGetDatum(&ev->uuid);
		args[2] = CStringGetTextDatum(ev->type);
		args[3] = CStringGetTextDatum(ev->source);
	}
	else
	{
		nulls[1] = nulls[2] = nulls[3] = 'n';
		args[1] = args[2] = args[3] = (Datum) 0;
	}
	args[4] = CStringGetTextDatum(d->exchange);
	args[5] = CStringGetTextDatum(d->routing_key);
	args[6] = CStringGetTextDatum(headers.data);
	args[7] = CStringGetTextDatum(properties.data);
	args[8] = PointerGetDatum(body);
	args[9] = CStringGetTextDatum(reason);
	args[10] = CStringGetTextDatum(error);
	args[11] = Int32GetDatum(attempts);
	args[12] = TimestampTzGetDatum(message_first_seen(d));
	if (SPI_execute_plan(dead_letter_plan, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record dead letter");
	if (ev != NULL && ev->has_uuid)
		bump_counters(ev, 0, 1, 0);
	commit_xact();

	ereport(LOG,
			(errmsg("messaging consumer dead-lettered message \"%s\" from queue \"%s\" after %d "
					"attempts",
					(p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ?
					clip(amqp_bytes_to_cstring(p->message_id), 100) : "",
					messaging_consumer_queue, attempts),
			 errdetail("%s", error)));
	count_outcome(false, true);
	return true;
}

/*
 * Handles one delivery to the end: acked, retried or dead-lettered.
 * Returns false when the connection broke.
 */
static bool
process_delivery(Delivery *d)
{
	IncomingEvent ev;
	HandleOutcome outcome;
	char	   *error;
	int			nhandlers;
	int			attempt = message_attempt(d);

	outcome = process_in_xact(d, &ev, &error, &nhandlers);

	switch (outcome)
	{
		case OUTCOME_DUPLICATE:
			elog(DEBUG1, "messaging consumer: event %s was handled before", ev.id);
			return ack_delivery(d);

		case OUTCOME_HANDLED:
		case OUTCOME_UNHANDLED:
			if (outcome == OUTCOME_HANDLED && messaging_debug_exit_before_ack)
			{
				ereport(LOG,
						(errmsg("messaging consumer exiting before acknowledging event %s",
								ev.id),
						 errdetail("\"%s\" is on.", "messaging.debug_exit_before_ack")));
				proc_exit(1);
			}
			count_outcome(true, false);
			elog(DEBUG1, "messaging consumer: event %s of type \"%s\" %s by %d handlers",
				 ev.id, ev.type,
				 outcome == OUTCOME_HANDLED ? "handled" : "not handled",
				 nhandlers);
			return ack_delivery(d);

		case OUTCOME_INVALID:
			return dead_letter(d, &ev, "invalid", error,
							   attempt + 1) &&
				ack_delivery(d);

		case OUTCOME_FAILED:
			if (attempt < messaging_max_retries)
			{
				amqp_basic_properties_t props;
				char	   *queue = retry_queue_name(attempt + 1);

				ereport(DEBUG1,
						(errmsg_internal("messaging consumer: event %s failed, retry %d in %ld ms",
										 ev.id, attempt + 1,
										 retry_delay_ms(attempt + 1)),
						 errdetail_internal("%s", error)));
				props = copy_properties(d, attempt + 1, error, NULL);
				return publish_confirmed(queue, &props, d->msg.body) &&
					ack_delivery(d);
			}
			return dead_letter(d, &ev, "failed", error, attempt + 1) &&
				ack_delivery(d);
	}
	return true;
}

/* ----------
 * Periodic work
 * ----------
 */

/*
 * Passive declare on the publishing channel: the ready message count, or
 * -1 when the queue does not exist (the broker then closes the channel,
 * which is opened again).  Returns false when the connection broke.
 */
static bool
queue_depth(const char *name, int64 *depth)
{
	amqp_queue_declare_ok_t *ok;
	amqp_rpc_reply_t r;

	ok = amqp_queue_declare(conn.state, CH_PUBLISH, amqp_cstring_bytes(name),
							1, 0, 0, 0, amqp_empty_table);
	if (ok != NULL)
	{
		*depth = ok->message_count;
		return true;
	}
	r = amqp_get_rpc_reply(conn.state);
	if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
		r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
	{
		amqp_channel_close_ok_t cok;

		(void) amqp_send_method(conn.state, CH_PUBLISH,
								AMQP_CHANNEL_CLOSE_OK_METHOD, &cok);
		*depth = -1;
		return open_publish_channel();
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
		amqp_conn_status_error(&conn, r.library_error, "read queue depth");
	else
		snprintf(conn.error, sizeof(conn.error),
				 "could not read the depth of queue \"%s\"", name);
	return false;
}

static bool
refresh_depths(void)
{
	int64		depth;
	int64		dlq_depth;
	MessagingWorkerStatus *st;

	if (!TimestampDifferenceExceeds(last_depth, GetCurrentTimestamp(),
									CONSUMER_DEPTH_MS))
		return true;
	last_depth = GetCurrentTimestamp();

	if (!queue_depth(messaging_consumer_queue, &depth) ||
		!queue_depth(dlq_name(), &dlq_depth))
		return false;
	if (depth < 0)
	{
		/* our queue is gone without a cancel reaching us */
		if (!cancelled)
			ereport(LOG,
					(errmsg("messaging consumer found queue \"%s\" missing",
							messaging_consumer_queue),
					 errdetail("It is declared again.")));
		cancelled = true;
	}

	st = messaging_status_begin(MSG_WORKER_CONSUMER);
	st->backlog = Max(depth, 0);
	st->dead_letter_depth = Max(dlq_depth, 0);
	st->depth_read_at = GetCurrentTimestamp();
	messaging_status_end();
	return true;
}

/*
 * Publishes the dead letters whose replay was requested to the queue, as
 * first attempts, and deletes them once the broker has them.  Returns
 * false when the connection broke.
 */
static bool
replay_dead_letters(void)
{
	uint64		i;
	uint64		n;
	bool		ok = true;
	List	   *done = NIL;
	ListCell   *lc;

	if (!TimestampDifferenceExceeds(last_replay, GetCurrentTimestamp(),
									messaging_poll_interval))
		return true;
	last_replay = GetCurrentTimestamp();

	begin_xact("messaging consumer: replay dead letters");
	if (SPI_execute("SELECT id, message_id, properties, body"
					" FROM messaging.dead_letters"
					" WHERE replay_requested_at IS NOT NULL"
					" ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read dead letters to replay");
	n = SPI_processed;

	for (i = 0; i < n && ok; i++)
	{
		SPITupleTable *tt = SPI_tuptable;
		HeapTuple	tup = tt->vals[i];
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, 1, &isnull));
		char	   *message_id = SPI_getvalue(tup, tt->tupdesc, 2);
		Datum		pd = SPI_getbinval(tup, tt->tupdesc, 3, &isnull);
		Jsonb	   *props = isnull ? NULL : DatumGetJsonbP(pd);
		bytea	   *body = DatumGetByteaPP(SPI_getbinval(tup, tt->tupdesc, 4, &isnull));
		amqp_basic_properties_t p;
		amqp_table_entry_t e[2];
		amqp_bytes_t b;
		static const char *const keys[] = {"content_type", "type", "app_id",
		"correlation_id"};
		static const int flags[] = {AMQP_BASIC_CONTENT_TYPE_FLAG,
			AMQP_BASIC_TYPE_FLAG, AMQP_BASIC_APP_ID_FLAG,
		AMQP_BASIC_CORRELATION_ID_FLAG};
		int			k;

		memset(&p, 0, sizeof(p));
		p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_HEADERS_FLAG;
		p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
		if (message_id != NULL)
		{
			p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
			p.message_id = amqp_cstring_bytes(message_id);
		}
		for (k = 0; k < (int) lengthof(keys) && props != NULL; k++)
		{
			bool		present;
			bool		is_string;
			char	   *v = object_string(&props->root, keys[k], &present,
										  &is_string);
			amqp_bytes_t *dst = k == 0 ? &p.content_type :
			k == 1 ? &p.type : k == 2 ? &p.app_id : &p.correlation_id;

			if (v != NULL)
			{
				p._flags |= flags[k];
				*dst = amqp_cstring_bytes(v);
			}
		}
		set_int_entry(&e[0], CONSUMER_ATTEMPT_HEADER, 0);
		set_int_entry(&e[1], "x-messaging-replay-of", id);
		p.headers.num_entries = 2;
		p.headers.entries = e;
		b.bytes = VARDATA_ANY(body);
		b.len = VARSIZE_ANY_EXHDR(body);

		ok = publish_confirmed(messaging_consumer_queue, &p, b);
		if (ok)
			done = lappend(done, psprintf(INT64_FORMAT, id));
	}

	if (done != NIL)
	{
		StringInfoData sql;

		initStringInfo(&sql);
		appendStringInfoString(&sql, "DELETE FROM messaging.dead_letters WHERE id IN (");
		foreach(lc, done)
			appendStringInfo(&sql, "%s%s", lc == list_head(done) ? "" : ", ",
							 (char *) lfirst(lc));
		appendStringInfoChar(&sql, ')');
		if (SPI_execute(sql.data, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not delete replayed dead letters");
	}
	commit_xact();

	if (done != NIL)
		ereport(LOG,
				(errmsg_plural("messaging consumer replayed %d dead letter",
							   "messaging consumer replayed %d dead letters",
							   list_length(done), list_length(done))));
	return ok;
}

/*
 * One turn of work on a live connection: handle what has arrived, then
 * the periodic tasks.  Returns false when the connection broke.
 */
static bool
consumer_work(void)
{
	if (!read_available())
		return consumer_lost_connection();

	while (pending != NIL && !cancelled)
	{
		Delivery   *d = linitial(pending);
		bool		ok;

		CHECK_FOR_INTERRUPTS();
		pending = list_delete_first(pending);
		MemoryContextReset(message_context);
		MemoryContextSwitchTo(message_context);
		ok = process_delivery(d);
		MemoryContextSwitchTo(TopMemoryContext);
		amqp_destroy_message(&d->msg);
		pfree(d->exchange);
		pfree(d->routing_key);
		pfree(d);
		if (!ok)
			return consumer_lost_connection();
		if (!read_available())
			return consumer_lost_connection();
		if (!amqp_conn_keepalive(&conn))
			return consumer_lost_connection();
		amqp_maybe_release_buffers(conn.state);
		if (ConfigReloadPending)
			break;
	}

	MemoryContextReset(message_context);
	MemoryContextSwitchTo(message_context);
	if (!refresh_depths() || !replay_dead_letters())
	{
		MemoryContextSwitchTo(TopMemoryContext);
		return consumer_lost_connection();
	}
	MemoryContextSwitchTo(TopMemoryContext);

	if (cancelled)
	{
		/* declare everything again on a fresh connection, at once */
		amqp_conn_close(&conn);
		discard_pending();
		set_state(MSG_CONN_DISCONNECTED,
				  psprintf("consumer of queue \"%s\" was cancelled by the broker",
						   messaging_consumer_queue));
		amqp_backoff_reset(&backoff);
	}
	return true;
}

static void
consumer_recover_from_error(void)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(TopMemoryContext);
	disable_timeout(STATEMENT_TIMEOUT, false);
	edata = CopyErrorData();
	FlushErrorState();

	ereport(LOG,
			(errmsg("messaging consumer could not process messages: %s",
					edata->message),
			 edata->detail ? errdetail("%s", edata->detail) : 0));
	set_state(MSG_CONN_DISCONNECTED, edata->message);
	FreeErrorData(edata);

	AbortCurrentTransaction();
	SPI_finish();
	debug_query_string = NULL;
	pgstat_report_activity(STATE_IDLE, NULL);
	forget_plans();
	extension_ready = false;

	/* unacknowledged messages go back to the queue */
	if (conn.state)
		amqp_conn_close(&conn);
	discard_pending();
	amqp_backoff_failed(&backoff, messaging_reconnect_max_delay);
}

void
messaging_consumer_main(Datum main_arg)
{
	amqp_link_start(&broker);

	consumer_context = AllocSetContextCreate(TopMemoryContext,
											 "messaging consumer",
											 ALLOCSET_DEFAULT_SIZES);
	message_context = AllocSetContextCreate(TopMemoryContext,
											"messaging consumer message",
											ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (conn.state != NULL && topology_key != NULL)
			{
				char	   *key = make_topology_key();

				if (strcmp(key, topology_key) != 0)
				{
					ereport(LOG,
							(errmsg("messaging consumer reconnecting because its settings "
									"changed")));
					amqp_conn_close(&conn);
					discard_pending();
					set_state(MSG_CONN_DISCONNECTED, NULL);
					amqp_backoff_reset(&backoff);
				}
				pfree(key);
			}
			else if (conn.state == NULL)
			{
				/* perhaps what failed was just fixed: try again at once */
				amqp_backoff_reset(&backoff);
			}
		}

		PG_TRY();
		{
			if (!extension_ready)
				extension_ready = messaging_extension_ready();

			if (extension_ready && conn.state == NULL &&
				amqp_backoff_remaining_ms(&backoff) == 0)
				(void) consumer_connect();

			if (extension_ready && conn.state != NULL)
				(void) consumer_work();
		}
		PG_CATCH();
		{
			consumer_recover_from_error();
		}
		PG_END_TRY();
		MemoryContextSwitchTo(TopMemoryContext);

		if (conn.state != NULL && !amqp_conn_keepalive(&conn))
			(void) consumer_lost_connection();

		/* more work already buffered, or a reconnect due now */
		if (conn.state != NULL && pending != NIL && !cancelled)
			continue;

		(void) amqp_link_sleep(&broker, extension_ready);
	}
}
