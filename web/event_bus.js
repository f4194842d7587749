// EventBus: the client's one link to the Parley event protocol.
//
// A WebSocket to /ws carries events outside a call. During a call, events are sent on the
// call's RTCDataChannel instead, which carries the same protocol. Incoming events from
// either transport are deduplicated by their per-conversation `seq`, then routed to the
// handlers registered for their type.

const PROTOCOL_VERSION = '1.0';
const REQUEST_TIMEOUT_MS = 20000;
const RECONNECT_BASE_MS = 500;
const RECONNECT_MAX_MS = 30000;

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

export class EventBus {
  constructor({ token, url = defaultSocketUrl(token) }) {
    this.url = url;
    this.socket = null;
    this.channel = null;
    this.channelConversationId = null;
    this.handlers = new Map();
    this.pending = new Map();
    this.lastSeqByConversation = new Map();
    this.openConversationId = null;
    this.state = 'idle';
    this.closedByClient = false;
    this.reconnectAttempt = 0;
    this.reconnectTimer = null;
    this.nextRequestNumber = 1;
  }

  // Register a handler for one event type, or '*' for every event. Returns an unsubscriber.
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(handler);
    return () => this.handlers.get(type).delete(handler);
  }

  connect() {
    this.closedByClient = false;
    this.openSocket();
  }

  close() {
    this.closedByClient = true;
    clearTimeout(this.reconnectTimer);
    if (this.socket) this.socket.close(1000, 'client closed');
    this.socket = null;
    this.setState('closed');
  }

  openSocket() {
    this.setState(this.reconnectAttempt === 0 ? 'connecting' : 'reconnecting');
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener('message', (event) => this.receive(event.data, 'ws'));
    socket.addEventListener('close', (event) => this.handleSocketClose(socket, event));
  }

  handleSocketClose(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.rejectPending('ws', `the connection closed (code ${event.code})`);
    if (this.closedByClient) return;
    this.setState('reconnecting', `closed with code ${event.code}`);
    this.scheduleReconnect();
  }

  // Exponential back-off: the ceiling doubles from 0.5 s up to 30 s, and each delay is random
  // between half the ceiling and the ceiling, so many clients do not reconnect in step.
  scheduleReconnect() {
    const ceilingMs = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** this.reconnectAttempt);
    const delayMs = ceilingMs / 2 + Math.random() * (ceilingMs / 2);
    this.reconnectAttempt += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.openSocket(), delayMs);
  }

  setState(state, detail = '') {
    const previous = this.state;
    this.state = state;
    this.dispatch({ type: 'bus:state', data: { state, previous, detail } });
  }

  // Send events on the call's data channel from now on, while it is open.
  attachChannel(channel, conversationId) {
    this.channel = channel;
    this.channelConversationId = conversationId;
    channel.addEventListener('message', (event) => this.receive(event.data, 'channel'));
    channel.addEventListener('close', () => {
      if (this.channel !== channel) return;
      this.detachChannel();
    });
  }

  detachChannel() {
    this.channel = null;
    this.channelConversationId = null;
    this.rejectPending('channel', 'the call ended');
  }

  currentTransport() {
    if (this.channel && this.channel.readyState === 'open') {
      return { name: 'channel', target: this.channel };
    }
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      return { name: 'ws', target: this.socket };
    }
    return null;
  }

  // Send one event on the current transport. Returns {requestId, transport}.
  send(type, data) {
    const transport = this.currentTransport();
    if (!transport) {
      throw new ProtocolError('not_connected', `cannot send ${type}: not connected, try again`);
    }
    const requestId = `r${this.nextRequestNumber++}`;
    const envelope = { type, requestId };
    if (data !== undefined) envelope.data = data;
    transport.target.send(JSON.stringify(envelope));
    return { requestId, transport: transport.name };
  }

  // Send an event and resolve with the response that carries its requestId, or reject with
  // a ProtocolError when the response is a conversation:error.
  request(type, data, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      let sent;
      try {
        sent = this.send(type, data);
      } catch (error) {
        reject(error);
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(sent.requestId);
        reject(new ProtocolError('timeout', `${type} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(sent.requestId, { resolve, reject, timer, transport: sent.transport });
    });
  }

  rejectPending(transport, reason) {
    for (const [requestId, entry] of this.pending) {
      if (entry.transport !== transport) continue;
      clearTimeout(entry.timer);
      this.pending.delete(requestId);
      entry.reject(new ProtocolError('disconnected', reason));
    }
  }

  receive(text, transport) {
    let event;
    try {
      event = JSON.parse(text);
    } catch (error) {
      this.dispatch({ type: 'bus:invalid', data: { transport, error: String(error) } });
      return;
    }
    if (event.type === 'connection:ready' && transport === 'ws') {
      this.handleReady(event);
    }
    if (this.isSocketCopy(event, transport)) return;
    if (!this.acceptSeq(event)) return;
    this.settleRequest(event);
    this.dispatch(event);
  }

  // Exactly-once: a logged event whose seq was already seen (on the other transport, or in
  // a replay that overlaps) is dropped.
  acceptSeq(event) {
    const conversationId = event.data && event.data.conversationId;
    if (typeof event.seq !== 'number' || !conversationId) return true;
    const lastSeq = this.lastSeqByConversation.get(conversationId) || 0;
    if (event.seq <= lastSeq) return false;
    this.lastSeqByConversation.set(conversationId, event.seq);
    return true;
  }

  // An event outside the log (no seq), such as transcript:interim, reaches a page in a call
  // twice: on the call's data channel and on the WebSocket, when that is subscribed to the
  // same conversation. While the channel is open, the WebSocket's copy is dropped.
  isSocketCopy(event, transport) {
    if (transport !== 'ws' || typeof event.seq === 'number' || event.requestId) return false;
    const conversationId = event.data && event.data.conversationId;
    if (!conversationId || conversationId !== this.channelConversationId) return false;
    return Boolean(this.channel) && this.channel.readyState === 'open';
  }

  settleRequest(event) {
    const entry = event.requestId && this.pending.get(event.requestId);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.pending.delete(event.requestId);
    if (event.type === 'conversation:error') {
      entry.reject(new ProtocolError(event.data.code, event.data.error));
    } else {
      entry.resolve(event);
    }
  }

  handleReady(event) {
    if (event.data.protocolVersion !== PROTOCOL_VERSION) {
      this.dispatch({
        type: 'bus:error',
        data: { error: `server speaks protocol ${event.data.protocolVersion}, this page ` +
          `expects ${PROTOCOL_VERSION}: reload the page` },
      });
    }
    const wasReconnect = this.reconnectAttempt > 0;
    this.reconnectAttempt = 0;
    this.setState('open', wasReconnect ? 'reconnected' : '');
    if (wasReconnect && this.openConversationId) {
      this.loadConversation(this.openConversationId).catch((error) => {
        const message = `catching up after the reconnect failed: ${error.message}`;
        this.dispatch({ type: 'bus:error', data: { error: message } });
      });
    }
  }

  // Load a conversation and subscribe to it. When this client has seen events of it
  // before, only the events after the last seen seq are replayed.
  async loadConversation(conversationId, messageLimit = 50) {
    this.openConversationId = conversationId;
    const afterSeq = this.lastSeqByConversation.get(conversationId);
    const data = { conversationId, messageLimit };
    if (afterSeq !== undefined) data.afterSeq = afterSeq;
    try {
      const answer = await this.request('conversation:load', data);
      if (afterSeq === undefined) this.noteSnapshot(answer.data.conversation);
      return answer;
    } catch (error) {
      // An afterSeq past lastSeq means the seq numbers seen here are stale, for example after
      // a database reset, so load again without afterSeq.
      if (afterSeq === undefined || error.code !== 'invalid_field') throw error;
      this.lastSeqByConversation.delete(conversationId);
      const answer = await this.request('conversation:load', { conversationId, messageLimit });
      this.noteSnapshot(answer.data.conversation);
      return answer;
    }
  }

  noteSnapshot(conversation) {
    const known = this.lastSeqByConversation.get(conversation.conversationId) || 0;
    const lastSeq = Math.max(known, conversation.lastSeq);
    this.lastSeqByConversation.set(conversation.conversationId, lastSeq);
  }

  forgetConversation(conversationId) {
    this.lastSeqByConversation.delete(conversationId);
    if (this.openConversationId === conversationId) this.openConversationId = null;
  }

  dispatch(event) {
    for (const key of [event.type, '*']) {
      const handlers = this.handlers.get(key);
      if (!handlers) continue;
      for (const handler of [...handlers]) {
        try {
          handler(event);
        } catch (error) {
          console.error(`handler for ${event.type} failed`, error);
        }
      }
    }
  }
}

function defaultSocketUrl(token) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws?token=${encodeURIComponent(token)}`;
}
