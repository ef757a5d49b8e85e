/*-------------------------------------------------------------------------
 *
 * amqp_conn.c
 *	  One AMQP connection of a messaging worker, on top of rabbitmq-c 0.11.
 *
 * rabbitmq-c does no work in the background: heartbeats are read and
 * sent only while the application calls into it, and connect, login and
 * RPCs block without limit unless told otherwise.  This module wraps the
 * library so that the workers never block for long and never busy-poll:
 *
 *	- connecting, the TLS handshake, login and every RPC are bounded by
 *	  messaging.connect_timeout;
 *	- waiting is done on the worker's latch and the socket together
 *	  (amqp_conn_wait), after checking that the library has no frame
 *	  buffered already;
 *	- while idle, amqp_conn_keepalive() sends heartbeats every half
 *	  interval and declares the connection dead after two silent
 *	  intervals;
 *	- every failure is described once, in AmqpConn.error, in a form fit
 *	  for the server log and the connection_status view.  The broker URL's
 *	  password is never copied anywhere.
 *
 *	- the library retries its waits when a signal interrupts them, so the
 *	  worker's SIGTERM handler shuts the connection's socket down: the
 *	  pending call fails at once and the worker ends, even in the middle
 *	  of a login to a silent peer;
 *	- a write into a full socket buffer (a frozen broker, a dead peer that
 *	  sends no reset) would block inside rabbitmq-c with no deadline: such
 *	  writes run "guarded", and a once-a-second watchdog shuts the socket
 *	  down after messaging.confirm_timeout, so that the write fails and the
 *	  worker reconnects;
 *
 * The login advertises the capabilities "connection.blocked" (to learn of
 * broker resource alarms) and "consumer_cancel_notify" (to learn that a
 * consumed queue was deleted); without them the broker tells nothing.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/amqp_conn.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <poll.h>
#include <sys/time.h>

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <sys/socket.h>

#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/timeout.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "amqp_conn.h"
#include "messaging.h"
#include "shmem.h"

/*
 * The socket of the process's connection, and of a guarded write in
 * progress with when it began; read by signal handlers.
 */
static volatile sig_atomic_t open_fd = -1;
static volatile sig_atomic_t guarded_fd = -1;
static volatile TimestampTz guarded_since = 0;
static TimeoutId watchdog_timeout;
static bool watchdog_registered = false;

static void
ms_to_timeval(long ms, struct timeval *tv)
{
	tv->tv_sec = ms / 1000;
	tv->tv_usec = (ms % 1000) * 1000;
}

/*
 * Copies an AMQP byte string into a palloc'd, NUL-terminated string.
 */
char *
amqp_bytes_to_cstring(amqp_bytes_t b)
{
	char	   *s = palloc(b.len + 1);

	if (b.len > 0)
		memcpy(s, b.bytes, b.len);
	s[b.len] = '\0';
	return s;
}

static void
set_error(AmqpConn *c, const char *fmt,...) pg_attribute_printf(2, 3);

static void
set_error(AmqpConn *c, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
}

/*
 * Describes a failed library call's status code.
 */
void
amqp_conn_status_error(AmqpConn *c, int status, const char *what)
{
	set_error(c, "could not %s: %s", what, amqp_error_string2(status));
}

/*
 * Checks an RPC reply.  On a server exception the broker has closed the
 * channel or the connection; the closing handshake is answered so that the
 * broker does not wait for it.
 */
static bool
check_reply(AmqpConn *c, amqp_rpc_reply_t r, const char *what)
{
	switch (r.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			return true;

		case AMQP_RESPONSE_NONE:
			set_error(c, "could not %s: no reply from the broker", what);
			return false;

		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			amqp_conn_status_error(c, r.library_error, what);
			return false;

		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *m = r.reply.decoded;
				amqp_connection_close_ok_t ok;

				set_error(c, "could not %s: broker closed the connection: %u %.*s",
						  what, m->reply_code, (int) m->reply_text.len,
						  (char *) m->reply_text.bytes);
				(void) amqp_send_method(c->state, 0,
										AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
			}
			else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *m = r.reply.decoded;
				amqp_channel_close_ok_t ok;

				set_error(c, "could not %s: broker closed the channel: %u %.*s",
						  what, m->reply_code, (int) m->reply_text.len,
						  (char *) m->reply_text.bytes);
				(void) amqp_send_method(c->state, 1,
										AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
			}
			else
				set_error(c, "could not %s: unexpected method 0x%08x from the broker",
						  what, r.reply.id);
			return false;
	}
	set_error(c, "could not %s", what);
	return false;
}

