// Wires the event bus, the store, the audio queue, the call and the view together.
import { AudioQueueManager } from './audio_queue.js';
import { CallSession } from './call.js';
import { ConversationStore } from './conversation_store.js';
import { ConversationUI } from './conversation_ui.js';
import { EventBus } from './event_bus.js';
import { RecordingListView } from './recording_list_view.js';
import { Recordings } from './recordings.js';
import { ReplayView } from './replay_view.js';

const TOKEN_KEY = 'parleyToken';
const CONVERSATION_KEY = 'parleyConversationId';
const TUTOR = 'tutor';
const LIST_LIMIT = 50;

const store = new ConversationStore();
window.parleyStore = store;

let token = '';
let bus = null;
let audioQueue = null;
let call = null;
let recordings = null;

const actions = {
  signIn,
  signOut,
  openConversation,
  createConversation,
  sendMessage,
  setStatus,
  setMemoryStrategy,
  setRecordCalls,
  replayRecording,
  deleteRecording: (recordingId) => recordings && recordings.remove(recordingId),
  recordingExportUrl: (recordingId) => recordings.fileUrl(recordingId, 'export'),
  replayConversation,
  search,
  startCall,
  hangUp,
  toggleMute: () => audioQueue && audioQueue.setMuted(!store.state.audio.muted),
  togglePauseAudio: () => audioQueue && audioQueue.setPaused(!store.state.audio.paused),
  skipAudio: () => audioQueue && audioQueue.skip(),
  stopAudio: () => audioQueue && audioQueue.stop(),
};

new ConversationUI(store, actions);
new RecordingListView(store, actions);
const replayView = new ReplayView({ onError: (message) => store.setError(message) });

async function signIn(candidate) {
  if (!candidate) {
    store.setError('enter a token first: `parley user create NAME` prints one');
    return;
  }
  let response;
  try {
    response = await fetch('/api/me', { headers: { Authorization: `Bearer ${candidate}` } });
  } catch (error) {
    store.setError(`the server could not be reached: ${error.message}`);
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    sessionStorage.removeItem(TOKEN_KEY);
    store.setError(`sign-in failed: ${body.error || `HTTP ${response.status}`}`);
    return;
  }
  token = candidate;
  sessionStorage.setItem(TOKEN_KEY, token);
  store.update({ userName: body.name, error: '' });
  startBus();
}

function signOut() {
  hangUp();
  if (audioQueue) audioQueue.stop();
  replayView.close();
  if (bus) bus.close();
  bus = null;
  token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(CONVERSATION_KEY);
  store.closeConversation();
  store.update({
    userName: '', conversations: [], searchResults: null, activeRecordings: {}, error: '',
  });
}

function startBus() {
  audioQueue = new AudioQueueManager({
    token,
    onChange: (changes) => store.setAudio(changes),
    onError: (message) => store.addLog(message, true),
  });
  recordings = new Recordings({ store, token, replayView });
  bus = new EventBus({ token });
  registerHandlers(bus);
  recordings.register(bus);
  bus.connect();
}

function registerHandlers(eventBus) {
  let firstOpen = true;
  eventBus.on('bus:state', ({ data }) => {
    store.update({ connection: data.state, connectionDetail: data.detail });
    if (data.previous !== data.state || data.detail) {
      const detail = data.detail ? ` (${data.detail})` : '';
      store.addLog(`websocket ${data.previous} -> ${data.state}${detail}`);
    }
    if (data.state !== 'open') return;
    refreshList();
    const saved = sessionStorage.getItem(CONVERSATION_KEY);
    if (firstOpen && saved) openConversation(saved);
    firstOpen = false;
  });
  eventBus.on('bus:error', ({ data }) => store.setError(data.error));
  registerConversationHandlers(eventBus);
  registerReplyHandlers(eventBus);
  registerTurnHandlers(eventBus);
}

