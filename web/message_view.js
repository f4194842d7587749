// Builds the list items of the conversation. A reply's item shows its chunks, marks the part
// of a cut reply that the caller never heard and ends with the reply's latency line. Each
// utterance that the server is still transcribing gets an item of its own.

const INTERRUPTION_REASONS = {
  'barge-in': 'you cut in',
  'call-ended': 'the call ended',
  cancelled: 'cancelled',
};

// Stages of turn:metrics after the leading total, with their labels, in pipeline order.
const LATENCY_STAGES = [
  ['endOfTurnWait', 'turn end'],
  ['stt', 'STT'],
  ['llmFirstToken', 'LLM'],
  ['ttsFirstAudio', 'TTS'],
];
const LATENCY_TITLE = 'answered in: from the end of your speech to the first audio of the reply;'
  + ' first chunk in: from the start of the model to the first chunk of text;'
  + ' turn end: silence waited for before the turn ended; STT: transcription;'
  + ' LLM: the model\'s first token; TTS: synthesis of the first chunk';

export function renderMessage(message, playingChunkId, turnMetrics) {
  const item = document.createElement('li');
  item.className = message.role;
  item.dataset.messageId = message.messageId;
  // The reply being heard, live or replayed, is the current item.
  if (playingChunkId && (message.chunks || []).some((c) => c.chunkId === playingChunkId)) {
    item.classList.add('is-current');
    item.setAttribute('aria-current', 'true');
  }
  item.append(roleLabel(message));
  if (message.role === 'assistant' && message.chunks && message.chunks.length > 0) {
    item.append(...replyChunks(message, playingChunkId));
  } else {
    item.append(document.createTextNode(message.content));
  }
  const latency = message.role === 'assistant' ? latencyLine(message, turnMetrics) : null;
  if (latency) item.append(latency);
  return item;
}

// The live transcript of an utterance, shown where the learner's message will appear.
export function renderInterim(interim) {
  const item = document.createElement('li');
  item.className = 'interim';
  item.dataset.utteranceId = interim.utteranceId;
  item.dataset.final = String(interim.final);
  const label = document.createElement('span');
  label.className = 'role';
  label.textContent = interim.final ? 'you (heard)' : 'you (hearing…)';
  item.append(label, document.createTextNode(interim.final ? interim.text : `…${interim.text}`));
  return item;
}

function roleLabel(message) {
  const role = document.createElement('span');
  role.className = 'role';
  const metadata = message.metadata || {};
  const method = metadata.inputMethod === 'voice' ? ' (voice)' : '';
  const status = metadata.status;
  let statusText = status && status !== 'completed' ? ` · ${status}` : '';
  if (status === 'interrupted' && metadata.interruption) {
    statusText += `: ${interruptionText(metadata.interruption)}`;
  }
  role.textContent = `${message.role}${method}${statusText}`;
  return role;
}

function interruptionText({ reason, heardMs }) {
  const cause = INTERRUPTION_REASONS[reason] || reason;
  if (!isNumber(heardMs)) return cause;
  if (heardMs === 0) return `${cause} before any of it was heard`;
  return `${cause} after ${(heardMs / 1000).toFixed(1)} s of it`;
}

// The ✂ mark goes where the caller stopped hearing the reply: inside the first chunk that
// was not spoken in full. Everything after it is set apart as never heard.
function replyChunks(message, playingChunkId) {
  const playouts = chunkPlayouts(message);
  let marked = false;
  return message.chunks.map((chunk, index) => {
    const playout = playouts[index];
    const heardInFull = !playout || playout.status === 'spoken';
    const withMark = !heardInFull && !marked;
    if (withMark) marked = true;
    return renderChunk(chunk, playingChunkId, heardInFull ? null : playout, withMark);
  });
}

// Returns how the caller heard each chunk, or null for a chunk not played in a call. The
// final message:received gives each chunk its playout. Until it comes, and when the call
// ends before it, message:interrupted is the source: chunks before the stop were spoken, the
// stop chunk was heard as far as the message content goes, and later chunks were not spoken.
function chunkPlayouts(message) {
  const { chunks } = message;
  if (chunks.some((chunk) => chunk.playout)) return chunks.map((chunk) => chunk.playout || null);
  const metadata = message.metadata || {};
  const interruption = metadata.interruption;
  if (metadata.status !== 'interrupted' || !interruption) return chunks.map(() => null);

  const stop = interruption.chunkIndex;
  const spoken = chunks.filter((chunk) => chunk.chunkIndex < stop).map((chunk) => chunk.text);
  const heardText = message.content.slice(spoken.join(' ').length).trim();
  return chunks.map((chunk) => {
    if (chunk.chunkIndex < stop) return { status: 'spoken', heardText: chunk.text };
    if (chunk.chunkIndex > stop || !heardText) return { status: 'unspoken', heardText: '' };
    return { status: 'cut', heardText };
  });
}

