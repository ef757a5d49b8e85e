/*-------------------------------------------------------------------------
 *
 * bare_publisher.c
 *		Stand-alone RabbitMQ publisher used as the throughput ceiling for
 *		the messaging extension's outbox relay.
 *
 * The program talks to the broker with rabbitmq-c only, with no database
 * in the path, and does the same broker-side work the relay does for each
 * event: a persistent message with a CloudEvents content type and its own
 * message_id, published on a confirm-mode channel, counted as delivered
 * only once the broker has acknowledged it.  At most --window messages
 * are unconfirmed at any time.  A durable queue "bench-sink" is bound to
 * the exchange with "#" so that every message is written to disk and the
 * confirms measure real persistence rather than routing to nowhere.
 *
 * Output is a single JSON line on stdout:
 *	{"count":N,"size":S,"window":W,"seconds":T,"msg_per_s":R,
 *	 "nacked":K,"returned":M,"queued":Q}
 * "returned" counts messages that the broker could not route (only
 * possible with --mandatory); "queued" is the depth of bench-sink after the
 * run, read back with a passive declare as a check that the messages
 * really reached the queue.
 *
 * Exit status: 0 when every message was acknowledged, 1 on usage or
 * connection errors, 2 when no progress was made for PROGRESS_TIMEOUT
 * seconds, 3 when the run completed but some messages were nacked.
 *
 * bench/bare_publisher.c
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

/* Seconds without any progress after which the run is abandoned. */
#define PROGRESS_TIMEOUT	30

#define DEFAULT_WINDOW		500
#define MAX_BODY_SIZE		(64 * 1024 * 1024)
#define CHANNEL				1
#define SINK_QUEUE			"bench-sink"
#define CONTENT_TYPE		"application/cloudevents+json"

/* Settlement state of one delivery tag. */
#define TAG_PENDING			0
#define TAG_ACKED			1
#define TAG_NACKED			2

typedef struct BenchOptions
{
	const char *url;
	const char *exchange;
	const char *routing_key;
	long		count;
	long		size;
	long		window;
	bool		mandatory;
} BenchOptions;

typedef struct ConfirmTracker
{
	uint8_t    *state;			/* indexed by delivery tag, 1-based */
	uint64_t	published;		/* highest delivery tag sent */
	uint64_t	low;			/* every tag below this is settled */
	uint64_t	settled;		/* number of settled tags */
	uint64_t	nacked;
	uint64_t	returned;
} ConfirmTracker;

static volatile sig_atomic_t watchdog_stage = 0;
static const char *const stage_names[] = {
	"starting", "connecting", "setting up the channel", "publishing",
	"closing"
};

static void
die(const char *fmt,...)
{
	va_list		ap;

	fputs("bare_publisher: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/*
 * SIGALRM handler: the last line of defence against a call that blocks
 * without a timeout of its own (a socket write while the broker applies
 * flow control, for instance).  Only async-signal-safe calls here.
 */
static void
watchdog_fired(int signo)
{
	const char *msg1 = "bare_publisher: no progress for 30 s while ";
	const char *msg2 = stage_names[watchdog_stage];
	ssize_t		rc;

	(void) signo;
	rc = write(STDERR_FILENO, msg1, strlen(msg1));
	rc = write(STDERR_FILENO, msg2, strlen(msg2));
	rc = write(STDERR_FILENO, "\n", 1);
	(void) rc;
	_exit(2);
}

/* Re-arm the watchdog; called whenever the run moves forward. */
static void
progress(int stage)
{
	watchdog_stage = stage;
	alarm(PROGRESS_TIMEOUT);
}

static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
check_reply(amqp_rpc_reply_t reply, const char *what)
{
	switch (reply.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			return;
		case AMQP_RESPONSE_NONE:
			die("%s: missing RPC reply", what);
			break;
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			die("%s: %s", what, amqp_error_string2(reply.library_error));
			break;
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *m = reply.reply.decoded;

				die("%s: connection closed by broker: %u %.*s", what,
					m->reply_code, (int) m->reply_text.len,
					(char *) m->reply_text.bytes);
			}
			else if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *m = reply.reply.decoded;

				die("%s: channel closed by broker: %u %.*s", what,
					m->reply_code, (int) m->reply_text.len,
					(char *) m->reply_text.bytes);
			}
			die("%s: unexpected server method 0x%08x", what,
				reply.reply.id);
			break;
	}
	die("%s: unknown reply type %d", what, (int) reply.reply_type);
}

