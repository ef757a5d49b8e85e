/*-------------------------------------------------------------------------
 *
 * consumer_topic.c
 *	  AMQP topic patterns: matching event types against handler patterns,
 *	  and the order in which matching handlers run.
 *
 * A pattern is a list of dot-separated words; the word "*" matches exactly
 * one word of the key and "#" matches zero or more words, as in a RabbitMQ
 * topic exchange.  Matching is done word by word; a "#" tries every split
 * of the remaining key, which is cheap for keys of a few words.
 *
 * Handlers run from the most specific pattern to the least specific one:
 * patterns without "#" come before patterns with one, then fewer "*"
 * words first, then more literal words first.  Ties are broken by the
 * registration order (handler id), by the caller.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/consumer_topic.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

#include "consumer.h"

PG_FUNCTION_INFO_V1(messaging_topic_matches);

/* Length of the word starting at s (up to the next '.' or the end). */
static int
word_len(const char *s)
{
	const char *p = s;

	while (*p && *p != '.')
		p++;
	return (int) (p - s);
}

/* The word after the one starting at s, or NULL at the last one. */
static const char *
next_word(const char *s)
{
	const char *p = s + word_len(s);

	return *p == '.' ? p + 1 : NULL;
}

/*
 * Matches the words from p on against the words from k on; NULL stands
 * for "no words left".
 */
static bool
match_words(const char *p, const char *k)
{
	while (p != NULL)
	{
		int			plen = word_len(p);

		if (plen == 1 && *p == '#')
		{
			const char *rest = next_word(p);

			/* "#" takes zero words, then one more at each turn */
			for (;;)
			{
				if (match_words(rest, k))
					return true;
				if (k == NULL)
					return false;
				k = next_word(k);
			}
		}
		if (k == NULL)
			return false;
		if (!(plen == 1 && *p == '*'))
		{
			int			klen = word_len(k);

			if (plen != klen || strncmp(p, k, plen) != 0)
				return false;
		}
		p = next_word(p);
		k = next_word(k);
	}
	return k == NULL;
}

bool
messaging_topic_match(const char *pattern, const char *key)
{
	/* an empty string is a key (or pattern) of no words */
	return match_words(pattern[0] ? pattern : NULL, key[0] ? key : NULL);
}

static void
count_words(const char *p, int *hashes, int *stars, int *literals)
{
	*hashes = *stars = *literals = 0;
	for (; p != NULL && *p; p = next_word(p))
	{
		int			len = word_len(p);

		if (len == 1 && *p == '#')
			(*hashes)++;
		else if (len == 1 && *p == '*')
			(*stars)++;
		else
			(*literals)++;
	}
}

/*
 * qsort-style comparison: negative when pattern a runs before pattern b.
 */
int
messaging_topic_compare(const char *a, const char *b)
{
	int			ha,
				sa,
				la,
				hb,
				sb,
				lb;

	count_words(a, &ha, &sa, &la);
	count_words(b, &hb, &sb, &lb);
	if ((ha > 0) != (hb > 0))
		return ha > 0 ? 1 : -1;
	if (ha != hb)
		return ha - hb;
	if (sa != sb)
		return sa - sb;
	return lb - la;
}

/*
 * SQL: messaging.topic_matches(pattern text, routing_key text) boolean
 */
Datum
messaging_topic_matches(PG_FUNCTION_ARGS)
{
	char	   *pattern = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(1));

	PG_RETURN_BOOL(messaging_topic_match(pattern, key));
}
