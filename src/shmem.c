/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared memory of the messaging extension.
 *
 * One segment, created at postmaster start, holds:
 *
 *	- a status block per background worker (relay and consumer): its pid
 *	  and latch, so that backends can wake it, and what the
 *	  connection_status view shows;
 *	- a ring of the most recent outcomes of published events
 *	  (messaging.recent_events entries), which lets event_status() answer
 *	  for recent successes without any table write.
 *
 * Locking: a single LWLock (tranche "messaging") protects everything in the
 * segment.  Status blocks are written only by their own worker; critical
 * sections are a few field copies, so one lock is plenty.
 *
 * Backends that wrote outbox rows set the relay's latch from a transaction
 * callback at commit, so that the relay publishes without polling; a
 * rolled-back transaction wakes nobody.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/shmem.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "messaging.h"
#include "shmem.h"

typedef struct MessagingShared
{
	LWLock	   *lock;
	MessagingWorkerStatus workers[MSG_NUM_WORKERS];
	int			recent_size;	/* capacity of recent[] */
	int			recent_next;	/* next slot to overwrite */
	RecentEvent recent[FLEXIBLE_ARRAY_MEMBER];
} MessagingShared;

static MessagingShared *msg_shared = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Set when this transaction wrote to the outbox; cleared at its end. */
static bool msg_outbox_written = false;

static Size
msg_shmem_size(void)
{
	return add_size(offsetof(MessagingShared, recent),
					mul_size(sizeof(RecentEvent), messaging_recent_events));
}

/*
 * Called from the shmem_request_hook in the postmaster.
 */
void
messaging_shmem_request(void)
{
	RequestAddinShmemSpace(msg_shmem_size());
	RequestNamedLWLockTranche("messaging", 1);
}

static void
msg_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	msg_shared = NULL;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	msg_shared = ShmemInitStruct("messaging", msg_shmem_size(), &found);
	if (!found)
	{
		memset(msg_shared, 0, msg_shmem_size());
		msg_shared->lock = &(GetNamedLWLockTranche("messaging"))->lock;
		msg_shared->recent_size = messaging_recent_events;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Installs the startup hook; called once from _PG_init.
 */
void
messaging_shmem_startup(void)
{
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = msg_shmem_startup;
}

static void
msg_check_attached(void)
{
	if (msg_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("messaging must be loaded via \"shared_preload_libraries\"")));
}

static void
msg_worker_detach(int code, Datum arg)
{
	MessagingWorkerKind kind = (MessagingWorkerKind) DatumGetInt32(arg);
	MessagingWorkerStatus *st = &msg_shared->workers[kind];

	LWLockAcquire(msg_shared->lock, LW_EXCLUSIVE);
	if (st->pid == MyProcPid)
	{
		st->pid = 0;
		st->latch = NULL;
		st->state = MSG_CONN_DISCONNECTED;
		st->connected_since = 0;
	}
	LWLockRelease(msg_shared->lock);
}

/*
 * Claims the status block of a worker kind for the calling process.  Only
 * one process of each kind may run; a second one exits quietly.
 */
void
messaging_worker_attach(MessagingWorkerKind kind)
{
	MessagingWorkerStatus *st;
	pid_t		other = 0;

	msg_check_attached();
	st = &msg_shared->workers[kind];

	LWLockAcquire(msg_shared->lock, LW_EXCLUSIVE);
	if (st->pid != 0 && st->pid != MyProcPid)
		other = st->pid;
	else
	{
		st->pid = MyProcPid;
		st->latch = MyLatch;
		st->state = MSG_CONN_DISCONNECTED;
	}
	LWLockRelease(msg_shared->lock);

	if (other != 0)
	{
		ereport(LOG,
				(errmsg("messaging worker already running under PID %d",
						(int) other)));
		proc_exit(0);
	}

	on_shmem_exit(msg_worker_detach, Int32GetDatum((int32) kind));
}

/*
 * Returns the calling worker's status block with the lock held; the caller
 * changes what it needs and calls messaging_status_end() at once.
 */
