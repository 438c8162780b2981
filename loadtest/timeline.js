// k6 capacity scenarios for the timeline service over gRPC (h2c).
//
//   k6 run -e SCENARIO=mixed -e TIMELINE_ADDR=127.0.0.1:7070 -e TIMELINE_JWT_SECRET=... loadtest/timeline.js
//
// SCENARIO: ping | dm_chat | small_groups | hot_group | sync_readers | push | mixed (default mixed).
// DURATION (default 30s) and VUS (per sending scenario, default 8) size the run.
// loadtest/run.sh starts a service and runs one of these with a Ping baseline before it.
import { sleep } from 'k6';
import encoding from 'k6/encoding';
import exec from 'k6/execution';
import { SyncReader, call, createGroup, directId, pushPair, sendText, token } from './lib.js';

const SCENARIO = __ENV.SCENARIO || 'mixed';
const DURATION = __ENV.DURATION || '30s';
const VUS = Number(__ENV.VUS || 8);

const DM_USERS = 200; // partners of the dm_chat senders
const SMALL_GROUPS = 50;
const SMALL_GROUP_SIZE = 8;
const HOT_MEMBERS = 10000;
const READERS = 8;
const READER_GROUPS = 10; // every reader is in each of them
const PUSH_RATE = 20; // messages per second to each push listener

function senders(execName, vus = VUS) {
  return { executor: 'constant-vus', exec: execName, vus, duration: DURATION, gracefulStop: '5s' };
}
function readers(execName, vus = READERS) {
  return { executor: 'constant-vus', exec: execName, vus, duration: DURATION, gracefulStop: '5s' };
}

const SCENARIOS = {
  ping: { ping: senders('ping') },
  dm_chat: { dm_chat: senders('dmChat') },
  small_groups: { small_groups: senders('smallGroups') },
  hot_group: { hot_group: senders('hotGroup'), hot_readers: readers('hotReader', 4) },
  sync_readers: {
    reader_writers: {
      executor: 'constant-arrival-rate', exec: 'readerGroupSend', rate: 100, timeUnit: '1s',
      duration: DURATION, preAllocatedVUs: 4, maxVUs: 16, gracefulStop: '5s',
    },
    sync_readers: readers('syncReader'),
  },
  // VUS devices, each with a stream open and a partner sending it PUSH_RATE messages/s.
  push: {
    push: {
      executor: 'per-vu-iterations', exec: 'pushListener', vus: VUS, iterations: 1,
      maxDuration: `${parseDuration(DURATION) + 30}s`,
    },
  },
  mixed: {
    dm_chat: senders('dmChat', 2),
    small_groups: senders('smallGroups', 2),
    hot_group: senders('hotGroup', 2),
    reader_writers: {
      executor: 'constant-arrival-rate', exec: 'readerGroupSend', rate: 20, timeUnit: '1s',
      duration: DURATION, preAllocatedVUs: 4, maxVUs: 16, gracefulStop: '5s',
    },
    sync_readers: readers('syncReader', 4),
    hot_readers: readers('hotReader', 2),
  },
};
if (!SCENARIOS[SCENARIO]) {
  throw new Error(`unknown SCENARIO ${SCENARIO}: one of ${Object.keys(SCENARIOS).join(', ')}`);
}
const RPCS = ['Ping', 'SendMessage', 'Sync', 'EditMessage', 'RecallMessage'];

export const options = {
  scenarios: SCENARIOS[SCENARIO],
  setupTimeout: '120s',
  summaryTrendStats: ['med', 'p(99)', 'count'],
  thresholds: Object.assign(
    {
      rpc_errors: ['rate<0.01'],
      // Delivery, not only status codes: a reader that sees a message twice or a conv_seq
      // skipped fails the run.
      delivery_duplicates: ['count==0'],
      delivery_gaps: ['count==0'],
    },
    ...RPCS.map((rpc) => ({ [`grpc_req_duration{rpc:${rpc}}`]: ['p(99)<1000'] })),
    ...RPCS.map((rpc) => ({ [`rpc_errors{rpc:${rpc}}`]: ['rate<0.01'] })),
    SCENARIO === 'sync_readers' || SCENARIO === 'mixed' || SCENARIO === 'hot_group'
      ? { delivered_messages: ['count>0'] }
      : {},
    // Every message pushed once, none missing, none twice, no stream failing.
    SCENARIO === 'push'
      ? {
        push_received: ['count>0'],
        push_missing: ['count==0'],
        push_duplicates: ['count==0'],
        push_stream_errors: ['count==0'],
        push_latency: ['p(99)<1000'],
      }
      : {},
  ),
};

