// Shared helpers of the k6 scripts: tokens minted here with HMAC, one gRPC client per VU,
// per-RPC metrics, and the delivery checker of sync readers.
import grpc from 'k6/net/grpc';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import { Counter, Rate, Trend } from 'k6/metrics';
import { clearInterval, setInterval, setTimeout } from 'k6/timers';

export const ADDR = __ENV.TIMELINE_ADDR || '127.0.0.1:7070';
const SECRET = __ENV.TIMELINE_JWT_SECRET;
const SERVICE = 'timeline.v1.TimelineService';

export const client = new grpc.Client();
client.load(['../proto'], 'timeline/v1/timeline.proto');

export const rpcErrors = new Rate('rpc_errors');
export const deliveredMessages = new Counter('delivered_messages');
export const deliveryDuplicates = new Counter('delivery_duplicates');
export const deliveryGaps = new Counter('delivery_gaps');

export const pushLatency = new Trend('push_latency', true);
export const pushReceived = new Counter('push_received');
export const pushMissing = new Counter('push_missing');
export const pushDuplicates = new Counter('push_duplicates');
export const pushStreamErrors = new Counter('push_stream_errors');

// HS256 JWT as the service expects: sub = user, did = device, iat/exp, adm for operators.
// `ttlSeconds` bounds it (default a day).
export function token(user, device, admin = false, ttlSeconds = 24 * 3600) {
  if (!SECRET) {
    throw new Error('TIMELINE_JWT_SECRET must be set (the secret the service verifies with)');
  }
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, did: device, iat: now, exp: now + ttlSeconds };
  if (admin) claims.adm = true;
  const head = encoding.b64encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' }), 'rawurl');
  const body = encoding.b64encode(JSON.stringify(claims), 'rawurl');
  const signature = crypto.hmac('sha256', SECRET, `${head}.${body}`, 'base64rawurl');
  return `${head}.${body}.${signature}`;
}

let connected = false;

function connect() {
  if (!connected) {
    client.connect(ADDR, { plaintext: true, timeout: '10s' });
    connected = true;
  }
}

// Calls one RPC with the caller's token and records whether it failed.
// `expected` lists the status codes that count as success (default: OK only).
export function call(method, request, bearer, expected = [grpc.StatusOK]) {
  connect();
  // k6 times it as grpc_req_duration, tagged with the RPC's short name.
  const response = client.invoke(`${SERVICE}/${method}`, request, {
    metadata: { authorization: `Bearer ${bearer}` },
    tags: { rpc: method },
    timeout: '10s',
  });
  const ok = expected.includes(response.status);
  rpcErrors.add(!ok, { rpc: method });
  if (!ok && __ENV.VERBOSE) {
    console.warn(`${method}: status ${response.status} ${JSON.stringify(response.error)}`);
  }
  return ok ? response.message : null;
}

export function directId(a, b) {
  return a < b ? `d:${a}:${b}` : `d:${b}:${a}`;
}

// Creates group `g:<id>` owned by `owner` with `members`, adding them 1,000 per call.
export function createGroup(owner, id, members) {
  const bearer = token(owner, 'setup');
  const first = members.slice(0, 1000);
  const created = call('CreateConversation', {
    kind: 'CONVERSATION_KIND_GROUP',
    conversationId: id,
    title: id,
    memberIds: first,
  }, bearer);
  if (!created) throw new Error(`cannot create group ${id}`);
  for (let i = 1000; i < members.length; i += 1000) {
    const added = call('AddMembers', {
      conversationId: `g:${id}`,
      userIds: members.slice(i, i + 1000),
    }, bearer);
    if (!added) throw new Error(`cannot add members to ${id}`);
  }
  return `g:${id}`;
}

export function sendText(sender, bearer, conversationId, seq) {
  return call('SendMessage', {
    conversationId,
    clientMsgId: `${sender}-${seq}`,
    contentType: 'text/plain',
    body: encoding.b64encode(`message ${seq} from ${sender}`),
  }, bearer);
}

// Seconds a missing conv_seq may stay missing before it counts as lost: the feed is ordered by
// inbox_seq, so concurrent sends to one conversation may arrive out of conv_seq order, and a
// late write may be held back by the gap rule (gap_grace, 3 s) before it arrives or becomes a hole.
const GAP_PATIENCE_MS = 10000;

// Follows one device's cursor and checks what it delivers as a client applying messages by
// conv_seq would: never the same conv_seq twice in a conversation, and no conv_seq missing for
// longer than GAP_PATIENCE_MS once a later one arrived (holes are entries too).
export class SyncReader {
  constructor(user, device = 'reader') {
    this.user = user;
    this.bearer = token(user, device);
    this.cursor = '';
    // conversation_id -> { upTo: every conv_seq <= upTo seen, ahead: Map(seq -> first seen ms) }
    this.conversations = {};
  }