MessagingWorkerStatus *
messaging_status_begin(MessagingWorkerKind kind)
{
	LWLockAcquire(msg_shared->lock, LW_EXCLUSIVE);
	return &msg_shared->workers[kind];
}

void
messaging_status_end(void)
{
	LWLockRelease(msg_shared->lock);
}

/*
 * Copies a worker's status block; usable from any backend.
 */
void
messaging_status_read(MessagingWorkerKind kind, MessagingWorkerStatus *st)
{
	msg_check_attached();
	LWLockAcquire(msg_shared->lock, LW_SHARED);
	memcpy(st, &msg_shared->workers[kind], sizeof(MessagingWorkerStatus));
	LWLockRelease(msg_shared->lock);
}

/*
 * Sets a worker's latch if it runs.  Cheap enough to call at every commit.
 */
void
messaging_wake_worker(MessagingWorkerKind kind)
{
	Latch	   *latch;

	if (msg_shared == NULL)
		return;

	LWLockAcquire(msg_shared->lock, LW_SHARED);
	latch = msg_shared->workers[kind].latch;
	if (latch != NULL)
		SetLatch(latch);
	LWLockRelease(msg_shared->lock);
}

static void
msg_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (msg_outbox_written)
				messaging_wake_worker(MSG_WORKER_RELAY);
			msg_outbox_written = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* COMMIT PREPARED is seen by the relay's fallback poll */
			msg_outbox_written = false;
			break;
		default:
			break;
	}
}

/*
 * Marks the current transaction as having written outbox rows, so that its
 * commit wakes the relay.  A rolled-back subtransaction leaves the mark in
 * place; the relay then wakes for nothing, which is harmless.
 */
void
messaging_note_outbox_write(void)
{
	msg_outbox_written = true;
}

void
messaging_register_xact_callback(void)
{
	RegisterXactCallback(msg_xact_callback, NULL);
}

/*
 * Records an event's outcome, overwriting the oldest entry.
 */
void
messaging_recent_put(const RecentEvent *ev)
{
	if (msg_shared == NULL || msg_shared->recent_size == 0)
		return;

	LWLockAcquire(msg_shared->lock, LW_EXCLUSIVE);
	memcpy(&msg_shared->recent[msg_shared->recent_next], ev,
		   sizeof(RecentEvent));
	msg_shared->recent_next =
		(msg_shared->recent_next + 1) % msg_shared->recent_size;
	LWLockRelease(msg_shared->lock);
}

/* Caller holds the lock.  Searches newest first. */
static RecentEvent *
msg_recent_lookup(const pg_uuid_t *id)
{
	int			n = msg_shared->recent_size;
	int			i;

	for (i = 1; i <= n; i++)
	{
		int			slot = (msg_shared->recent_next - i + n) % n;
		RecentEvent *ev = &msg_shared->recent[slot];

		if (ev->status == RECENT_EMPTY)
			break;
		if (memcmp(ev->id.data, id->data, UUID_LEN) == 0)
			return ev;
	}
	return NULL;
}

bool
messaging_recent_find(const pg_uuid_t *id, RecentEvent *out)
{
	RecentEvent *ev;

	msg_check_attached();
	if (msg_shared->recent_size == 0)
		return false;

	LWLockAcquire(msg_shared->lock, LW_SHARED);
	ev = msg_recent_lookup(id);
	if (ev != NULL)
		memcpy(out, ev, sizeof(RecentEvent));
	LWLockRelease(msg_shared->lock);

	return ev != NULL;
}

/*
 * Changes the status of a recorded event; false if it is no longer there.
 */
bool
messaging_recent_set_status(const pg_uuid_t *id, RecentEventStatus status,
							TimestampTz at)
{
	RecentEvent *ev;

	msg_check_attached();
	if (msg_shared->recent_size == 0)
		return false;

	LWLockAcquire(msg_shared->lock, LW_EXCLUSIVE);
	ev = msg_recent_lookup(id);
	if (ev != NULL)
	{
		ev->status = status;
		if (status == RECENT_ACKNOWLEDGED)
			ev->acknowledged_at = at;
	}
	LWLockRelease(msg_shared->lock);

	return ev != NULL;
}