/*
 * Checks the reply of the last synchronous call made on the connection.
 */
bool
amqp_conn_reply_ok(AmqpConn *c, const char *what)
{
	return check_reply(c, amqp_get_rpc_reply(c->state), what);
}

static void
set_table_entry(amqp_table_entry_t *e, const char *key, bool value)
{
	e->key = amqp_cstring_bytes(key);
	e->value.kind = AMQP_FIELD_KIND_BOOLEAN;
	e->value.value.boolean = value;
}

/*
 * Prepares a TLS socket: the broker's certificate must chain to the
 * configured CA (or the system store) and name the host we connect to.
 * rabbitmq-c 0.11 does not check the name reliably itself, so the
 * expected host is also set on the OpenSSL context.
 */
static amqp_socket_t *
new_tls_socket(AmqpConn *c, const char *host, const char *ca_file)
{
	amqp_socket_t *sock = amqp_ssl_socket_new(c->state);
	SSL_CTX    *ctx;

	if (sock == NULL)
	{
		set_error(c, "could not create TLS socket");
		return NULL;
	}
	amqp_ssl_socket_set_verify_peer(sock, 1);
	amqp_ssl_socket_set_verify_hostname(sock, 1);

	ctx = amqp_ssl_socket_get_context(sock);
	if (ca_file != NULL && ca_file[0] != '\0')
	{
		if (amqp_ssl_socket_set_cacert(sock, ca_file) != AMQP_STATUS_OK)
		{
			set_error(c, "could not load CA file \"%s\"", ca_file);
			return NULL;
		}
	}
	else if (ctx != NULL)
		SSL_CTX_set_default_verify_paths(ctx);

	if (ctx != NULL)
	{
		X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);

		X509_VERIFY_PARAM_set_hostflags(param,
										X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (X509_VERIFY_PARAM_set1_host(param, host, 0) != 1)
		{
			set_error(c, "could not set expected TLS host name \"%s\"", host);
			return NULL;
		}
	}
	return sock;
}

/*
 * Connects, logs in and opens channel 1.  On failure everything is torn
 * down, c->error says why, and false is returned.
 */