  // One catch-up: pages until nothing more (or `maxPages`); returns the messages delivered.
  catchUp(limit = 100, maxPages = 20) {
    let delivered = 0;
    for (let page = 0; page < maxPages; page++) {
      const r = call('Sync', { cursor: this.cursor, limit }, this.bearer);
      if (!r) return delivered;
      if (r.cursorExpired) {
        this.cursor = '';
        continue;
      }
      for (const m of r.messages || []) this.check(m);
      delivered += (r.messages || []).length;
      this.cursor = r.nextCursor;
      if (!r.hasMore || r.pending) break;
    }
    this.checkGaps();
    deliveredMessages.add(delivered);
    return delivered;
  }

  check(m) {
    const seq = Number(m.convSeq);
    let c = this.conversations[m.conversationId];
    if (!c) {
      // Readers are members from the start: their first conv_seq of a conversation is #1.
      c = { upTo: 0, ahead: new Map() };
      this.conversations[m.conversationId] = c;
    }
    if (seq <= c.upTo || c.ahead.has(seq)) {
      deliveryDuplicates.add(1);
      console.error(`${this.user}: ${m.conversationId} #${seq} delivered again`);
      return;
    }
    c.ahead.set(seq, Date.now());
    while (c.ahead.has(c.upTo + 1)) {
      c.ahead.delete(c.upTo + 1);
      c.upTo += 1;
    }
  }

  // Counts conv_seqs missing for too long (each once) and steps over them.
  checkGaps() {
    const now = Date.now();
    for (const [id, c] of Object.entries(this.conversations)) {
      while (c.ahead.size > 0) {
        const oldest = Math.min(...c.ahead.values());
        if (now - oldest < GAP_PATIENCE_MS) break;
        deliveryGaps.add(1);
        console.error(`${this.user}: ${id} #${c.upTo + 1} missing for ${GAP_PATIENCE_MS} ms`);
        c.upTo += 1;
        while (c.ahead.has(c.upTo + 1)) {
          c.ahead.delete(c.upTo + 1);
          c.upTo += 1;
        }
      }
    }
  }
}

// One device with a push stream open for `seconds`, and a partner sending it direct messages at
// `rate` per second: every message must arrive on the stream once (checked `settleMs` after the
// last send), and the time from issuing the send to the stream's event is `push_latency`.
// The stream ends when its token expires (the server ends it UNAUTHENTICATED then): a client's
// half-close keeps a stream open, and k6 cannot cancel one.
export function pushPair(me, peer, seconds, rate, settleMs = 5000) {
  connect();
  const sentAt = new Map(); // client_msg_id -> ms
  const received = new Set();
  const endsAt = Date.now() + seconds * 1000;
  const stream = new grpc.Stream(client, `${SERVICE}/Subscribe`, {
    metadata: { authorization: `Bearer ${token(me, 'k6-push', false, seconds + settleMs / 1000 + 2)}` },
    tags: { rpc: 'Subscribe' },
  });
  stream.on('data', (event) => {
    if (!event.batch) return;
    const now = Date.now();
    for (const m of event.batch.messages || []) {
      if (received.has(m.clientMsgId)) {
        pushDuplicates.add(1);
        console.error(`${me}: ${m.clientMsgId} pushed twice`);
        continue;
      }
      received.add(m.clientMsgId);
      const at = sentAt.get(m.clientMsgId);
      if (at !== undefined) {
        pushLatency.add(now - at);
        pushReceived.add(1);
        sentAt.delete(m.clientMsgId);
      }
    }
  });
  stream.on('error', (e) => {
    // The token's expiry after the run is the planned end.
    if (Date.now() < endsAt + settleMs) {
      pushStreamErrors.add(1);
      console.error(`${me}: stream error ${JSON.stringify(e)}`);
    }
  });
  stream.write({ subscribe: { cursor: '' } });

  const conversationId = directId(me, peer);
  const peerBearer = token(peer, 'k6-push');
  let n = 0;
  const sending = setInterval(() => {
    if (Date.now() >= endsAt) return;
    n += 1;
    const id = `${peer}-push-${n}`;
    sentAt.set(id, Date.now());
    client.asyncInvoke(`${SERVICE}/SendMessage`, {
      conversationId,
      clientMsgId: id,
      contentType: 'text/plain',
      body: encoding.b64encode(`push ${n}`),
    }, { metadata: { authorization: `Bearer ${peerBearer}` }, tags: { rpc: 'SendMessage' }, timeout: '10s' })
      .then((r) => {
        const ok = r.status === grpc.StatusOK;
        rpcErrors.add(!ok, { rpc: 'SendMessage' });
        // Not accepted: not owed.
        if (!ok) sentAt.delete(id);
      });
  }, 1000 / rate);
  setTimeout(() => {
    clearInterval(sending);
    setTimeout(() => {
      if (sentAt.size > 0) {
        pushMissing.add(sentAt.size);
        console.error(`${me}: ${sentAt.size} messages never pushed`);
      }
    }, settleMs);
  }, seconds * 1000);
}
