/*-------------------------------------------------------------------------
 *
 * messaging.c
 *	  Module entry point of the messaging extension: settings, shared
 *	  memory requests and background worker registration.
 *
 * The library must be listed in shared_preload_libraries.  It then starts
 * two background workers connected to the database named by
 * messaging.database:
 *
 *	- the relay (relay.c) publishes committed outbox rows to RabbitMQ in
 *	  confirm mode and deletes them once the broker has acknowledged them;
 *	- the consumer (consumer.c) consumes the application's queue and hands
 *	  each event to the SQL handler registered for its type.
 *
 * Each worker has its own AMQP connection: a broker resource alarm blocks
 * publishing connections only, and a slow handler must not hold up
 * publishing.  Both start once recovery has finished, so on a standby they
 * wait for promotion.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/messaging.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include <amqp.h>
#include <amqp_ssl_socket.h>

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "lib/stringinfo.h"
#include "utils/elog.h"
#include "utils/guc.h"

#include "messaging.h"
#include "consumer.h"
#include "shmem.h"
#include "validate.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Settings read at server start. */
char	   *messaging_database = NULL;

/* Settings changed by a reload (or per session where noted). */
char	   *messaging_broker_url = NULL;
char	   *messaging_broker_ca_file = NULL;
char	   *messaging_app_name = NULL;
int			messaging_max_payload_bytes = 1024 * 1024;
int			messaging_heartbeat = 30;
int			messaging_connect_timeout = 5000;
int			messaging_reconnect_max_delay = 10000;
int			messaging_poll_interval = 1000;
int			messaging_publish_batch_size = 500;
int			messaging_publish_window = 500;
int			messaging_publish_linger = 5;
int			messaging_staging_reserve = 1024;
int			messaging_confirm_timeout = 30000;
int			messaging_publish_max_attempts = 5;
char	   *messaging_consumer_queue = NULL;
int			messaging_consumer_prefetch = 50;
int			messaging_handler_timeout = 30000;
int			messaging_retry_delay = 1000;
int			messaging_max_retries = 5;
int			messaging_max_message_bytes = 2 * 1024 * 1024;
bool		messaging_track_success = false;
int			messaging_ack_timeout = 300;
int			messaging_recent_events = 10000;
int			messaging_retention = 7 * 24 * 3600;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;

/*
 * Masks the password of every amqp:// or amqps:// URL in s (scheme in any
 * case).  A password somebody forgot to percent-encode may hold '/', '@',
 * spaces or quotes, so the user information is taken to run from the
 * scheme to the last '@' before the next double quote, line end or URL:
 * this masks too much rather than too little.  Returns a new string, or NULL
 * when there was nothing to mask.
 */
static char *
redact_urls(const char *s)
{
	StringInfoData buf;
	const char *p = s;
	bool		changed = false;

	if (s == NULL)
		return NULL;

	initStringInfo(&buf);
	while (*p)
	{
		const char *rest = NULL;

		if (pg_strncasecmp(p, "amqp://", 7) == 0)
			rest = p + 7;
		else if (pg_strncasecmp(p, "amqps://", 8) == 0)
			rest = p + 8;

		if (rest != NULL)
		{
			const char *q;
			const char *colon = NULL;
			const char *at = NULL;

			for (q = rest; *q && *q != '"' && *q != '\n'; q++)
			{
				/* another URL starts: this one ended before it */
				if (pg_strncasecmp(q, "amqp://", 7) == 0 ||
					pg_strncasecmp(q, "amqps://", 8) == 0)
					break;
				if (*q == ':' && colon == NULL && at == NULL)
					colon = q;
				if (*q == '@')
					at = q;
			}
			if (at != NULL && colon != NULL && colon < at)
			{
				appendBinaryStringInfo(&buf, p, colon + 1 - p);
				appendStringInfoString(&buf, "********");
				p = at;
				changed = true;
				continue;
			}
			appendBinaryStringInfo(&buf, p, rest - p);
			p = rest;
			continue;
		}
		appendStringInfoChar(&buf, *p++);
	}

	if (!changed)
	{
		pfree(buf.data);
		return NULL;
	}
	return buf.data;
}

/*
 * Masks, in a message about messaging.broker_url, the quoted value that
 * follows the setting's name from its start to its last '@' (keeping a
 * leading scheme).  Returns a new string, or NULL when there is no '@'.
 */