bool
amqp_conn_open(AmqpConn *c, const char *url, const char *ca_file,
			   const char *connection_name)
{
	struct amqp_connection_info info;
	char	   *copy;
	amqp_socket_t *sock;
	struct timeval tv;
	amqp_table_entry_t caps[4];
	amqp_table_entry_t props[3];
	amqp_table_t props_table;
	amqp_rpc_reply_t reply;
	int			rc;

	memset(c, 0, sizeof(AmqpConn));
	c->fd = -1;

	copy = pstrdup(url);
	amqp_default_connection_info(&info);
	if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK)
	{
		set_error(c, "invalid broker URL");
		goto fail;
	}
	strlcpy(c->host, info.host, sizeof(c->host));
	c->port = info.port;
	strlcpy(c->vhost, info.vhost, sizeof(c->vhost));

	c->state = amqp_new_connection();
	if (c->state == NULL)
	{
		set_error(c, "could not allocate AMQP connection");
		goto fail;
	}

	if (info.ssl)
		sock = new_tls_socket(c, info.host, ca_file);
	else
	{
		sock = amqp_tcp_socket_new(c->state);
		if (sock == NULL)
			set_error(c, "could not create TCP socket");
	}
	if (sock == NULL)
		goto fail;

	ms_to_timeval(messaging_connect_timeout, &tv);
	rc = amqp_socket_open_noblock(sock, info.host, info.port, &tv);
	if (rc != AMQP_STATUS_OK)
	{
		set_error(c, "could not connect to %s:%d: %s",
				  c->host, c->port, amqp_error_string2(rc));
		goto fail;
	}
	amqp_set_handshake_timeout(c->state, &tv);
	amqp_set_rpc_timeout(c->state, &tv);
	c->fd = amqp_get_sockfd(c->state);
	open_fd = c->fd;
	if (ProcDiePending)
		(void) shutdown(c->fd, SHUT_RDWR);

	set_table_entry(&caps[0], "connection.blocked", true);
	set_table_entry(&caps[1], "consumer_cancel_notify", true);
	set_table_entry(&caps[2], "publisher_confirms", true);
	set_table_entry(&caps[3], "basic.nack", true);

	props[0].key = amqp_cstring_bytes("capabilities");
	props[0].value.kind = AMQP_FIELD_KIND_TABLE;
	props[0].value.value.table.num_entries = lengthof(caps);
	props[0].value.value.table.entries = caps;
	props[1].key = amqp_cstring_bytes("connection_name");
	props[1].value.kind = AMQP_FIELD_KIND_UTF8;
	props[1].value.value.bytes = amqp_cstring_bytes(connection_name);
	props[2].key = amqp_cstring_bytes("product");
	props[2].value.kind = AMQP_FIELD_KIND_UTF8;
	props[2].value.value.bytes = amqp_cstring_bytes("PostgreSQL messaging extension");
	props_table.num_entries = lengthof(props);
	props_table.entries = props;

	reply = amqp_login_with_properties(c->state, info.vhost, 0, 131072,
									   messaging_heartbeat, &props_table,
									   AMQP_SASL_METHOD_PLAIN,
									   info.user, info.password);
	if (!check_reply(c, reply, "log in to the broker"))
		goto fail;

	amqp_channel_open(c->state, 1);
	if (!amqp_conn_reply_ok(c, "open channel"))
		goto fail;

	explicit_bzero(copy, strlen(url));
	pfree(copy);

	c->heartbeat = amqp_get_heartbeat(c->state);
	c->last_heard = c->last_beat_sent = GetCurrentTimestamp();
	if (watchdog_registered && !get_timeout_active(watchdog_timeout))
		enable_timeout_every(watchdog_timeout,
							 TimestampTzPlusMilliseconds(c->last_heard, 1000),
							 1000);
	return true;

fail:
	/* the parsed URL points into the copy, which holds the password */
	explicit_bzero(copy, strlen(url));
	pfree(copy);
	amqp_conn_drop(c);
	return false;
}

/*
 * Extracts host and port from a broker URL, for status reports before any
 * connection exists.  Nothing else of the URL leaves this function.
 */
bool
amqp_url_endpoint(const char *url, char *host, size_t hostlen, int *port)
{
	struct amqp_connection_info info;
	char	   *copy = pstrdup(url);
	bool		ok;

	amqp_default_connection_info(&info);
	ok = (amqp_parse_url(copy, &info) == AMQP_STATUS_OK);
	if (ok)
	{
		strlcpy(host, info.host, hostlen);
		*port = info.port;
	}
	explicit_bzero(copy, strlen(url));
	pfree(copy);
	return ok;
}

/*
 * SIGTERM: as die(), but first shuts the connection's socket down, so that
 * a library call waiting on it returns.  shutdown() is async-signal-safe.
 */
static void
amqp_conn_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (open_fd >= 0)
		(void) shutdown(open_fd, SHUT_RDWR);
	errno = save_errno;
	die(postgres_signal_arg);
}

/* Timer handler: a guarded write that has lasted too long is cut off. */
static void
amqp_conn_watchdog(void)
{
	if (guarded_fd >= 0 && guarded_since != 0 &&
		GetCurrentTimestamp() - guarded_since >
		(TimestampTz) messaging_confirm_timeout * 1000)
		(void) shutdown(guarded_fd, SHUT_RDWR);
}