const uses = (name) => Object.values(SCENARIOS[SCENARIO]).some((s) => s.exec === name);
// Names of a run's users and groups start with its id (made once, in setup), so runs against
// one server never mix.
const member = (run, group, j) => `${run}-${group}-m${j}`;
const readerName = (run, r) => `${run}-reader${r}`;

export function setup() {
  const RUN = __ENV.RUN_ID || `r${Date.now().toString(36)}`;
  const data = { run: RUN, smallGroups: [], hotGroup: null, readerGroups: [] };
  if (uses('smallGroups')) {
    for (let g = 0; g < SMALL_GROUPS; g++) {
      const members = [];
      for (let j = 1; j < SMALL_GROUP_SIZE; j++) members.push(member(RUN, `sg${g}`, j));
      data.smallGroups.push(createGroup(member(RUN, `sg${g}`, 0), `${RUN}-sg${g}`, members));
    }
  }
  if (uses('hotGroup') || uses('hotReader')) {
    const members = [];
    for (let j = 1; j < HOT_MEMBERS; j++) members.push(member(RUN, 'hot', j));
    // 10,000 members: the service turns it hot by itself (hot_threshold, default 500).
    data.hotGroup = createGroup(member(RUN, 'hot', 0), `${RUN}-hot`, members);
    const conversation = call('GetConversation', { conversationId: data.hotGroup },
      token(member(RUN, 'hot', 0), 'setup'));
    if (!conversation || conversation.conversation.mode !== 'DELIVERY_MODE_HOT') {
      throw new Error(`${data.hotGroup} did not turn hot: ${JSON.stringify(conversation)}`);
    }
  }
  if (uses('readerGroupSend')) {
    const members = [];
    for (let r = 0; r < READERS; r++) members.push(readerName(RUN, r));
    for (let g = 0; g < READER_GROUPS; g++) {
      data.readerGroups.push(createGroup(`${RUN}-writer${g}`, `${RUN}-rg${g}`, members));
    }
  }
  return data;
}

const tokens = {};
function bearer(user) {
  if (!tokens[user]) tokens[user] = token(user, `k6-${__VU}`);
  return tokens[user];
}
const pick = (n) => Math.floor(Math.random() * n);
const msgId = () => `${exec.scenario.name}-${__VU}-${exec.vu.iterationInScenario}`;

export function ping(data) {
  call('Ping', {}, bearer(`${data.run}-ping${__VU}`));
}

export function dmChat(data) {
  const me = `${data.run}-dm${__VU}`;
  const peer = `${data.run}-u${pick(DM_USERS)}`;
  sendText(me, bearer(me), directId(me, peer), msgId());
}

export function smallGroups(data) {
  const g = pick(SMALL_GROUPS);
  const sender = member(data.run, `sg${g}`, pick(SMALL_GROUP_SIZE));
  sendText(sender, bearer(sender), data.smallGroups[g], msgId());
}

export function hotGroup(data) {
  const sender = member(data.run, 'hot', pick(HOT_MEMBERS));
  sendText(sender, bearer(sender), data.hotGroup, msgId());
}

export function readerGroupSend(data) {
  const g = pick(READER_GROUPS);
  const sender = `${data.run}-writer${g}`;
  const b = bearer(sender);
  const sent = sendText(sender, b, data.readerGroups[g], msgId());
  // Changes at a chat's share: about one message in 10 edited, one in 25 recalled. Each is an
  // entry at the next conv_seq that the readers must receive like a message.
  const i = exec.vu.iterationInScenario;
  if (!sent || !sent.message) return;
  const target = {
    conversationId: data.readerGroups[g],
    convSeq: sent.message.convSeq,
    messageId: sent.message.messageId,
  };
  if (i % 10 === 3) {
    call('EditMessage', {
      ...target, clientMsgId: `${sender}-edit-${msgId()}`, body: encoding.b64encode('edited'),
    }, b);
  }
  if (i % 25 === 7) call('RecallMessage', target, b);
}

