/*-------------------------------------------------------------------------
 *
 * messaging.h
 *	  Settings and entry points shared by the modules of the messaging
 *	  extension.
 *
 * Each setting is a GUC named messaging.<name>; its C variable is named
 * messaging_<name>.  They are defined in messaging.c, which also documents
 * their levels (postmaster start, reload, or per session).
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/messaging.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_H
#define MESSAGING_H

#include "compat.h"

/* Names fixed by the platform's topology. */
#define MESSAGING_TOPIC_EXCHANGE	"inter-app-events"
#define MESSAGING_FANOUT_EXCHANGE	"inter-app-broadcast"
#define MESSAGING_CONTENT_TYPE		"application/cloudevents+json"
#define MESSAGING_SCHEMA			"messaging"

/* Bounds on identifiers carried in envelopes and routing keys. */
#define MESSAGING_MAX_APP_NAME		63
#define MESSAGING_MAX_EVENT_TYPE	191
#define MESSAGING_MAX_TENANT_ID		128
#define MESSAGING_MAX_CORRELATION_ID 255

/* Settings read at server start. */
extern char *messaging_database;

/* Settings that a reload changes. */
extern char *messaging_broker_url;
extern char *messaging_broker_ca_file;
extern char *messaging_app_name;
extern int	messaging_max_payload_bytes;
extern int	messaging_heartbeat;
extern int	messaging_connect_timeout;
extern int	messaging_reconnect_max_delay;
extern int	messaging_poll_interval;
extern int	messaging_publish_batch_size;
extern int	messaging_publish_window;
extern int	messaging_publish_linger;
extern int	messaging_staging_reserve;
extern int	messaging_confirm_timeout;
extern int	messaging_publish_max_attempts;
extern char *messaging_consumer_queue;
extern int	messaging_consumer_prefetch;
extern int	messaging_handler_timeout;
extern int	messaging_retry_delay;
extern int	messaging_max_retries;
extern int	messaging_max_message_bytes;
extern bool messaging_track_success;
extern int	messaging_ack_timeout;
extern int	messaging_recent_events;
extern int	messaging_retention;

/* Background worker entry points (called by the postmaster by name). */
extern PGDLLEXPORT void messaging_relay_main(Datum main_arg);
extern PGDLLEXPORT void messaging_consumer_main(Datum main_arg);

/* Helpers shared by the workers. */
extern bool messaging_extension_ready(void);

#endif							/* MESSAGING_H */
