// ConversationStore: the single source of truth for the view. Server events and user
// actions change it, and every change notifies the subscribers, which re-render.

// An utterance whose message never comes keeps its line until the call ends, so only the
// newest few lines are kept.
const MAX_INTERIMS = 3;

export class ConversationStore {
  constructor() {
    this.state = {
      connection: 'idle',
      connectionDetail: '',
      userName: '',
      conversations: [],
      currentId: null,
      current: null,
      messages: [],
      hasMoreMessages: false,
      // Live transcripts of the caller's utterances that have no message yet, oldest first.
      interims: [],
      // The data of each reply's turn:metrics, by messageId.
      turnMetrics: {},
      audio: { muted: false, paused: false, playingChunkId: null },
      call: { state: 'idle', conversationId: null, audioLevel: 0, bytesReceived: 0 },
      pendingReplies: 0,
      // The data of the current conversation's latest memory:context-updated.
      memoryContext: null,
      // The current conversation's recordings, newest first, without their timelines, and
      // the conversation they were last loaded for (null until they are).
      recordings: [],
      recordingsFor: null,
      // The data of recording:started for each conversation with a call being recorded now,
      // by conversationId.
      activeRecordings: {},
      searchResults: null,
      loading: false,
      error: '',
      log: [],
    };
    this.listeners = new Set();
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  update(changes) {
    Object.assign(this.state, changes);
    for (const listener of [...this.listeners]) listener(this.state);
  }

  setError(message) {
    this.update({ error: message });
    if (message) this.addLog(message, true);
  }

  addLog(text, isError = false) {
    const time = new Date().toLocaleTimeString();
    const log = [...this.state.log, { time, text, isError }].slice(-200);
    this.update({ log });
  }

  // Live state of the tutor: listening, thinking or speaking.
  liveState() {
    const { call, audio, pendingReplies } = this.state;
    const playing = audio.playingChunkId && !audio.paused;
    if (playing || call.audioLevel > 0.01) return 'speaking';
    if (pendingReplies > 0) return 'thinking';
    if (call.state === 'connected') return 'listening';
    return 'idle';
  }

  // Conversation list.

  // A list response or an event can arrive after a newer change to the same conversation,
  // because the list was read before it. The newer updatedAt wins, so a status never reverts.
  setConversations(conversations) {
    const known = new Map(this.state.conversations.map((c) => [c.conversationId, c]));
    const fresh = conversations.map((incoming) => {
      const previous = known.get(incoming.conversationId);
      return previous && isNewer(previous, incoming) ? { ...incoming, ...previous } : incoming;
    });
    this.update({ conversations: fresh });
  }

  upsertConversation(conversation) {
    const conversations = this.state.conversations.filter(
      (known) => known.conversationId !== conversation.conversationId,
    );
    const previous = this.state.conversations.find(
      (known) => known.conversationId === conversation.conversationId,
    );
    const merged =
      previous && isNewer(previous, conversation)
        ? { ...conversation, ...previous }
        : { ...previous, ...conversation };
    delete merged.changed;
    conversations.unshift(merged);
    const changes = { conversations };
    if (this.state.currentId === conversation.conversationId) changes.current = merged;
    this.update(changes);
  }

  patchConversation(conversationId, fields) {
    const known = this.state.conversations.find((c) => c.conversationId === conversationId);
    if (known) {
      this.upsertConversation({ ...known, ...fields });
    } else if (this.state.currentId === conversationId && this.state.current) {
      this.update({ current: { ...this.state.current, ...fields } });
    }
  }

  removeConversation(conversationId) {
    const conversations = this.state.conversations.filter(
      (c) => c.conversationId !== conversationId,
    );
    const changes = { conversations };
    if (this.state.currentId === conversationId) {
      Object.assign(changes, { currentId: null, current: null, messages: [] });
    }
    this.update(changes);
  }

  // Current conversation and its messages.

  openConversation(conversationId) {
    // Until the load completes, the view shows the list's copy, never the previous one.
    const listed = this.state.conversations.find((c) => c.conversationId === conversationId);
    this.update({
      currentId: conversationId,
      current: listed || null,
      messages: [],
      interims: [],
      turnMetrics: {},
      pendingReplies: 0,
      memoryContext: null,
      recordings: [],
      recordingsFor: null,
      loading: true,
    });
  }

  closeConversation() {
    this.update({
      currentId: null,
      current: null,
      messages: [],
      interims: [],
      turnMetrics: {},
      pendingReplies: 0,
      memoryContext: null,
      recordings: [],
      recordingsFor: null,
    });
  }

  applyMemoryContext(data) {
    if (data.conversationId !== this.state.currentId) return;
    this.update({ memoryContext: data });
  }

  applyLoaded({ conversation, messages, hasMoreMessages }) {
    if (conversation.conversationId !== this.state.currentId) return;
    this.upsertConversation(conversation);
    let merged = this.state.messages;
    for (const message of messages) merged = mergeMessage(merged, message);
    this.update({ current: conversation, messages: merged, hasMoreMessages, loading: false });
  }

  applyMessage(data) {
    const { conversationId } = data;
    const createdAt = data.createdAt || new Date().toISOString();
    this.patchConversation(conversationId, {
      lastMessageAt: createdAt,
      messageCount: Math.max(data.sequenceNumber || 0, this.messageCountOf(conversationId)),
    });
    if (conversationId !== this.state.currentId) return;
    const message = { chunks: [], metadata: {}, ...data, createdAt };
    let { pendingReplies, interims } = this.state;
    if (data.role === 'user' && !(data.metadata && data.metadata.unanswered)) {
      pendingReplies += 1;
    } else if (data.role === 'assistant' && !(data.metadata && data.metadata.opening)) {
      pendingReplies = Math.max(0, pendingReplies - 1);
    }
    // The learner's speech now shows as their message, so its live transcript goes in the
    // same render.
    if (data.role === 'user' && data.metadata && data.metadata.inputMethod === 'voice') {
      interims = withoutHeard(interims, message.content);
    }
    this.update({
      messages: mergeMessage(this.state.messages, message), pendingReplies, interims,
    });
  }

  // A transcript:interim replaces the line of its utterance. A final one with no words ends
  // the utterance without a message, so its line goes.
  applyInterim(data) {
    if (data.conversationId !== this.state.currentId) return;
    const { utteranceId, text, final, audioMs } = data;
    const others = this.state.interims.filter((known) => known.utteranceId !== utteranceId);
    if (final && !text) {
      this.update({ interims: others });
      return;
    }
    const interims = [...others, { utteranceId, text, final, audioMs }]
      .sort((a, b) => a.utteranceId - b.utteranceId)
      .slice(-MAX_INTERIMS);
    this.update({ interims });
  }

  clearInterims() {
    if (this.state.interims.length > 0) this.update({ interims: [] });
  }

  // message:interrupted comes just before the reply's final message:received. Applying it
  // shows the cut at once, and still shows it when the call ends before that message.
  applyInterrupted(data) {
    if (data.conversationId !== this.state.currentId) return;
    const known = this.state.messages.find((m) => m.messageId === data.messageId);
    if (!known) return;
    const { conversationId, messageId, content, ...interruption } = data;
    const metadata = { ...known.metadata, status: 'interrupted', interruption };
    const message = { ...known, conversationId, messageId, content, metadata };
    this.update({ messages: mergeMessage(this.state.messages, message) });
  }

  applyTurnMetrics(data) {
    if (data.conversationId !== this.state.currentId) return;
    this.update({ turnMetrics: { ...this.state.turnMetrics, [data.messageId]: data } });
  }

  messageCountOf(conversationId) {
    const known = this.state.conversations.find((c) => c.conversationId === conversationId);
    return known ? known.messageCount || 0 : 0;
  }

  // An assistant message is built chunk by chunk until its message:received arrives.
  applyChunk(data) {
    if (data.conversationId !== this.state.currentId) return;
    const messages = [...this.state.messages];
    let index = messages.findIndex((m) => m.messageId === data.messageId);
    if (index === -1) {
      messages.push({
        messageId: data.messageId,
        conversationId: data.conversationId,
        role: 'assistant',
        content: '',
        sequenceNumber: null,
        metadata: { status: 'generating' },
        chunks: [],
      });
      index = messages.length - 1;
    }
    const message = messages[index];
    const chunk = { ...data };
    delete chunk.conversationId;
    messages[index] = { ...message, chunks: upsertChunk(message.chunks, chunk) };
    this.update({ messages });
  }

  applyChunkAudio(data) {
    if (data.conversationId !== this.state.currentId) return;
    const messages = this.state.messages.map((message) => {
      if (message.messageId !== data.messageId) return message;
      const chunks = message.chunks.map((chunk) => {
        if (chunk.chunkId !== data.chunkId) return chunk;
        return {
          ...chunk,
          audioUrl: data.audioUrl,
          audioFileId: data.audioFileId,
          audioDuration: data.duration,
          ttsStatus: 'completed',
        };
      });
      return { ...message, chunks };
    });
    this.update({ messages });
  }

  setAudio(changes) {
    this.update({ audio: { ...this.state.audio, ...changes } });
  }

  setCall(changes) {
    this.update({ call: { ...this.state.call, ...changes } });
  }

  // Recorded calls.

  setRecordings(conversationId, recordings) {
    if (conversationId !== this.state.currentId) return;
    // A list read while a call runs shows its recording, which this page may have missed
    // the recording:started of (after a reload, for example).
    const running = recordings.find((recording) => recording.status === 'recording');
    const active = this.state.activeRecordings[conversationId];
    const changes = { recordings, recordingsFor: conversationId };
    if (running && !active) {
      changes.activeRecordings = {
        ...this.state.activeRecordings,
        [conversationId]: { conversationId, recordingId: running.id, callId: running.callId },
      };
    }
    this.update(changes);
  }

  removeRecording(recordingId) {
    const recordings = this.state.recordings.filter((recording) => recording.id !== recordingId);
    this.update({ recordings });
  }

  startRecording(data) {
    const activeRecordings = { ...this.state.activeRecordings, [data.conversationId]: data };
    this.update({ activeRecordings });
  }

  // Forget the running recording of a conversation: the one named, or any when the
  // recordingId is null (the page's own call into that conversation ended).
  stopRecording(conversationId, recordingId = null) {
    const active = this.state.activeRecordings[conversationId];
    if (!active || (recordingId !== null && active.recordingId !== recordingId)) return;
    const activeRecordings = { ...this.state.activeRecordings };
    delete activeRecordings[conversationId];
    this.update({ activeRecordings });
  }
}

// Return the interims without the one that became a message with this content: the final
// one with the same text, else the oldest final one. Without a final one, no utterance is
// known to be transcribed yet, so all stay.
function withoutHeard(interims, content) {
  const finals = interims.filter((interim) => interim.final);
  const transcribed = finals.find((interim) => interim.text === content) || finals[0];
  return transcribed ? interims.filter((interim) => interim !== transcribed) : interims;
}

// Insert or replace a message by messageId, keeping sequenceNumber order. A message still
// being generated has no sequenceNumber yet and stays after the numbered ones.
function mergeMessage(messages, message) {
  const next = messages.filter((known) => known.messageId !== message.messageId);
  const previous = messages.find((known) => known.messageId === message.messageId);
  const merged = previous ? { ...previous, ...message } : message;
  if (previous && previous.chunks && message.chunks) {
    let chunks = previous.chunks;
    for (const chunk of message.chunks) chunks = upsertChunk(chunks, chunk);
    merged.chunks = chunks;
  }
  next.push(merged);
  return next.sort(compareMessages);
}

function compareMessages(a, b) {
  const left = a.sequenceNumber === null ? Infinity : a.sequenceNumber;
  const right = b.sequenceNumber === null ? Infinity : b.sequenceNumber;
  return left - right;
}

function upsertChunk(chunks, chunk) {
  const previous = chunks.find((known) => known.chunkId === chunk.chunkId);
  const next = chunks.filter((known) => known.chunkId !== chunk.chunkId);
  next.push(previous ? { ...previous, ...chunk } : chunk);
  return next.sort((a, b) => a.chunkIndex - b.chunkIndex);
}

// True when a's updatedAt is later than b's. The server writes both as ISO 8601 in UTC, so
// Date.parse compares them exactly; a missing time never wins.
function isNewer(a, b) {
  const first = Date.parse(a.updatedAt);
  const second = Date.parse(b.updatedAt);
  return Number.isFinite(first) && (!Number.isFinite(second) || first > second);
}
