/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Shared state of the messaging workers: their latches, connection
 *	  status, totals, and the bounded record of recent events.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/shmem.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_SHMEM_H
#define MESSAGING_SHMEM_H

#include "storage/latch.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

typedef enum MessagingWorkerKind
{
	MSG_WORKER_RELAY = 0,		/* publishes the outbox */
	MSG_WORKER_CONSUMER,		/* consumes the application's queue */
	MSG_NUM_WORKERS
} MessagingWorkerKind;

typedef enum MessagingConnState
{
	MSG_CONN_DISCONNECTED = 0,
	MSG_CONN_CONNECTING,
	MSG_CONN_CONNECTED,
	MSG_CONN_BLOCKED,			/* broker raised a resource alarm */
	MSG_CONN_STANDBY			/* server in recovery: waiting for promotion */
} MessagingConnState;

#define MSG_HOST_LEN	256
#define MSG_ERROR_LEN	512

/*
 * What one worker reports about itself.  Written only by that worker, read
 * by anyone, always under MessagingShared->lock.
 */
typedef struct MessagingWorkerStatus
{
	pid_t		pid;			/* 0 when not running */
	Latch	   *latch;			/* the worker's MyLatch, to wake it */
	MessagingConnState state;
	char		host[MSG_HOST_LEN]; /* broker host, never credentials */
	int			port;
	TimestampTz connected_since;	/* 0 when not connected */
	TimestampTz last_success;	/* last confirm (relay) or handled event */
	char		last_error[MSG_ERROR_LEN];
	TimestampTz last_error_at;
	int64		reconnects;		/* connections made after the first */
	int64		succeeded;		/* events confirmed or handled */
	int64		failed;			/* events moved to failure tables */
	int64		backlog;		/* outbox rows, or queue depth on broker */
	int64		dead_letter_depth;	/* consumer only: depth of the DLQ */
	TimestampTz depth_read_at;	/* when queue depths were read */
} MessagingWorkerStatus;

/* Outcome of an event as the in-memory record knows it. */
typedef enum RecentEventStatus
{
	RECENT_EMPTY = 0,
	RECENT_PUBLISHED,			/* confirmed, awaiting acknowledgement */
	RECENT_DELIVERED,			/* confirmed broadcast: done */
	RECENT_ACKNOWLEDGED,		/* acknowledged by its target application */
	RECENT_FAILED
} RecentEventStatus;

#define RECENT_TYPE_LEN		64
#define RECENT_APP_LEN		64
#define RECENT_TENANT_LEN	64

typedef struct RecentEvent
{
	pg_uuid_t	id;
	RecentEventStatus status;
	int32		attempts;
	TimestampTz created_at;
	TimestampTz published_at;
	TimestampTz acknowledged_at;
	char		event_type[RECENT_TYPE_LEN];	/* truncated if longer */
	char		target_app[RECENT_APP_LEN];
	char		tenant_id[RECENT_TENANT_LEN];
} RecentEvent;

extern void messaging_shmem_request(void);
extern void messaging_shmem_startup(void);

/* Worker registration and status. */
extern void messaging_worker_attach(MessagingWorkerKind kind);
extern MessagingWorkerStatus *messaging_status_begin(MessagingWorkerKind kind);
extern void messaging_status_end(void);
extern void messaging_status_read(MessagingWorkerKind kind,
								  MessagingWorkerStatus *st);
extern void messaging_wake_worker(MessagingWorkerKind kind);

/* Commit-time wake-up of the relay. */
extern void messaging_note_outbox_write(void);
extern void messaging_register_xact_callback(void);

/* The record of recent events. */
extern void messaging_recent_put(const RecentEvent *ev);
extern bool messaging_recent_find(const pg_uuid_t *id, RecentEvent *out);
extern bool messaging_recent_set_status(const pg_uuid_t *id,
										RecentEventStatus status,
										TimestampTz at);

#endif							/* MESSAGING_SHMEM_H */
