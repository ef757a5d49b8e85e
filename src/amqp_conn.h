/*-------------------------------------------------------------------------
 *
 * amqp_conn.h
 *	  One AMQP connection of a messaging worker, on top of rabbitmq-c 0.11.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/amqp_conn.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_AMQP_CONN_H
#define MESSAGING_AMQP_CONN_H

#include <amqp.h>
#include <amqp_framing.h>

#include "utils/timestamp.h"

#include "shmem.h"

#define AMQP_CONN_ERRLEN	512

typedef struct AmqpConn
{
	amqp_connection_state_t state;	/* NULL when closed */
	int			fd;
	char		host[256];		/* from the URL; never the password */
	int			port;
	char		vhost[256];
	int			heartbeat;		/* negotiated, seconds; 0 = none */
	TimestampTz last_heard;		/* last time the socket had data */
	TimestampTz last_beat_sent;
	bool		blocked;		/* connection.blocked received */
	char		error[AMQP_CONN_ERRLEN];	/* why the last call failed */
} AmqpConn;

/* Exponential backoff with jitter between connection attempts. */
typedef struct AmqpBackoff
{
	int			failures;
	TimestampTz next_attempt;
} AmqpBackoff;

/*
 * A worker's link to the broker: its connection, its backoff, and what it
 * has logged, so that both workers report the same way.
 */
typedef struct AmqpLink
{
	AmqpConn   *conn;
	AmqpBackoff *backoff;
	MessagingWorkerKind kind;
	const char *worker;			/* "relay" or "consumer", for messages */
	bool		connected_before;	/* a connection was made already */
	bool		failing;		/* a failure is logged, no success since */
	char		logged_error[AMQP_CONN_ERRLEN];	/* last reason logged */
} AmqpLink;

extern void amqp_link_up(AmqpLink *l, const char *what);
extern void amqp_link_failed(AmqpLink *l, const char *what, const char *hint);
extern void amqp_link_lost(AmqpLink *l);
extern void amqp_link_start(AmqpLink *l);
extern int	amqp_link_sleep(AmqpLink *l, bool extension_ready);

extern bool amqp_conn_open(AmqpConn *c, const char *url, const char *ca_file,
						   const char *connection_name);
extern void amqp_conn_close(AmqpConn *c);
extern void amqp_conn_report(AmqpConn *c, MessagingWorkerKind kind,
							 MessagingConnState state, const char *error);
extern bool amqp_url_endpoint(const char *url, char *host, size_t hostlen,
							  int *port);
extern void amqp_conn_drop(AmqpConn *c);
extern void amqp_conn_install_guards(void);
extern int	amqp_conn_publish(AmqpConn *c, amqp_channel_t channel,
							  const char *exchange, const char *routing_key,
							  bool mandatory,
							  const amqp_basic_properties_t *props,
							  amqp_bytes_t body);

extern bool amqp_conn_reply_ok(AmqpConn *c, const char *what);
extern void amqp_conn_status_error(AmqpConn *c, int status, const char *what);
extern bool amqp_conn_confirm_channel(AmqpConn *c, amqp_channel_t ch,
									  bool open_first);
extern bool amqp_conn_declare_exchange(AmqpConn *c, amqp_channel_t ch,
									   const char *name, const char *type);

extern int	amqp_conn_wait(AmqpConn *c, long timeout_ms);
extern int	amqp_conn_next_frame(AmqpConn *c, amqp_frame_t *frame,
								 long timeout_ms);
extern bool amqp_conn_handle_connection_frame(AmqpConn *c,
											  const amqp_frame_t *frame);
extern bool amqp_conn_keepalive(AmqpConn *c);
extern bool amqp_conn_beat(AmqpConn *c);
extern long amqp_conn_tick_ms(AmqpConn *c, long max_ms);

extern void amqp_backoff_failed(AmqpBackoff *b, int max_delay_ms);
extern void amqp_backoff_reset(AmqpBackoff *b);
extern long amqp_backoff_remaining_ms(const AmqpBackoff *b);

extern char *amqp_bytes_to_cstring(amqp_bytes_t b);

#endif							/* MESSAGING_AMQP_CONN_H */