function renderChunk(chunk, playingChunkId, playout = null, withMark = false) {
  const span = document.createElement('span');
  span.className = 'chunk';
  if (chunk.emphasis) span.classList.add('emphasis');
  if (chunk.chunkId === playingChunkId) span.classList.add('playing');
  span.dataset.chunkId = chunk.chunkId;
  span.dataset.chunkIndex = chunk.chunkIndex;
  span.title = `${chunk.emotion || 'neutral'}${chunk.emphasis ? ', emphasised' : ''}`;
  const icon = document.createElement('span');
  icon.className = 'icon';
  icon.textContent = `${chunk.icon || '💬'} `;
  span.append(icon);
  if (!playout) {
    span.append(...emphasisNodes(chunk.text));
    return span;
  }

  span.dataset.playout = playout.status;
  const text = String(chunk.text);
  const heardLength = playout.status === 'cut' ? heardPrefixLength(text, playout.heardText) : 0;
  span.append(...emphasisNodes(text.slice(0, heardLength)));
  if (withMark) {
    const mark = document.createElement('span');
    mark.className = 'cut-mark';
    mark.textContent = '✂';
    mark.title = 'you stopped hearing the reply here';
    span.append(mark);
  }
  const unheard = document.createElement('span');
  unheard.className = 'unheard';
  unheard.append(...emphasisNodes(text.slice(heardLength).trimStart()));
  span.append(unheard);
  return span;
}

// The server's heard text is the chunk's first words joined by single spaces. Return where
// the same number of words ends in the chunk's own text.
function heardPrefixLength(text, heardText) {
  const count = String(heardText || '').split(/\s+/).filter(Boolean).length;
  if (count === 0) return 0;
  const words = [...text.matchAll(/\S+/g)];
  const last = words[Math.min(count, words.length) - 1];
  return last ? last.index + last[0].length : 0;
}

// Text between *stars* is shown in <em>; the server strips most stars, so this is a fallback.
function emphasisNodes(text) {
  const parts = String(text).split(/\*([^*]+)\*/);
  return parts.map((part, index) => {
    if (index % 2 === 0) return document.createTextNode(part);
    const em = document.createElement('em');
    em.textContent = part;
    return em;
  });
}

// The reply's turn:metrics, or after a reload the same stages stored in its metadata.
function latencyLine(message, turnMetrics) {
  const stages = turnMetrics ? turnMetrics.stagesMs : (message.metadata || {}).timingsMs;
  if (!stages) return null;
  const parts = latencyParts(stages, turnMetrics || {});
  if (parts.length === 0) return null;
  const line = document.createElement('div');
  line.className = 'latency';
  if (turnMetrics) line.dataset.source = turnMetrics.source;
  line.textContent = parts.join(' · ');
  line.title = LATENCY_TITLE;
  return line;
}

// A reply without firstAudioSent leads with its first chunk instead: a text reply sends no
// audio on a call's track, and a call reply stored before its first audio went out has none.
function latencyParts(stages, { source, endOfTurn, earlyTranscript }) {
  const parts = [];
  if (isNumber(stages.firstAudioSent)) {
    parts.push(`answered in ${Math.round(stages.firstAudioSent)} ms`);
  } else if (isNumber(stages.firstChunkReady)) {
    parts.push(`first chunk in ${Math.round(stages.firstChunkReady)} ms`);
  }
  for (const [key, label] of LATENCY_STAGES) {
    const value = stages[key];
    if (!isNumber(value) || (isSpeechStage(key) && !isSpeech(source) && value < 0.5)) continue;
    let part = `${label} ${Math.round(value)}`;
    if (key === 'endOfTurnWait' && endOfTurn) part += ` (${endOfTurn.replace('_', ' ')})`;
    if (key === 'stt' && earlyTranscript) part += ' (early)';
    parts.push(part);
  }
  return parts;
}

// Text turns have no speech, so their end-of-turn and STT stages take 0 ms and are left out.
// The source is unknown after a reload, so there any 0 ms speech stage is left out. A call's
// STT of 0 ms means that the early transcript was ready when the turn ended.
function isSpeechStage(key) {
  return key === 'endOfTurnWait' || key === 'stt';
}

function isSpeech(source) {
  return source === 'call' || source === 'voice';
}

function isNumber(value) {
  return typeof value === 'number' && Number.isFinite(value);
}