/*
 * Installs the worker's SIGTERM handler and registers the write watchdog.
 * Called once by each worker before it unblocks signals.
 */
void
amqp_conn_install_guards(void)
{
	pqsignal(SIGTERM, amqp_conn_sigterm);
	if (!watchdog_registered)
	{
		watchdog_timeout = RegisterTimeout(USER_TIMEOUT, amqp_conn_watchdog);
		watchdog_registered = true;
	}
}

static void
guard_begin(AmqpConn *c)
{
	guarded_since = GetCurrentTimestamp();
	guarded_fd = c->fd;
}

static void
guard_end(void)
{
	guarded_fd = -1;
	guarded_since = 0;
}

/*
 * basic.publish as a guarded write.  Returns the library's status.
 */
int
amqp_conn_publish(AmqpConn *c, amqp_channel_t channel, const char *exchange,
				  const char *routing_key, bool mandatory,
				  const amqp_basic_properties_t *props, amqp_bytes_t body)
{
	int			rc;

	guard_begin(c);
	rc = amqp_basic_publish(c->state, channel, amqp_cstring_bytes(exchange),
							amqp_cstring_bytes(routing_key), mandatory, 0,
							props, body);
	guard_end();
	if (rc != AMQP_STATUS_OK)
		amqp_conn_status_error(c, rc, "publish message");
	return rc;
}

/*
 * Reports a worker's connection state, and the error that led to it if
 * any, in its status block for the connection_status view.  Before a
 * connection exists, the broker named by messaging.broker_url is shown.
 */
void
amqp_conn_report(AmqpConn *c, MessagingWorkerKind kind,
				 MessagingConnState state, const char *error)
{
	MessagingWorkerStatus *st;

	if (c->state == NULL)
		(void) amqp_url_endpoint(messaging_broker_url, c->host,
								 sizeof(c->host), &c->port);

	st = messaging_status_begin(kind);
	st->state = state;
	strlcpy(st->host, c->host, sizeof(st->host));
	st->port = c->port;
	if (state == MSG_CONN_CONNECTED && st->connected_since == 0)
		st->connected_since = GetCurrentTimestamp();
	else if (state == MSG_CONN_DISCONNECTED || state == MSG_CONN_CONNECTING)
		st->connected_since = 0;
	if (error != NULL)
	{
		strlcpy(st->last_error, error, sizeof(st->last_error));
		st->last_error_at = GetCurrentTimestamp();
	}
	messaging_status_end();
}

/*
 * The link is up: counts a reconnection, logs it (with the number of
 * failed attempts before it), resets the backoff and reports "connected".
 * what completes the message, e.g. ", consuming queue \"wrapper-events\"".
 */
void
amqp_link_up(AmqpLink *l, const char *what)
{
	MessagingWorkerStatus *st;

	if (l->connected_before)
	{
		st = messaging_status_begin(l->kind);
		st->reconnects++;
		messaging_status_end();
	}
	l->connected_before = true;

	ereport(LOG,
			(errmsg("messaging %s connected to RabbitMQ at %s:%d%s",
					l->worker, l->conn->host, l->conn->port, what),
			 l->backoff->failures > 0 ?
			 errdetail_plural("Connected after %d failed attempt.",
							  "Connected after %d failed attempts.",
							  l->backoff->failures, l->backoff->failures) : 0));
	amqp_backoff_reset(l->backoff);
	l->failing = false;
	l->logged_error[0] = '\0';
	amqp_conn_report(l->conn, l->kind, MSG_CONN_CONNECTED, NULL);
}

/*
 * Setting the link up failed (conn->error says why): drops the connection,
 * schedules the next attempt and reports "disconnected".  The first
 * failure of a series, and each new reason within it, is logged; repeated
 * ones go to DEBUG1, so an outage costs a line or two, not one per attempt.
 */
