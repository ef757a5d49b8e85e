/*-------------------------------------------------------------------------
 *
 * validate.h
 *	  Checks on the identifiers and payloads an event carries.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/validate.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_VALIDATE_H
#define MESSAGING_VALIDATE_H

/*
 * Each *_problem() function returns NULL when the value is acceptable,
 * otherwise a sentence saying what is wrong (for GUC check hooks and
 * errdetail); the check_*() functions raise an ERROR naming the parameter.
 */
extern const char *messaging_app_name_problem(const char *name);

extern void messaging_check_event_type(const char *value, const char *param);
extern void messaging_check_app_name(const char *value, const char *param);
extern void messaging_check_tenant_id(const char *value, const char *param);
extern void messaging_check_correlation_id(const char *value,
										   const char *param);
extern void messaging_check_payload_size(Datum payload, const char *param);

extern bool messaging_is_event_type(const char *value);

#endif							/* MESSAGING_VALIDATE_H */
