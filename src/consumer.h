/*-------------------------------------------------------------------------
 *
 * consumer.h
 *	  Pieces of the consumer worker shared between its modules.
 *
 * Copyright (c) 2026, the messaging authors
 *
 * IDENTIFICATION
 *	  src/consumer.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef MESSAGING_CONSUMER_H
#define MESSAGING_CONSUMER_H

/* Header carrying the number of failed attempts of a message. */
#define CONSUMER_ATTEMPT_HEADER		"x-messaging-attempt"

/* Developer setting: exit between the commit and the ack (tests only). */
extern bool messaging_debug_exit_before_ack;

extern void messaging_consumer_define_settings(void);

/* AMQP topic patterns (consumer_topic.c). */
extern bool messaging_topic_match(const char *pattern, const char *key);
extern int	messaging_topic_compare(const char *a, const char *b);

#endif							/* MESSAGING_CONSUMER_H */
