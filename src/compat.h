/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  The one place where differences between PostgreSQL major versions
 *	  are bridged.
 *
 * The extension targets PostgreSQL 15.  Anything that must change to build
 * against another major version belongs here, never as #if blocks spread
 * through the modules.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/compat.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_COMPAT_H
#define MESSAGING_COMPAT_H

#include "utils/wait_event.h"

#if PG_VERSION_NUM < 150000
#error "messaging requires PostgreSQL 15 or later"
#endif

/*
 * Custom wait events arrived in PostgreSQL 17; before that an extension
 * reports the generic PG_WAIT_EXTENSION class.
 */
#if PG_VERSION_NUM >= 170000
#define MESSAGING_WAIT_EVENT	WAIT_EVENT_EXTENSION
#else
#define MESSAGING_WAIT_EVENT	PG_WAIT_EXTENSION
#endif

/* ExecInsertIndexTuples() gained the "onlySummarizing" argument in 16. */
#if PG_VERSION_NUM >= 160000
#define messaging_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL, false)
#else
#define messaging_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL)
#endif

#endif							/* MESSAGING_COMPAT_H */