void
amqp_link_failed(AmqpLink *l, const char *what, const char *hint)
{
	AmqpConn   *c = l->conn;
	bool		repeated = l->failing &&
		strcmp(c->error, l->logged_error) == 0;

	amqp_conn_drop(c);
	amqp_backoff_failed(l->backoff, messaging_reconnect_max_delay);

	ereport((repeated || ProcDiePending) ? DEBUG1 : LOG,
			(errmsg("messaging %s could not %s RabbitMQ at %s:%d",
					l->worker, what, c->host[0] ? c->host : "(unknown)",
					c->port),
			 errdetail("%s", c->error),
			 (repeated || l->failing) ? 0 :
			 errhint("%s The %s retries with backoff up to \"%s\".",
					 hint, l->worker, "messaging.reconnect_max_delay")));
	strlcpy(l->logged_error, c->error, sizeof(l->logged_error));
	l->failing = true;
	amqp_conn_report(c, l->kind, MSG_CONN_DISCONNECTED, c->error);
}

/*
 * The link broke (conn->error says why): logs it, unless the worker is
 * shutting down and closed the socket itself, drops the connection and
 * schedules a reconnect.
 */
void
amqp_link_lost(AmqpLink *l)
{
	AmqpConn   *c = l->conn;

	ereport(ProcDiePending ? DEBUG1 : LOG,
			(errmsg("messaging %s lost its connection to RabbitMQ at %s:%d",
					l->worker, c->host, c->port),
			 errdetail("%s", c->error)));
	amqp_conn_report(c, l->kind, MSG_CONN_DISCONNECTED, c->error);
	strlcpy(l->logged_error, c->error, sizeof(l->logged_error));
	l->failing = true;
	amqp_conn_drop(c);
	amqp_backoff_failed(l->backoff, messaging_reconnect_max_delay);
}

/*
 * A worker's start: signal handlers (reload, the SIGTERM of
 * amqp_conn_install_guards(), SIGPIPE ignored so that a broker dropping a
 * TLS connection cannot kill the worker), its status block, its database
 * connection and its name in pg_stat_activity.
 */
void
amqp_link_start(AmqpLink *l)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	amqp_conn_install_guards();
	pqsignal(SIGPIPE, SIG_IGN);
	BackgroundWorkerUnblockSignals();

	memset(l->conn, 0, sizeof(AmqpConn));
	l->conn->fd = -1;
	messaging_worker_attach(l->kind);
	amqp_conn_report(l->conn, l->kind, MSG_CONN_DISCONNECTED, NULL);
	BackgroundWorkerInitializeConnection(messaging_database, NULL, 0);
	pgstat_report_appname(psprintf("messaging %s", l->worker));

	ereport(LOG,
			(errmsg("messaging %s started for database \"%s\"",
					l->worker, messaging_database)));
}

/*
 * A worker's sleep between turns of its loop: until its latch is set, the
 * socket has data, or it is time for a heartbeat, a reconnect attempt or
 * the fallback poll (messaging.poll_interval).  Returns the events that
 * ended it, the latch already reset.
 */
int
amqp_link_sleep(AmqpLink *l, bool extension_ready)
{
	long		timeout;
	int			rc;

	if (!extension_ready)
		timeout = messaging_poll_interval;
	else if (l->conn->state == NULL)
		timeout = Max(1, Min(amqp_backoff_remaining_ms(l->backoff),
							 (long) messaging_poll_interval));
	else
		timeout = amqp_conn_tick_ms(l->conn, messaging_poll_interval);

	rc = amqp_conn_wait(l->conn, timeout);
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
	return rc;
}

/*
 * Tears the connection down without a closing handshake.
 */
void
amqp_conn_drop(AmqpConn *c)
{
	if (watchdog_registered && get_timeout_active(watchdog_timeout))
		disable_timeout(watchdog_timeout, false);
	open_fd = -1;
	if (c->state != NULL)
		amqp_destroy_connection(c->state);
	c->state = NULL;
	c->fd = -1;
	c->blocked = false;
}

/*
 * Closes the connection politely (bounded by the RPC timeout), then drops
 * it.
 */
void
amqp_conn_close(AmqpConn *c)
{
	if (c->state != NULL)
		(void) amqp_connection_close(c->state, AMQP_REPLY_SUCCESS);
	amqp_conn_drop(c);
}

