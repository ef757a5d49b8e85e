'use strict';
// Plays another application reading what the messaging extension relays:
// asserts a durable, non-exclusive queue (it survives reconnects and broker
// restarts), optionally declares the extension's exchanges and binds the
// queue, then prints one JSON line per delivered message.
//
//   node consume.js --url URL --queue NAME [--bind EXCHANGE:ROUTING_KEY ...]
//        [--declare-exchanges] [--passive] [--setup-only]
//        --count N --timeout-ms T [--ack | --nack | --nack-drop]
//        [--prefetch P] [--fields F,F,...]
//
// --declare-exchanges  asserts inter-app-events (topic) and
//                      inter-app-broadcast (fanout), both durable
// --passive            only checks that the queue exists (no declare), for
//                      queues declared elsewhere with other arguments
// --setup-only         exit 0 after declaring and binding
// --ack (default)      acknowledge each message once printed
// --nack               negative-acknowledge with requeue (redelivered later)
// --nack-drop          negative-acknowledge without requeue
// --fields F,F,...     print, instead of the JSON object, one line of
//                      tab-separated values per message, each as JSON text
//                      (null when absent): messageId, routingKey,
//                      redelivered, bodyLength, bodySha256 (hex), or
//                      body.PATH, a dot path into the JSON body such as
//                      body.data.id; for tests reading tens of thousands of
//                      messages
// Once the consumer is registered, "consume.js: consuming from NAME" goes to
// stderr. Exit status: 0 once N messages arrived, 1 at timeout (after printing what
// arrived), 2 on bad arguments or connection errors.

const crypto = require('node:crypto');
const amqp = require('amqplib');
const { parseArgs } = require('node:util');

const EXCHANGES = [
  ['inter-app-events', 'topic'],
  ['inter-app-broadcast', 'fanout'],
];

// What --fields may name besides body.PATH.
const FIELDS = new Set(['messageId', 'routingKey', 'redelivered', 'bodyLength', 'bodySha256']);

function usage(msg) {
  process.stderr.write(`consume.js: ${msg}\n`);
  process.exit(2);
}

function parse() {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' },
      queue: { type: 'string' },
      bind: { type: 'string', multiple: true, default: [] },
      'declare-exchanges': { type: 'boolean', default: false },
      passive: { type: 'boolean', default: false },
      'setup-only': { type: 'boolean', default: false },
      count: { type: 'string', default: '1' },
      'timeout-ms': { type: 'string', default: '10000' },
      ack: { type: 'boolean', default: false },
      nack: { type: 'boolean', default: false },
      'nack-drop': { type: 'boolean', default: false },
      prefetch: { type: 'string' },
      fields: { type: 'string' },
    },
  });
  if (!values.url) usage('--url is required');
  if (!values.queue) usage('--queue is required');
  const count = Number(values.count);
  const timeoutMs = Number(values['timeout-ms']);
  if (!Number.isInteger(count) || count < 0) usage('--count must be a non-negative integer');
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) usage('--timeout-ms must be a number');
  const modes = ['ack', 'nack', 'nack-drop'].filter((m) => values[m]);
  if (modes.length > 1) usage('choose one of --ack, --nack, --nack-drop');
  const binds = values.bind.map((b) => {
    const i = b.indexOf(':');
    if (i <= 0) usage(`--bind wants EXCHANGE:ROUTING_KEY, got "${b}"`);
    return [b.slice(0, i), b.slice(i + 1)];
  });
  const fields = values.fields === undefined ? null : values.fields.split(',');
  if (fields && fields.some((f) => !FIELDS.has(f) && !/^body(\.[^.]+)+$/.test(f))) {
    usage(`--fields wants ${[...FIELDS].join(', ')} or body.PATH, got "${values.fields}"`);
  }
  return {
    url: values.url,
    queue: values.queue,
    binds,
    declareExchanges: values['declare-exchanges'],
    passive: values.passive,
    setupOnly: values['setup-only'],
    count,
    timeoutMs,
    mode: modes[0] || 'ack',
    prefetch: values.prefetch ? Number(values.prefetch) : Math.max(1, Math.min(count, 100)),
    fields,
  };
}