static char *
redact_setting_value(const char *msg)
{
	const char *name = strstr(msg, "\"messaging.broker_url\"");
	const char *open;
	const char *close;
	const char *at = NULL;
	const char *start;
	const char *q;
	StringInfoData buf;

	if (name == NULL)
		return NULL;
	open = strchr(name + strlen("\"messaging.broker_url\""), '"');
	if (open == NULL)
		return NULL;
	close = strrchr(open + 1, '"');
	if (close == NULL)
		close = open + 1 + strlen(open + 1);
	for (q = open + 1; q < close; q++)
		if (*q == '@')
			at = q;
	if (at == NULL)
		return NULL;

	/* keep "scheme:" and the slashes after it */
	start = open + 1;
	for (q = start; q < at && (isalnum((unsigned char) *q) || *q == '+' ||
							   *q == '-' || *q == '.'); q++)
		;
	if (q < at && *q == ':')
	{
		q++;
		while (q < at && *q == '/')
			q++;
		start = q;
	}

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, msg, start - msg);
	appendStringInfoString(&buf, "********");
	appendStringInfoString(&buf, at);
	return buf.data;
}

/*
 * The broker URL may carry a password, and PostgreSQL itself repeats
 * setting values in messages ("parameter ... changed to ...", "invalid
 * value for parameter ...").  Every message of every process that has the
 * library loaded passes through here first: passwords in AMQP URLs are
 * masked, and the statement that produced such a message is not logged.
 */
static void
messaging_emit_log(ErrorData *edata)
{
	char	   *masked;
	bool		hit = false;

	if ((masked = redact_urls(edata->message)) != NULL)
	{
		edata->message = masked;
		hit = true;
	}
	if ((masked = redact_urls(edata->detail)) != NULL)
	{
		edata->detail = masked;
		hit = true;
	}
	if ((masked = redact_urls(edata->detail_log)) != NULL)
	{
		edata->detail_log = masked;
		hit = true;
	}
	if ((masked = redact_urls(edata->context)) != NULL)
	{
		edata->context = masked;
		hit = true;
	}
	if (edata->message && strstr(edata->message, "\"messaging.broker_url\""))
	{
		/*
		 * A value that is not a URL at all ("AMQP:/user:pass@host", a
		 * mistyped scheme) escapes the masking above: whatever PostgreSQL
		 * quotes of this setting's value is masked up to its last '@'.
		 */
		masked = redact_setting_value(edata->message);
		if (masked != NULL)
			edata->message = masked;
		hit = true;
	}
	if (hit)
		edata->hide_stmt = true;

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * The broker URL may carry a password: check that it parses without
 * repeating it, so that a typo cannot leak it into the server log.
 */
static bool
check_broker_url(char **newval, void **extra, GucSource source)
{
	struct amqp_connection_info info;
	char	   *copy;
	int			rc;

	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("The broker URL must not be empty.");
		return false;
	}

	copy = strdup(*newval);
	if (copy == NULL)
		return false;
	amqp_default_connection_info(&info);
	rc = amqp_parse_url(copy, &info);
	free(copy);

	if (rc != AMQP_STATUS_OK)
	{
		GUC_check_errdetail("The value is not a valid amqp:// or amqps:// URL; "
							"user name, password and virtual host must be "
							"percent-encoded.");
		return false;
	}
	return true;
}

static bool
check_app_name(char **newval, void **extra, GucSource source)
{
	const char *problem = messaging_app_name_problem(*newval);

	if (problem != NULL)
	{
		GUC_check_errdetail("%s", problem);
		return false;
	}
	return true;
}

static bool
check_queue_name(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0' || strlen(*newval) > 200)
	{
		GUC_check_errdetail("A queue name has 1 to 200 bytes.");
		return false;
	}
	if (strncmp(*newval, "amq.", 4) == 0)
	{
		GUC_check_errdetail("Queue names starting with \"amq.\" are reserved by the broker.");
		return false;
	}
	return true;
}

