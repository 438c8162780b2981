// Shared helpers of the k6 scripts: tokens minted here with HMAC, one gRPC client per VU,
// per-RPC metrics, and the delivery checker of sync readers.
import grpc from 'k6/net/grpc';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import { Counter, Rate } from 'k6/metrics';

export const ADDR = __ENV.TIMELINE_ADDR || '127.0.0.1:7070';
const SECRET = __ENV.TIMELINE_JWT_SECRET;
const SERVICE = 'timeline.v1.TimelineService';

const client = new grpc.Client();
client.load(['../proto'], 'timeline/v1/timeline.proto');

export const rpcErrors = new Rate('rpc_errors');
export const deliveredMessages = new Counter('delivered_messages');
export const deliveryDuplicates = new Counter('delivery_duplicates');
export const deliveryGaps = new Counter('delivery_gaps');

// HS256 JWT as the service expects: sub = user, did = device, iat/exp, adm for operators.
export function token(user, device, admin = false) {
  if (!SECRET) {
    throw new Error('TIMELINE_JWT_SECRET must be set (the secret the service verifies with)');
  }
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, did: device, iat: now, exp: now + 24 * 3600 };
  if (admin) claims.adm = true;
  const head = encoding.b64encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' }), 'rawurl');
  const body = encoding.b64encode(JSON.stringify(claims), 'rawurl');
  const signature = crypto.hmac('sha256', SECRET, `${head}.${body}`, 'base64rawurl');
  return `${head}.${body}.${signature}`;
}

let connected = false;

// Calls one RPC with the caller's token and records whether it failed.
// `expected` lists the status codes that count as success (default: OK only).
export function call(method, request, bearer, expected = [grpc.StatusOK]) {
  if (!connected) {
    client.connect(ADDR, { plaintext: true, timeout: '10s' });
    connected = true;
  }
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