/*
 * Puts channel ch in confirm mode, opening it first if asked to (channel 1
 * is open after amqp_conn_open()).  Delivery tags on it start at 1.
 */
bool
amqp_conn_confirm_channel(AmqpConn *c, amqp_channel_t ch, bool open_first)
{
	if (open_first)
	{
		amqp_channel_open(c->state, ch);
		if (!amqp_conn_reply_ok(c, "open channel"))
			return false;
	}
	amqp_confirm_select(c->state, ch);
	return amqp_conn_reply_ok(c, "enable publisher confirms");
}

/*
 * Declares a durable exchange on channel ch; idempotent.
 */
bool
amqp_conn_declare_exchange(AmqpConn *c, amqp_channel_t ch,
						   const char *name, const char *type)
{
	char		what[128];

	amqp_exchange_declare(c->state, ch, amqp_cstring_bytes(name),
						  amqp_cstring_bytes(type), 0, 1, 0, 0,
						  amqp_empty_table);
	snprintf(what, sizeof(what), "declare exchange \"%s\"", name);
	return amqp_conn_reply_ok(c, what);
}

/*
 * Waits until the latch is set, the socket is readable or timeout_ms has
 * passed; returns WaitLatchOrSocket()'s event mask.  Frames the library has
 * already buffered count as readable at once, since the socket would not
 * wake us for them.  With no connection, waits on the latch only.
 */
int
amqp_conn_wait(AmqpConn *c, long timeout_ms)
{
	int			events = WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH;
	int			rc;

	if (c->state != NULL)
	{
		if (amqp_frames_enqueued(c->state) || amqp_data_in_buffer(c->state))
			return WL_SOCKET_READABLE;
		events |= WL_SOCKET_READABLE;
	}

	rc = WaitLatchOrSocket(MyLatch, events,
						   c->state != NULL ? c->fd : PGINVALID_SOCKET,
						   timeout_ms, MESSAGING_WAIT_EVENT);
	if (rc & WL_SOCKET_READABLE)
		c->last_heard = GetCurrentTimestamp();
	return rc;
}

/*
 * Reads the next frame, waiting at most timeout_ms (0: only what is
 * already available).  Returns an AMQP status: AMQP_STATUS_OK with a frame,
 * AMQP_STATUS_TIMEOUT with none, anything else for a broken connection
 * (c->error then says why).
 */
int
amqp_conn_next_frame(AmqpConn *c, amqp_frame_t *frame, long timeout_ms)
{
	struct timeval tv;
	int			rc;

	/*
	 * The library consumes heartbeat frames without a word, so whether the
	 * broker is still there is judged here: the socket had data.
	 */
	if (!amqp_frames_enqueued(c->state) && !amqp_data_in_buffer(c->state))
	{
		struct pollfd pfd;

		pfd.fd = c->fd;
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (poll(&pfd, 1, (int) timeout_ms) <= 0)
			return AMQP_STATUS_TIMEOUT; /* nothing, or a signal */
		c->last_heard = GetCurrentTimestamp();
	}

	ms_to_timeval(timeout_ms, &tv);
	rc = amqp_simple_wait_frame_noblock(c->state, frame, &tv);
	if (rc == AMQP_STATUS_OK)
		c->last_heard = GetCurrentTimestamp();
	else if (rc != AMQP_STATUS_TIMEOUT)
		amqp_conn_status_error(c, rc, "read from the broker");
	return rc;
}

/*
 * Handles the connection-level methods any worker may receive on channel
 * 0: blocked/unblocked notifications and the broker closing the
 * connection.  Returns false when the connection is gone.
 */
