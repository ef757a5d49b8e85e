/*-------------------------------------------------------------------------
 *
 * validate.c
 *	  Checks on the identifiers and payloads an event carries.
 *
 * Routing keys are built from these values ("<target_app>.<event_type>"),
 * so whatever reaches the broker must be free of the topic wildcards '*'
 * and '#', of spaces and control characters, and short enough for an AMQP
 * short string (255 bytes).  The rules:
 *
 *	event type	 two or more dot-separated words of lower-case ASCII letters,
 *				 digits and underscores, each starting with a letter; at most
 *				 191 bytes ("user.created", "org.assignment.created")
 *	app name	 1 to 63 ASCII letters, digits, '_' or '-' ("crm", "billing")
 *	tenant id	 1 to 128 printable ASCII characters other than '*' and '#'
 *	correlation	 1 to 255 printable ASCII characters
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/validate.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"

#include "messaging.h"
#include "validate.h"

bool
messaging_is_event_type(const char *value)
{
	const char *p = value;
	int			words = 0;
	size_t		len = strlen(value);

	if (len == 0 || len > MESSAGING_MAX_EVENT_TYPE)
		return false;

	for (;;)
	{
		/* each word starts with a letter */
		if (!(*p >= 'a' && *p <= 'z'))
			return false;
		p++;
		while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
			   *p == '_')
			p++;
		words++;
		if (*p == '\0')
			break;
		if (*p != '.')
			return false;
		p++;
	}
	return words >= 2;
}

void
messaging_check_event_type(const char *value, const char *param)
{
	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", param)));

	if (strlen(value) > MESSAGING_MAX_EVENT_TYPE)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", param),
				 errdetail("An event type has at most %d bytes; this one has %zu.",
						   MESSAGING_MAX_EVENT_TYPE, strlen(value))));

	if (!messaging_is_event_type(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s \"%s\"", param, value),
				 errdetail("An event type is two or more dot-separated words of "
						   "lower-case letters, digits and underscores, each "
						   "starting with a letter."),
				 errhint("For example \"user.created\" or \"org.assignment.created\".")));
}

const char *
messaging_app_name_problem(const char *name)
{
	const char *p;

	if (name == NULL || name[0] == '\0')
		return "An application name must not be empty.";
	if (strlen(name) > MESSAGING_MAX_APP_NAME)
		return "An application name has at most 63 bytes.";
	for (p = name; *p; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
			return "An application name consists of ASCII letters, digits, "
				"underscores and hyphens.";
	}
	return NULL;
}

void
messaging_check_app_name(const char *value, const char *param)
{
	const char *problem;

	if (value == NULL)
		return;

	problem = messaging_app_name_problem(value);
	if (problem == NULL)
		return;

	if (strlen(value) > MESSAGING_MAX_APP_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", param),
				 errdetail("%s", problem)));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid %s \"%s\"", param, value),
			 errdetail("%s", problem)));
}

/*
 * Printable ASCII without space; optionally also without the topic
 * wildcards.
 */
static bool
is_printable_token(const char *value, bool allow_wildcards)
{
	const unsigned char *p;

	for (p = (const unsigned char *) value; *p; p++)
	{
		if (*p <= 0x20 || *p >= 0x7f)
			return false;
		if (!allow_wildcards && (*p == '*' || *p == '#'))
			return false;
	}
	return true;
}

void
messaging_check_tenant_id(const char *value, const char *param)
{
	if (value == NULL)
		return;

	if (strlen(value) > MESSAGING_MAX_TENANT_ID)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", param),
				 errdetail("A tenant id has at most %d bytes; this one has %zu.",
						   MESSAGING_MAX_TENANT_ID, strlen(value))));

	if (value[0] == '\0' || !is_printable_token(value, false))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s \"%s\"", param, value),
				 errdetail("A tenant id is a non-empty string of printable ASCII "
						   "characters other than space, \"*\" and \"#\".")));
}

void
messaging_check_correlation_id(const char *value, const char *param)
{
	if (value == NULL)
		return;

	if (strlen(value) > MESSAGING_MAX_CORRELATION_ID)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", param),
				 errdetail("A correlation id has at most %d bytes; this one has %zu.",
						   MESSAGING_MAX_CORRELATION_ID, strlen(value))));

	if (value[0] == '\0' || !is_printable_token(value, true))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s \"%s\"", param, value),
				 errdetail("A correlation id is a non-empty string of printable "
						   "ASCII characters other than space.")));
}

/*
 * The limit applies to the payload's stored jsonb size, which is what the
 * outbox keeps; the JSON text on the wire is of similar size.
 */
void
messaging_check_payload_size(Datum payload, const char *param)
{
	Size		size = toast_raw_datum_size(payload) - VARHDRSZ;

	if (size > (Size) messaging_max_payload_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too large", param),
				 errdetail("The payload has %zu bytes; the limit is %d bytes.",
						   size, messaging_max_payload_bytes),
				 errhint("Raise \"%s\" or send a reference to the data instead.",
						 "messaging.max_payload_bytes")));
}