static long
parse_long(const char *arg, const char *name, long min, long max)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(arg, &end, 10);
	if (errno != 0 || *arg == '\0' || *end != '\0' || v < min || v > max)
		die("invalid value for --%s: \"%s\" (expected %ld..%ld)",
			name, arg, min, max);
	return v;
}

static void
usage(FILE *out)
{
	fprintf(out,
			"Usage: bare_publisher --url amqp://USER:PASS@HOST:PORT/VHOST\n"
			"         --exchange NAME --routing-key KEY --count N\n"
			"         --size BYTES [--window W] [--mandatory]\n"
			"\n"
			"Publishes N persistent messages of BYTES bytes with publisher\n"
			"confirms, keeping at most W (default %d) unconfirmed, and\n"
			"prints the throughput as one JSON line.\n",
			DEFAULT_WINDOW);
}

static void
parse_options(int argc, char **argv, BenchOptions *opt)
{
	static const struct option longopts[] = {
		{"url", required_argument, NULL, 'u'},
		{"exchange", required_argument, NULL, 'e'},
		{"routing-key", required_argument, NULL, 'r'},
		{"count", required_argument, NULL, 'n'},
		{"size", required_argument, NULL, 's'},
		{"window", required_argument, NULL, 'w'},
		{"mandatory", no_argument, NULL, 'm'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	int			c;

	memset(opt, 0, sizeof(*opt));
	opt->window = DEFAULT_WINDOW;
	opt->count = -1;
	opt->size = -1;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		switch (c)
		{
			case 'u':
				opt->url = optarg;
				break;
			case 'e':
				opt->exchange = optarg;
				break;
			case 'r':
				opt->routing_key = optarg;
				break;
			case 'n':
				opt->count = parse_long(optarg, "count", 1, 100000000L);
				break;
			case 's':
				opt->size = parse_long(optarg, "size", 1, MAX_BODY_SIZE);
				break;
			case 'w':
				opt->window = parse_long(optarg, "window", 1, 65535);
				break;
			case 'm':
				opt->mandatory = true;
				break;
			case 'h':
				usage(stdout);
				exit(0);
			default:
				usage(stderr);
				exit(1);
		}
	}
	if (optind < argc)
		die("unexpected argument \"%s\"", argv[optind]);
	if (opt->url == NULL || opt->exchange == NULL ||
		opt->routing_key == NULL || opt->count < 0 || opt->size < 0)
	{
		usage(stderr);
		exit(1);
	}
}

/*
 * Build a message body of exactly "size" bytes.  When the size allows it
 * the body is a CloudEvents JSON document whose "data" member is padded to
 * length; the id field is a fixed-width run of digits at *id_offset that
 * the caller rewrites for each message.  Tiny sizes get filler bytes only
 * and *id_offset is set to -1.
 */
static char *
build_body(long size, long *id_offset)
{
	static const char head[] =
		"{\"specversion\":\"1.0\",\"type\":\"crm.user.created\","
		"\"source\":\"/bench/bare_publisher\",\"id\":\"";
	static const char mid[] =
		"\",\"datacontenttype\":\"application/json\","
		"\"data\":{\"pad\":\"";
	static const char tail[] = "\"}}";
	const long	idlen = 12;
	long		fixed = (long) (sizeof(head) - 1 + idlen + sizeof(mid) - 1 +
								sizeof(tail) - 1);
	char	   *body = malloc(size);
	char	   *p;

	if (body == NULL)
		die("out of memory allocating a %ld byte body", size);

	if (size < fixed)
	{
		memset(body, 'x', size);
		*id_offset = -1;
		return body;
	}

	p = body;
	memcpy(p, head, sizeof(head) - 1);
	p += sizeof(head) - 1;
	*id_offset = p - body;
	memset(p, '0', idlen);
	p += idlen;
	memcpy(p, mid, sizeof(mid) - 1);
	p += sizeof(mid) - 1;
	memset(p, 'x', size - fixed);
	p += size - fixed;
	memcpy(p, tail, sizeof(tail) - 1);
	return body;
}

/* Write seq as exactly 12 zero-padded decimal digits at dst. */
static void
put_seq(char *dst, uint64_t seq)
{
	int			i;

	for (i = 11; i >= 0; i--)
	{
		dst[i] = '0' + (char) (seq % 10);
		seq /= 10;
	}
}

/* Mark one tag settled; returns false if it was already settled. */
static bool
settle_tag(ConfirmTracker *t, uint64_t tag, bool ack)
{
	if (t->state[tag] != TAG_PENDING)
		return false;
	t->state[tag] = ack ? TAG_ACKED : TAG_NACKED;
	t->settled++;
	if (!ack)
		t->nacked++;
	return true;
}

/*
 * Apply a basic.ack or basic.nack.  With "multiple" set, every pending tag
 * up to and including "tag" is settled.
 */
static void
apply_confirm(ConfirmTracker *t, uint64_t tag, bool multiple, bool ack)
{
	if (tag > t->published || (tag == 0 && !multiple))
		die("broker confirmed unknown delivery tag %" PRIu64
			" (published %" PRIu64 ")", tag, t->published);

	if (multiple)
	{
		uint64_t	upto = (tag == 0) ? t->published : tag;
		uint64_t	i;

		for (i = t->low; i <= upto; i++)
			(void) settle_tag(t, i, ack);
	}
	else
		(void) settle_tag(t, tag, ack);

	while (t->low <= t->published && t->state[t->low] != TAG_PENDING)
		t->low++;
}

/*
 * Handle one frame received while publishing.  Content header and body
 * frames only follow a basic.return and carry nothing we need.
 */
static void
handle_frame(ConfirmTracker *t, const amqp_frame_t *frame)
{
	if (frame->frame_type != AMQP_FRAME_METHOD)
		return;

	switch (frame->payload.method.id)
	{
		case AMQP_BASIC_ACK_METHOD:
			{
				amqp_basic_ack_t *m = frame->payload.method.decoded;

				apply_confirm(t, m->delivery_tag, m->multiple, true);
				break;
			}
		case AMQP_BASIC_NACK_METHOD:
			{
				amqp_basic_nack_t *m = frame->payload.method.decoded;

				apply_confirm(t, m->delivery_tag, m->multiple, false);
				break;
			}
		case AMQP_BASIC_RETURN_METHOD:
			t->returned++;
			break;
		case AMQP_CHANNEL_CLOSE_METHOD:
			{
				amqp_channel_close_t *m = frame->payload.method.decoded;

				die("channel closed by broker: %u %.*s", m->reply_code,
					(int) m->reply_text.len, (char *) m->reply_text.bytes);
				break;
			}
		case AMQP_CONNECTION_CLOSE_METHOD:
			{
				amqp_connection_close_t *m = frame->payload.method.decoded;

				die("connection closed by broker: %u %.*s", m->reply_code,
					(int) m->reply_text.len, (char *) m->reply_text.bytes);
				break;
			}
		default:
			die("unexpected method 0x%08x on channel %u",
				frame->payload.method.id, frame->channel);
	}
}

/*
 * Wait for the next frame for at most the time left before the progress
 * deadline, or not at all when "block" is false.  Returns false when
 * nothing was available without blocking.
 */
static bool
read_frame(amqp_connection_state_t conn, amqp_frame_t *frame, bool block,
		   double deadline)
{
	struct timeval tv = {0, 0};
	int			rc;

	if (block)
	{
		double		left = deadline - now_seconds();

		if (left <= 0)
		{
			fprintf(stderr, "bare_publisher: no confirm received for %d s\n",
					PROGRESS_TIMEOUT);
			exit(2);
		}
		tv.tv_sec = (time_t) left;
		tv.tv_usec = (suseconds_t) ((left - (double) tv.tv_sec) * 1e6);
	}

	rc = amqp_simple_wait_frame_noblock(conn, frame, &tv);
	if (rc == AMQP_STATUS_OK)
		return true;
	if (rc == AMQP_STATUS_TIMEOUT)
	{
		if (block)
		{
			fprintf(stderr, "bare_publisher: no confirm received for %d s\n",
					PROGRESS_TIMEOUT);
			exit(2);
		}
		return false;
	}
	die("reading from broker: %s", amqp_error_string2(rc));
	return false;				/* keep compiler quiet */
}

static amqp_connection_state_t
connect_broker(const BenchOptions *opt)
{
	struct amqp_connection_info info;
	struct timeval tv = {PROGRESS_TIMEOUT, 0};
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	char	   *urlcopy;
	int			rc;
	int			fd;

	urlcopy = strdup(opt->url);
	if (urlcopy == NULL)
		die("out of memory");
	amqp_default_connection_info(&info);
	rc = amqp_parse_url(urlcopy, &info);
	if (rc != AMQP_STATUS_OK)
		die("cannot parse --url: %s", amqp_error_string2(rc));
	if (info.ssl)
		die("amqps:// URLs are not supported by this tool");

	conn = amqp_new_connection();
	if (conn == NULL)
		die("out of memory");
	sock = amqp_tcp_socket_new(conn);
	if (sock == NULL)
		die("cannot create TCP socket");

	rc = amqp_socket_open_noblock(sock, info.host, info.port, &tv);
	if (rc != AMQP_STATUS_OK)
		die("cannot connect to %s:%d: %s", info.host, info.port,
			amqp_error_string2(rc));

	/*
	 * rabbitmq-c writes with blocking sends and no timeout of its own; a
	 * send timeout turns a write stuck behind broker flow control into an
	 * error instead of a hang.
	 */
	fd = amqp_get_sockfd(conn);
	if (fd >= 0)
		(void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

	(void) amqp_set_handshake_timeout(conn, &tv);
	(void) amqp_set_rpc_timeout(conn, &tv);

	check_reply(amqp_login(conn, info.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0,
						   AMQP_SASL_METHOD_PLAIN, info.user, info.password),
				"login");
	free(urlcopy);
	return conn;
}

/*
 * Declare the exchange and the sink queue, bind them, empty the queue and
 * switch the channel to confirm mode.
 */
static void
setup_channel(amqp_connection_state_t conn, const BenchOptions *opt)
{
	amqp_bytes_t exchange = amqp_cstring_bytes(opt->exchange);
	amqp_bytes_t queue = amqp_cstring_bytes(SINK_QUEUE);

	amqp_channel_open(conn, CHANNEL);
	check_reply(amqp_get_rpc_reply(conn), "channel.open");

	amqp_exchange_declare(conn, CHANNEL, exchange,
						  amqp_cstring_bytes("topic"),
						  0, 1, 0, 0, amqp_empty_table);
	check_reply(amqp_get_rpc_reply(conn), "exchange.declare");

	amqp_queue_declare(conn, CHANNEL, queue, 0, 1, 0, 0, amqp_empty_table);
	check_reply(amqp_get_rpc_reply(conn), "queue.declare");

	amqp_queue_bind(conn, CHANNEL, queue, exchange, amqp_cstring_bytes("#"),
					amqp_empty_table);
	check_reply(amqp_get_rpc_reply(conn), "queue.bind");

	amqp_queue_purge(conn, CHANNEL, queue);
	check_reply(amqp_get_rpc_reply(conn), "queue.purge");

	amqp_confirm_select(conn, CHANNEL);
	check_reply(amqp_get_rpc_reply(conn), "confirm.select");
}

/* Number of messages currently in the sink queue. */
static uint32_t
sink_depth(amqp_connection_state_t conn)
{
	amqp_queue_declare_ok_t *ok;

	ok = amqp_queue_declare(conn, CHANNEL, amqp_cstring_bytes(SINK_QUEUE),
							1, 0, 0, 0, amqp_empty_table);
	check_reply(amqp_get_rpc_reply(conn), "queue.declare (passive)");
	return ok->message_count;
}

int
main(int argc, char **argv)
{
	BenchOptions opt;
	ConfirmTracker tracker;
	amqp_connection_state_t conn;
	amqp_basic_properties_t props;
	amqp_bytes_t exchange;
	amqp_bytes_t routing_key;
	amqp_bytes_t body;
	char		msgid[64];
	char	   *bodybuf;
	long		id_offset;
	double		start;
	double		elapsed;
	double		deadline;
	uint32_t	queued;

	parse_options(argc, argv, &opt);

	signal(SIGALRM, watchdog_fired);
	signal(SIGPIPE, SIG_IGN);

	progress(1);
	conn = connect_broker(&opt);
	progress(2);
	setup_channel(conn, &opt);

	bodybuf = build_body(opt.size, &id_offset);
	body.bytes = bodybuf;
	body.len = (size_t) opt.size;

	memset(&tracker, 0, sizeof(tracker));
	tracker.state = calloc((size_t) opt.count + 1, 1);
	if (tracker.state == NULL)
		die("out of memory");
	tracker.low = 1;

	exchange = amqp_cstring_bytes(opt.exchange);
	routing_key = amqp_cstring_bytes(opt.routing_key);

	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG |
		AMQP_BASIC_DELIVERY_MODE_FLAG |
		AMQP_BASIC_MESSAGE_ID_FLAG;
	props.content_type = amqp_cstring_bytes(CONTENT_TYPE);
	props.delivery_mode = AMQP_DELIVERY_PERSISTENT;

	progress(3);
	start = now_seconds();
	deadline = start + PROGRESS_TIMEOUT;

	while (tracker.settled < (uint64_t) opt.count)
	{
		amqp_frame_t frame;
		uint64_t	before;

		/* Fill the window. */
		while (tracker.published < (uint64_t) opt.count &&
			   tracker.published - tracker.settled < (uint64_t) opt.window)
		{
			uint64_t	seq = tracker.published + 1;
			int			rc;

			snprintf(msgid, sizeof(msgid), "bench-%ld-%" PRIu64,
					 (long) getpid(), seq);
			props.message_id = amqp_cstring_bytes(msgid);
			if (id_offset >= 0)
				put_seq(bodybuf + id_offset, seq);

			rc = amqp_basic_publish(conn, CHANNEL, exchange, routing_key,
									opt.mandatory, 0, &props, body);
			if (rc != AMQP_STATUS_OK)
				die("basic.publish of message %" PRIu64 ": %s", seq,
					amqp_error_string2(rc));
			tracker.published = seq;
		}

		/*
		 * Wait for at least one frame, then take whatever else has already
		 * arrived before publishing more.
		 */
		before = tracker.settled;
		(void) read_frame(conn, &frame, true, deadline);
		handle_frame(&tracker, &frame);
		while ((amqp_frames_enqueued(conn) || amqp_data_in_buffer(conn)) &&
			   read_frame(conn, &frame, false, deadline))
			handle_frame(&tracker, &frame);
		amqp_maybe_release_buffers(conn);

		if (tracker.settled > before)
		{
			deadline = now_seconds() + PROGRESS_TIMEOUT;
			progress(3);
		}
	}
	elapsed = now_seconds() - start;

	progress(4);
	queued = sink_depth(conn);

	printf("{\"count\":%ld,\"size\":%ld,\"window\":%ld,\"seconds\":%.3f,"
		   "\"msg_per_s\":%.0f,\"nacked\":%" PRIu64 ",\"returned\":%" PRIu64
		   ",\"queued\":%" PRIu32 "}\n",
		   opt.count, opt.size, opt.window, elapsed,
		   elapsed > 0 ? opt.count / elapsed : 0.0,
		   tracker.nacked, tracker.returned, queued);
	fflush(stdout);

	check_reply(amqp_channel_close(conn, CHANNEL, AMQP_REPLY_SUCCESS),
				"channel.close");
	check_reply(amqp_connection_close(conn, AMQP_REPLY_SUCCESS),
				"connection.close");
	amqp_destroy_connection(conn);
	alarm(0);

	free(tracker.state);
	free(bodybuf);
	return tracker.nacked > 0 ? 3 : 0;
}