function registerConversationHandlers(eventBus) {
  eventBus.on('conversation:created', ({ data }) => store.upsertConversation(data));
  eventBus.on('conversation:updated', ({ data }) => store.upsertConversation(data));
  eventBus.on('memory:context-updated', ({ data }) => store.applyMemoryContext(data));
  eventBus.on('conversation:loaded', ({ data }) => store.applyLoaded(data));
  eventBus.on('conversation:listed', ({ data }) => store.setConversations(data.conversations));
  eventBus.on('conversation:status-changed', ({ data }) => {
    const { conversationId, status, updatedAt } = data;
    store.patchConversation(conversationId, { status, updatedAt });
  });
  eventBus.on('conversation:deleted', ({ data }) => {
    eventBus.forgetConversation(data.conversationId);
    if (data.conversationId === store.state.currentId) sessionStorage.removeItem(CONVERSATION_KEY);
    store.removeConversation(data.conversationId);
  });
}

function registerReplyHandlers(eventBus) {
  eventBus.on('message:received', ({ data }) => {
    store.applyMessage(data);
    if (data.role === 'assistant') audioQueue.finishReply(TUTOR, data.messageId, data.chunks || []);
  });
  eventBus.on('chunk:generated', ({ data }) => {
    const live = isLiveReply(data);
    store.applyChunk(data);
    if (live) {
      audioQueue.addChunk(TUTOR, data.messageId, {
        chunkId: data.chunkId, chunkIndex: data.chunkIndex, pause: data.pause,
      });
    }
  });
  eventBus.on('chunk:audio-ready', ({ data }) => {
    store.applyChunkAudio(data);
    audioQueue.setChunkAudio(TUTOR, data.messageId, data.chunkId, data.audioUrl);
  });
  eventBus.on('conversation:error', (event) => {
    if (event.data.chunkId) audioQueue.failChunk(event.data.chunkId);
    // An error with a requestId rejects the request that sent it, and its action shows it.
    if (!event.requestId) store.setError(`${event.data.code}: ${event.data.error}`);
  });
}

function registerTurnHandlers(eventBus) {
  eventBus.on('transcript:interim', ({ data }) => store.applyInterim(data));
  eventBus.on('message:interrupted', ({ data }) => store.applyInterrupted(data));
  eventBus.on('turn:metrics', ({ data }) => store.applyTurnMetrics(data));
}

// Only chunks of a reply that is running now are played: a replay after a reconnect also
// carries chunks of replies that were already complete, and a call speaks on its own track.
function isLiveReply(chunk) {
  if (chunk.conversationId !== store.state.currentId) return false;
  if (call && call.conversationId === chunk.conversationId) return false;
  const known = store.state.messages.find((m) => m.messageId === chunk.messageId);
  return !known || known.metadata.status === 'generating';
}

async function refreshList() {
  try {
    const answer = await bus.request('conversation:list', { limit: LIST_LIMIT });
    store.setConversations(answer.data.conversations);
  } catch (error) {
    store.setError(`loading the conversation list failed: ${error.message}`);
  }
}

async function openConversation(conversationId) {
  const previousId = store.state.currentId;
  if (previousId && previousId !== conversationId) {
    audioQueue.stop();
    replayView.close();
    const callOwnsPrevious = call && call.conversationId === previousId;
    if (!callOwnsPrevious) bus.send('conversation:unsubscribe', { conversationId: previousId });
  }
  store.openConversation(conversationId);
  sessionStorage.setItem(CONVERSATION_KEY, conversationId);
  try {
    await bus.loadConversation(conversationId);
    store.update({ error: '' });
    recordings.refresh(conversationId);
  } catch (error) {
    store.update({ loading: false });
    if (error.code === 'not_found') {
      sessionStorage.removeItem(CONVERSATION_KEY);
      store.closeConversation();
    }
    store.setError(`loading the conversation failed: ${error.message}`);
  }
}

async function createConversation(title, level) {
  const data = { level };
  if (title) data.title = title;
  try {
    const answer = await bus.request('conversation:create', data);
    await openConversation(answer.data.conversationId);
  } catch (error) {
    store.setError(`creating the conversation failed: ${error.message}`);
  }
}

async function sendMessage(content) {
  const conversationId = store.state.currentId;
  if (!conversationId) {
    store.setError('pick or create a conversation before sending a message');
    return false;
  }
  try {
    await bus.request('message:send', { conversationId, content });
    store.update({ error: '' });
    return true;
  } catch (error) {
    store.setError(`sending the message failed: ${error.message}`);
    return false;
  }
}