bool
amqp_conn_handle_connection_frame(AmqpConn *c, const amqp_frame_t *frame)
{
	if (frame->frame_type != AMQP_FRAME_METHOD)
		return true;

	switch (frame->payload.method.id)
	{
		case AMQP_CONNECTION_BLOCKED_METHOD:
			{
				amqp_connection_blocked_t *m = frame->payload.method.decoded;

				c->blocked = true;
				set_error(c, "broker blocked the connection: %.*s",
						  (int) m->reason.len, (char *) m->reason.bytes);
				return true;
			}
		case AMQP_CONNECTION_UNBLOCKED_METHOD:
			c->blocked = false;
			return true;
		case AMQP_CONNECTION_CLOSE_METHOD:
			{
				amqp_connection_close_t *m = frame->payload.method.decoded;
				amqp_connection_close_ok_t ok;

				set_error(c, "broker closed the connection: %u %.*s",
						  m->reply_code, (int) m->reply_text.len,
						  (char *) m->reply_text.bytes);
				(void) amqp_send_method(c->state, 0,
										AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
				return false;
			}
		default:
			return true;
	}
}

/*
 * Keeps an idle connection alive: drains what the socket holds (the
 * library consumes heartbeat frames itself), sends a heartbeat every half
 * interval, and reports the connection dead after two intervals without a
 * byte from the broker.  Returns false when the connection is gone.
 *
 * Frames other than connection-level ones are not expected on an idle
 * connection of the relay; the consumer does its own reading instead.
 */
bool
amqp_conn_keepalive(AmqpConn *c)
{
	if (c->state == NULL)
		return false;
	if (c->heartbeat <= 0)
		return true;
	if (!amqp_conn_beat(c))
		return false;

	if (TimestampDifferenceExceeds(c->last_heard, GetCurrentTimestamp(),
								   c->heartbeat * 2000))
	{
		set_error(c, "no data from the broker for %d seconds",
				  c->heartbeat * 2);
		return false;
	}
	return true;
}

/*
 * Sends a heartbeat when half an interval has passed since the last one.
 * Returns false when the connection is gone.
 */
bool
amqp_conn_beat(AmqpConn *c)
{
	TimestampTz now = GetCurrentTimestamp();
	amqp_frame_t beat;
	int			rc;

	if (c->state == NULL || c->heartbeat <= 0 ||
		!TimestampDifferenceExceeds(c->last_beat_sent, now,
									c->heartbeat * 500))
		return c->state != NULL;

	memset(&beat, 0, sizeof(beat));
	beat.frame_type = AMQP_FRAME_HEARTBEAT;
	beat.channel = 0;
	guard_begin(c);
	rc = amqp_send_frame(c->state, &beat);
	guard_end();
	if (rc != AMQP_STATUS_OK)
	{
		amqp_conn_status_error(c, rc, "send heartbeat");
		return false;
	}
	c->last_beat_sent = now;
	return true;
}

/*
 * How long a worker may sleep before keepalive work is due, at most
 * max_ms.
 */
long
amqp_conn_tick_ms(AmqpConn *c, long max_ms)
{
	if (c->state != NULL && c->heartbeat > 0)
		return Min(max_ms, (long) c->heartbeat * 500);
	return max_ms;
}

/*
 * Schedules the next connection attempt: 100 ms after the first failure,
 * doubling each time up to max_delay_ms, each wait drawn at random between
 * half and all of that so that many servers do not reconnect in step.
 */
void
amqp_backoff_failed(AmqpBackoff *b, int max_delay_ms)
{
	double		delay = 100.0;
	int			i;
	long		wait_ms;

	b->failures++;
	for (i = 1; i < b->failures && delay < max_delay_ms; i++)
		delay *= 2;
	if (delay > max_delay_ms)
		delay = max_delay_ms;
	wait_ms = (long) (delay / 2 +
					  pg_prng_double(&pg_global_prng_state) * delay / 2);
	b->next_attempt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  wait_ms);
}

void
amqp_backoff_reset(AmqpBackoff *b)
{
	b->failures = 0;
	b->next_attempt = 0;
}

long
amqp_backoff_remaining_ms(const AmqpBackoff *b)
{
	TimestampTz now = GetCurrentTimestamp();

	if (b->next_attempt <= now)
		return 0;
	return (long) ((b->next_attempt - now) / 1000);
}