function describe(msg) {
  const p = msg.properties;
  return {
    exchange: msg.fields.exchange,
    routingKey: msg.fields.routingKey,
    redelivered: msg.fields.redelivered,
    properties: {
      contentType: p.contentType,
      contentEncoding: p.contentEncoding,
      messageId: p.messageId,
      type: p.type,
      appId: p.appId,
      timestamp: p.timestamp,
      deliveryMode: p.deliveryMode,
      priority: p.priority,
      headers: p.headers,
      correlationId: p.correlationId,
      replyTo: p.replyTo,
      expiration: p.expiration,
      userId: p.userId,
    },
    bodyLength: msg.content.length,
    body: msg.content.toString('utf8'),
  };
}

// One --fields line: the values named, as JSON text (which holds no tab or
// newline), separated by tabs. A body that is not JSON has no paths.
function pick(msg, fields) {
  let body;
  const value = (f) => {
    switch (f) {
      case 'messageId': return msg.properties.messageId;
      case 'routingKey': return msg.fields.routingKey;
      case 'redelivered': return msg.fields.redelivered;
      case 'bodyLength': return msg.content.length;
      case 'bodySha256': return crypto.createHash('sha256').update(msg.content).digest('hex');
      default: break;
    }
    if (body === undefined) {
      try { body = JSON.parse(msg.content.toString('utf8')); } catch (_) { body = null; }
    }
    let v = body;
    for (const k of f.split('.').slice(1)) v = v !== null && typeof v === 'object' ? v[k] : undefined;
    return v;
  };
  return fields.map((f) => JSON.stringify(value(f) ?? null)).join('\t');
}

async function main() {
  const opt = parse();
  const conn = await amqp.connect(opt.url);
  conn.on('error', (err) => process.stderr.write(`consume.js: connection error: ${err.message}\n`));
  const ch = await conn.createChannel();

  if (opt.declareExchanges) {
    for (const [name, kind] of EXCHANGES) await ch.assertExchange(name, kind, { durable: true });
  }
  if (opt.passive) {
    await ch.checkQueue(opt.queue);
  } else {
    await ch.assertQueue(opt.queue, { durable: true, exclusive: false, autoDelete: false });
  }
  for (const [exchange, key] of opt.binds) await ch.bindQueue(opt.queue, exchange, key);

  if (opt.setupOnly) {
    await conn.close();
    return 0;
  }

  let received = 0;
  let finish;
  const done = new Promise((resolve) => { finish = resolve; });
  if (opt.count === 0) finish(0);
  const timer = setTimeout(() => finish(1), opt.timeoutMs);

  await ch.prefetch(opt.prefetch);
  const { consumerTag } = await ch.consume(opt.queue, (msg) => {
    if (msg === null) { finish(1); return; } // consumer cancelled by the broker
    if (received >= opt.count) return; // left unacknowledged: requeued on close
    received += 1;
    process.stdout.write((opt.fields ? pick(msg, opt.fields) : JSON.stringify(describe(msg))) + '\n');
    if (opt.mode === 'ack') ch.ack(msg);
    else if (opt.mode === 'nack') ch.nack(msg, false, true);
    else ch.nack(msg, false, false);
    if (received >= opt.count) finish(0);
  }, { noAck: false });
  // Tests start this program in the background and wait for this line
  // before making the extension publish.
  process.stderr.write(`consume.js: consuming from ${opt.queue}\n`);

  const status = await done;
  clearTimeout(timer);
  try { await ch.cancel(consumerTag); } catch (_) { /* channel may be gone */ }
  await conn.close().catch(() => {});
  if (status !== 0) process.stderr.write(`consume.js: timeout: received ${received} of ${opt.count}\n`);
  return status;
}

main().then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`consume.js: ${err.stack || err}\n`); process.exitCode = 2; },
);
