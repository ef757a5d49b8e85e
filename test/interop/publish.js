'use strict';
// Plays another application publishing to RabbitMQ (for example into the
// queue `wrapper-events` that the messaging extension consumes). Uses a
// confirm channel and waits for the broker's confirms.
//
//   node publish.js --url URL [--exchange X] --routing-key K
//        (--body STRING | --body-file F | --bodies-file F | --raw-hex HEX |
//         --event TYPE [--data JSON] [--tenant T] [--source APP])
//        [--count N] [--message-id ID | --no-message-id] [--type T]
//        [--app-id A] [--content-type CT] [--correlation-id C]
//        [--header k=v ...] [--non-persistent] [--mandatory]
//
// --exchange ""     (default) the default exchange: K is a queue name
// --bodies-file F   one message body per line
// --raw-hex HEX     body given as hex bytes (e.g. invalid UTF-8)
// --event TYPE      body is a CloudEvents 1.0 JSON envelope; its id becomes
//                   the message id and TYPE the type unless given
// --count N         publish every body N times (default 1)
// --message-id ID   used for every message; otherwise each gets a new UUID
// --mandatory       unroutable messages are returned and counted
// Prints "confirmed N" (and "returned N" with --mandatory). Exit status 0
// when every message was confirmed, 1 otherwise, 2 on bad arguments.

const amqp = require('amqplib');
const crypto = require('node:crypto');
const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { buildCloudEvent } = require('./cloudevent');

function usage(msg) {
  process.stderr.write(`publish.js: ${msg}\n`);
  process.exit(2);
}

function parse() {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' },
      exchange: { type: 'string', default: '' },
      'routing-key': { type: 'string' },
      body: { type: 'string' },
      'body-file': { type: 'string' },
      'bodies-file': { type: 'string' },
      'raw-hex': { type: 'string' },
      event: { type: 'string' },
      data: { type: 'string', default: 'null' },
      tenant: { type: 'string' },
      source: { type: 'string' },
      count: { type: 'string', default: '1' },
      'message-id': { type: 'string' },
      'no-message-id': { type: 'boolean', default: false },
      type: { type: 'string' },
      'app-id': { type: 'string' },
      'content-type': { type: 'string' },
      'correlation-id': { type: 'string' },
      header: { type: 'string', multiple: true, default: [] },
      'non-persistent': { type: 'boolean', default: false },
      mandatory: { type: 'boolean', default: false },
    },
  });
  if (!values.url) usage('--url is required');
  if (values['routing-key'] === undefined) usage('--routing-key is required');
  const sources = ['body', 'body-file', 'bodies-file', 'raw-hex', 'event'].filter((k) => values[k] !== undefined);
  if (sources.length !== 1) usage('give exactly one of --body, --body-file, --bodies-file, --raw-hex, --event');
  const count = Number(values.count);
  if (!Number.isInteger(count) || count < 1) usage('--count must be a positive integer');

  let bodies;
  let eventId;
  let eventType;
  if (values.body !== undefined) bodies = [Buffer.from(values.body, 'utf8')];
  else if (values['body-file'] !== undefined) bodies = [fs.readFileSync(values['body-file'])];
  else if (values['bodies-file'] !== undefined) {
    bodies = fs.readFileSync(values['bodies-file'], 'utf8').split('\n')
      .filter((line) => line !== '').map((line) => Buffer.from(line, 'utf8'));
  } else if (values['raw-hex'] !== undefined) {
    const hex = values['raw-hex'].replace(/\s+/g, '');
    if (!/^([0-9a-fA-F]{2})*$/.test(hex)) usage('--raw-hex wants an even number of hex digits');
    bodies = [Buffer.from(hex, 'hex')];
  } else {
    let data;
    try { data = JSON.parse(values.data); } catch (e) { usage(`--data is not JSON: ${e.message}`); }
    const ev = buildCloudEvent({ type: values.event, data, tenant: values.tenant, source: values.source });
    eventId = ev.id;
    eventType = ev.type;
    bodies = [Buffer.from(JSON.stringify(ev), 'utf8')];
  }

  const headers = {};
  for (const h of values.header) {
    const i = h.indexOf('=');
    if (i <= 0) usage(`--header wants k=v, got "${h}"`);
    headers[h.slice(0, i)] = h.slice(i + 1);
  }

  return {
    url: values.url,
    exchange: values.exchange,
    routingKey: values['routing-key'],
    bodies,
    count,
    messageId: values['message-id'] !== undefined ? values['message-id'] : eventId,
    noMessageId: values['no-message-id'],
    type: values.type !== undefined ? values.type : eventType,
    appId: values['app-id'],
    contentType: values['content-type'] !== undefined ? values['content-type']
      : (values['raw-hex'] !== undefined ? undefined : 'application/json'),
    correlationId: values['correlation-id'],
    headers,
    persistent: !values['non-persistent'],
    mandatory: values.mandatory,
  };
}

async function main() {
  const opt = parse();
  const conn = await amqp.connect(opt.url);
  conn.on('error', (err) => process.stderr.write(`publish.js: connection error: ${err.message}\n`));
  const ch = await conn.createConfirmChannel();
  let returned = 0;
  ch.on('return', () => { returned += 1; });

  let confirmed = 0;
  let failed = 0;
  const pending = [];
  for (let round = 0; round < opt.count; round += 1) {
    for (const body of opt.bodies) {
      const props = {
        persistent: opt.persistent,
        mandatory: opt.mandatory,
        timestamp: Math.floor(Date.now() / 1000),
        headers: opt.headers,
      };
      if (!opt.noMessageId) props.messageId = opt.messageId !== undefined ? opt.messageId : crypto.randomUUID();
      if (opt.type !== undefined) props.type = opt.type;
      if (opt.appId !== undefined) props.appId = opt.appId;
      if (opt.contentType !== undefined) props.contentType = opt.contentType;
      if (opt.correlationId !== undefined) props.correlationId = opt.correlationId;
      pending.push(new Promise((resolve) => {
        ch.publish(opt.exchange, opt.routingKey, body, props, (err) => {
          if (err) failed += 1; else confirmed += 1;
          resolve();
        });
      }));
    }
  }
  await Promise.all(pending);
  await ch.waitForConfirms().catch(() => {});
  await ch.close().catch(() => {});
  await conn.close().catch(() => {});
  process.stdout.write(`confirmed ${confirmed}\n`);
  if (opt.mandatory) process.stdout.write(`returned ${returned}\n`);
  if (failed > 0) process.stderr.write(`publish.js: ${failed} message(s) not confirmed\n`);
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`publish.js: ${err.stack || err}\n`); process.exitCode = 2; },
);