static void
define_settings(void)
{
	DefineCustomStringVariable("messaging.broker_url",
							   "URL of the RabbitMQ broker.",
							   "An amqp:// or amqps:// URL; user name, password and "
							   "virtual host are percent-encoded.  Visible to "
							   "superusers only.",
							   &messaging_broker_url,
							   "amqp://guest:guest@localhost:5672/%2f",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_broker_url, NULL, NULL);

	DefineCustomStringVariable("messaging.broker_ca_file",
							   "CA certificate file used to verify the broker over amqps.",
							   "Empty means the system's default trust store.",
							   &messaging_broker_ca_file,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("messaging.app_name",
							   "Name of this application on the platform.",
							   "Default source of published events, and the routing "
							   "prefix of the events this database consumes.",
							   &messaging_app_name,
							   "wrapper",
							   PGC_SIGHUP, 0,
							   check_app_name, NULL, NULL);

	DefineCustomIntVariable("messaging.max_payload_bytes",
							"Largest payload publish_event() accepts.",
							"Measured as the payload's stored jsonb size.",
							&messaging_max_payload_bytes,
							1024 * 1024, 1, 64 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.heartbeat",
							"AMQP heartbeat interval requested from the broker.",
							"Zero disables heartbeats.",
							&messaging_heartbeat,
							30, 0, 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.connect_timeout",
							"Time allowed for connecting, logging in and each "
							"broker round trip.",
							NULL,
							&messaging_connect_timeout,
							5000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.reconnect_max_delay",
							"Longest wait between two connection attempts.",
							"The wait doubles from 100 ms after each failure, with "
							"random jitter, up to this value.",
							&messaging_reconnect_max_delay,
							10000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.poll_interval",
							"Fallback interval at which the workers look for work.",
							"Commits wake the relay at once; this catches anything "
							"else.",
							&messaging_poll_interval,
							1000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.publish_batch_size",
							"Outbox rows the relay reads per query.",
							NULL,
							&messaging_publish_batch_size,
							500, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.publish_window",
							"Published messages the relay keeps awaiting a confirm.",
							NULL,
							&messaging_publish_window,
							500, 1, 65535,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.staging_reserve",
							"Empty space the relay keeps ready for staged events.",
							"Statement-level event triggers pack their events into "
							"pages of messaging.outbox_staged; the relay adds empty "
							"pages ahead of need so that a bulk change does not "
							"extend the file page by page.  0 turns this off.",
							&messaging_staging_reserve,
							1024, 0, 8192,
							PGC_SIGHUP, GUC_UNIT_BLOCKS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.publish_linger",
							"Time the relay lets events gather under steady load.",
							"When a wake-up follows a pass closer than this, the "
							"relay waits the rest of it first, so that many small "
							"transactions are published in one pass.",
							&messaging_publish_linger,
							5, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.confirm_timeout",
							"Time the relay waits for the broker to confirm "
							"before it reconnects.",
							NULL,
							&messaging_confirm_timeout,
							30000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.publish_max_attempts",
							"Attempts to publish an event the broker rejects "
							"(nacks) before it is failed.",
							NULL,
							&messaging_publish_max_attempts,
							5, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("messaging.consumer_queue",
							   "Queue the consumer worker consumes.",
							   NULL,
							   &messaging_consumer_queue,
							   "wrapper-events",
							   PGC_SIGHUP, 0,
							   check_queue_name, NULL, NULL);

	DefineCustomIntVariable("messaging.consumer_prefetch",
							"Unacknowledged deliveries the broker may send the "
							"consumer.",
							NULL,
							&messaging_consumer_prefetch,
							50, 1, 65535,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.handler_timeout",
							"Longest run of one event handler.",
							"A handler running longer is cancelled and the event "
							"retried.",
							&messaging_handler_timeout,
							30000, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.retry_delay",
							"Delay before the first retry of a failed event.",
							"Each further retry waits twice as long.",
							&messaging_retry_delay,
							1000, 1, 86400000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.max_retries",
							"Retries of a failed event before it is dead-lettered.",
							NULL,
							&messaging_max_retries,
							5, 0, 30,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.max_message_bytes",
							"Largest incoming message body the consumer accepts.",
							"Larger messages are dead-lettered unread.",
							&messaging_max_message_bytes,
							2 * 1024 * 1024, 1024, 128 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("messaging.track_success",
							 "Keeps a row for every successful event, for audits.",
							 "Off keeps only counters for successes.",
							 &messaging_track_success,
							 false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.ack_timeout",
							"Time a directed event may await its acknowledgement "
							"before it fails.",
							NULL,
							&messaging_ack_timeout,
							300, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.retention",
							"Age after which cleanup() removes tracking rows.",
							NULL,
							&messaging_retention,
							7 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	messaging_consumer_define_settings();
	MarkGUCPrefixReserved("messaging");
}

static void
define_postmaster_settings(void)
{
	DefineCustomStringVariable("messaging.database",
							   "Database the messaging workers connect to.",
							   "The extension must be created in this database.",
							   &messaging_database,
							   "postgres",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("messaging.recent_events",
							"Recent event outcomes kept in shared memory for "
							"event_status().",
							NULL,
							&messaging_recent_events,
							10000, 0, 10000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
}

static void
msg_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	messaging_shmem_request();
}

static void
register_worker(const char *name, const char *function)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "messaging");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "messaging %s", name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "messaging %s", name);
	RegisterBackgroundWorker(&worker);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("messaging must be loaded via \"shared_preload_libraries\"")));

	/* The server initialises OpenSSL itself. */
	amqp_set_initialize_ssl_library(0);

	define_postmaster_settings();
	define_settings();

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = messaging_emit_log;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = msg_shmem_request_hook;
	messaging_shmem_startup();
	messaging_register_xact_callback();

	register_worker("relay", "messaging_relay_main");
	register_worker("consumer", "messaging_consumer_main");
}

/*
 * Whether the extension is installed in the worker's database; a worker
 * calls it, outside any transaction, before touching the extension's
 * tables.
 */
bool
messaging_extension_ready(void)
{
	bool		ready;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	ready = OidIsValid(get_extension_oid("messaging", true));
	CommitTransactionCommand();
	return ready;
}