async function setStatus(status) {
  const conversationId = store.state.currentId;
  if (!conversationId) return;
  try {
    await bus.request('conversation:set-status', { conversationId, status });
    store.update({ error: '' });
  } catch (error) {
    store.setError(`changing the status to ${status} failed: ${error.message}`);
  }
}

async function setMemoryStrategy(memoryStrategy) {
  const conversationId = store.state.currentId;
  if (!conversationId) return;
  try {
    await bus.request('conversation:update', { conversationId, memoryStrategy });
    store.update({ error: '' });
  } catch (error) {
    store.setError(`changing the memory strategy failed: ${error.message}`);
  }
}

// One audio plays at a time: the recording replaces any reply the queue is playing.
function replayRecording(recordingId) {
  if (!recordings) return;
  audioQueue.stop();
  recordings.replay(recordingId);
}

async function setRecordCalls(recordCalls) {
  const conversationId = store.state.currentId;
  if (!conversationId) return;
  try {
    await bus.request('conversation:update', { conversationId, recordCalls });
    store.update({ error: '' });
  } catch (error) {
    store.setError(`changing whether calls are recorded failed: ${error.message}`);
  }
}

// Play the stored chunk audio of the open conversation's replies again, oldest first, on
// the queue that plays live replies, so Pause, Skip and Stop act on it too.
function replayConversation() {
  if (!audioQueue) return;
  const replies = store.state.messages
    .filter((message) => message.role === 'assistant' && message.chunks)
    // Every chunk goes to the queue, since it plays them by chunkIndex: it skips a chunk
    // without audio once the reply is finished.
    .map((message) => ({ messageId: message.messageId, chunks: message.chunks }))
    .filter((reply) => reply.chunks.some((chunk) => chunk.audioUrl));
  if (replies.length === 0) {
    store.setError('this conversation has no spoken replies to replay yet');
    return;
  }
  replayView.pause();
  audioQueue.replay(TUTOR, replies);
}

async function search(query) {
  try {
    const answer = await bus.request('conversation:search', { query });
    store.update({ searchResults: answer.data });
  } catch (error) {
    store.setError(`search failed: ${error.message}`);
  }
}

async function startCall(rawAudio) {
  if (call) return;
  audioQueue.stop();
  replayView.pause();
  const session = new CallSession({
    token,
    conversationId: store.state.currentId,
    level: document.getElementById('new-level').value,
    rawAudio,
    remoteAudio: document.getElementById('remote-audio'),
    onState: (changes) => handleCallState(session, changes),
    onChannel: (channel, conversationId) => bus.attachChannel(channel, conversationId),
  });
  call = session;
  try {
    const answer = await session.start();
    store.addLog(`call ${answer.sessionId} into conversation ${answer.conversationId}`);
    if (store.state.currentId !== answer.conversationId) {
      await openConversation(answer.conversationId);
    }
  } catch (error) {
    session.hangUp();
    store.setError(error.message);
  }
}

function handleCallState(session, changes) {
  if (changes.state && changes.state !== store.state.call.state) {
    store.addLog(`call ${store.state.call.state} -> ${changes.state}`);
  }
  if (changes.channel && changes.channel !== store.state.call.channel) {
    store.addLog(`data channel ${store.state.call.channel || 'none'} -> ${changes.channel}`);
  }
  store.setCall(changes);
  if (changes.state === 'idle' && call === session) {
    call = null;
    // NOTE: a reply cut off by the hang-up may never get its final message:received (seen
    // with the server's call teardown), so stop showing "thinking" for it here.
    store.update({ pendingReplies: 0 });
    // A transcript line still shown now may never get its message, so it would stay.
    store.clearInterims();
    // recording:stopped may have been lost with the data channel.
    if (session.conversationId) store.stopRecording(session.conversationId);
    if (bus) bus.detachChannel();
  }
}

function hangUp() {
  if (call) call.hangUp();
}

const savedToken = sessionStorage.getItem(TOKEN_KEY);
if (savedToken) {
  document.getElementById('token').value = savedToken;
  signIn(savedToken);
}
