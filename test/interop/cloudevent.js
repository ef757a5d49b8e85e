'use strict';
// Builds CloudEvents 1.0 envelopes in structured mode (the whole event is
// the JSON message body), the format other applications publish to the
// messaging extension's queue. Usable as a module or from the shell:
//   node cloudevent.js --event user.created --data '{"id":1}' [--tenant T]
//                      [--source APP] [--id ID] [--time ISO]

const crypto = require('node:crypto');
const { parseArgs } = require('node:util');

// Returns the envelope as a plain object. `data` is any JSON value;
// `tenant` becomes the `tenantid` extension attribute when given.
function buildCloudEvent({ type, data, tenant, source, id, time }) {
  if (!type) throw new Error('cloud event needs a type');
  const event = {
    specversion: '1.0',
    id: id || crypto.randomUUID(),
    source: source || 'interop-test',
    type,
    time: time || new Date().toISOString(),
    datacontenttype: 'application/json',
    data: data === undefined ? null : data,
  };
  if (tenant !== undefined && tenant !== null && tenant !== '') event.tenantid = tenant;
  return event;
}

module.exports = { buildCloudEvent };

if (require.main === module) {
  const { values } = parseArgs({
    options: {
      event: { type: 'string' },
      data: { type: 'string', default: 'null' },
      tenant: { type: 'string' },
      source: { type: 'string' },
      id: { type: 'string' },
      time: { type: 'string' },
    },
  });
  const ev = buildCloudEvent({
    type: values.event,
    data: JSON.parse(values.data),
    tenant: values.tenant,
    source: values.source,
    id: values.id,
    time: values.time,
  });
  process.stdout.write(JSON.stringify(ev) + '\n');
}