// One device per VU, kept across iterations: it follows its own cursor for the whole run.
let reader = null;

export function syncReader(data) {
  if (!reader) reader = new SyncReader(readerName(data.run, (__VU - 1) % READERS), `k6-${__VU}`);
  reader.catchUp();
  sleep(0.1);
}

export function hotReader(data) {
  // A member of the hot group per VU, one device each; it also sends now and then.
  if (!reader) reader = new SyncReader(member(data.run, 'hot', HOT_MEMBERS - __VU), `k6-${__VU}`);
  reader.catchUp();
  sleep(0.1);
}

export function pushListener(data) {
  pushPair(`${data.run}-pl${__VU}`, `${data.run}-pp${__VU}`, parseDuration(DURATION), PUSH_RATE);
}

// A table a person reads, plus JSON for loadtest/run.sh (SUMMARY_JSON).
export function handleSummary(data) {
  const seconds = parseDuration(DURATION);
  const rows = [];
  for (const rpc of RPCS) {
    const m = data.metrics[`grpc_req_duration{rpc:${rpc}}`];
    if (!m || !m.values.count) continue;
    const errors = data.metrics[`rpc_errors{rpc:${rpc}}`];
    rows.push({
      rpc,
      calls: m.values.count,
      per_second: m.values.count / seconds,
      p50_ms: m.values.med,
      p99_ms: m.values['p(99)'],
      error_rate: errors ? errors.values.rate : 0,
    });
  }
  const count = (name) => (data.metrics[name] ? data.metrics[name].values.count : 0);
  const failed = Object.entries(data.metrics)
    .filter(([, m]) => m.thresholds && Object.values(m.thresholds).some((t) => !t.ok))
    .map(([name]) => name);
  const push = data.metrics.push_latency;
  const summary = {
    scenario: SCENARIO,
    seconds,
    rows,
    delivered: count('delivered_messages'),
    duplicates: count('delivery_duplicates'),
    gaps: count('delivery_gaps'),
    push: push && push.values.count
      ? {
        received: count('push_received'),
        missing: count('push_missing'),
        duplicates: count('push_duplicates'),
        stream_errors: count('push_stream_errors'),
        p50_ms: push.values.med,
        p99_ms: push.values['p(99)'],
      }
      : null,
    failed_thresholds: failed,
  };
  let text = `\nscenario ${SCENARIO} (${DURATION})\n`;
  text += 'rpc            calls      calls/s    p50 ms    p99 ms   errors\n';
  for (const r of rows) {
    text += `${r.rpc.padEnd(12)} ${String(r.calls).padStart(8)} ${r.per_second.toFixed(1).padStart(12)}`
      + ` ${r.p50_ms.toFixed(2).padStart(9)} ${r.p99_ms.toFixed(2).padStart(9)}`
      + ` ${(100 * r.error_rate).toFixed(2).padStart(7)}%\n`;
  }
  text += `delivered ${summary.delivered}, duplicates ${summary.duplicates}, gaps ${summary.gaps}\n`;
  if (summary.push) {
    const p = summary.push;
    text += `pushed ${p.received}, missing ${p.missing}, twice ${p.duplicates}, stream errors ${p.stream_errors};`
      + ` send -> push p50 ${p.p50_ms.toFixed(2)} ms, p99 ${p.p99_ms.toFixed(2)} ms\n`;
  }
  text += failed.length ? `FAILED thresholds: ${failed.join(', ')}\n` : 'all thresholds passed\n';
  const out = { stdout: text };
  if (__ENV.SUMMARY_JSON) out[__ENV.SUMMARY_JSON] = JSON.stringify(summary, null, 1);
  return out;
}

function parseDuration(d) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(d);
  if (!m) return Number(d) || 1;
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
}
