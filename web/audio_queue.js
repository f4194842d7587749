// AudioQueueManager: plays the chunk audio of replies outside a call, one queue per speaker.
//
// A speaker's queue plays its replies one after another and each reply's chunks in
// chunkIndex order. It waits for a chunk's audio when the audio is not ready yet, waits the
// chunk's `pause` seconds after it, and prefetches the next chunk while one plays. Every
// start and end is appended to `window.parleyPlayback` as {chunkId, event, at}.

const playbackLog = [];
window.parleyPlayback = playbackLog;

class SpeakerQueue {
  constructor(manager, speaker) {
    this.manager = manager;
    this.speaker = speaker;
    this.replies = [];
    this.current = null;
    this.pauseTimer = null;
    this.audioByChunkId = new Map();
    // Replies the user stopped: chunks that arrive for them later are not played.
    this.stoppedMessageIds = new Set();
  }

  replyFor(messageId) {
    let reply = this.replies.find((known) => known.messageId === messageId);
    if (!reply) {
      reply = { messageId, chunks: new Map(), nextIndex: 0, chunkCount: null };
      this.replies.push(reply);
    }
    return reply;
  }

  hasReply(messageId) {
    return this.replies.some((known) => known.messageId === messageId);
  }

  addChunk(messageId, chunk) {
    if (this.stoppedMessageIds.has(messageId)) return;
    const reply = this.replyFor(messageId);
    const known = reply.chunks.get(chunk.chunkIndex) || {};
    reply.chunks.set(chunk.chunkIndex, { ...known, ...chunk });
    this.pump();
  }

  setChunkAudio(messageId, chunkId, audioUrl) {
    const reply = this.replies.find((known) => known.messageId === messageId);
    if (!reply) return;
    for (const chunk of reply.chunks.values()) {
      if (chunk.chunkId === chunkId) chunk.audioUrl = audioUrl;
    }
    this.prefetch();
    this.pump();
  }

  failChunk(chunkId) {
    for (const reply of this.replies) {
      for (const chunk of reply.chunks.values()) {
        if (chunk.chunkId === chunkId) chunk.failed = true;
      }
    }
    this.pump();
  }

  // Called at the reply's final message:received. The chunk count is then known, so a chunk
  // without audio (speak false, failed synthesis) is skipped instead of waited for.
  finishReply(messageId, chunks) {
    const reply = this.replies.find((known) => known.messageId === messageId);
    if (!reply) return;
    for (const chunk of chunks) {
      const known = reply.chunks.get(chunk.chunkIndex) || {};
      reply.chunks.set(chunk.chunkIndex, { ...known, ...chunk, audioUrl: chunk.audioUrl });
    }
    reply.chunkCount = chunks.length;
    this.prefetch();
    this.pump();
  }

  // Start the next chunk when nothing plays and nothing waits.
  pump() {
    if (this.current || this.pauseTimer || this.manager.paused) return;
    const reply = this.replies[0];
    if (!reply) {
      this.manager.reportIdle(this.speaker);
      return;
    }
    if (reply.chunkCount !== null && reply.nextIndex >= reply.chunkCount) {
      this.replies.shift();
      this.pump();
      return;
    }
    const chunk = reply.chunks.get(reply.nextIndex);
    if (!chunk) return;
    const finished = reply.chunkCount !== null;
    if (chunk.failed || (finished && !chunk.audioUrl)) {
      reply.nextIndex += 1;
      this.pump();
      return;
    }
    if (!chunk.audioUrl) return;
    reply.nextIndex += 1;
    this.play(chunk);
  }

  play(chunk) {
    const audio = this.audioFor(chunk);
    audio.muted = this.manager.muted;
    this.current = { chunk, audio };
    this.prefetch();
    let done = false;
    const finish = (event) => {
      if (done) return;
      done = true;
      this.manager.record(chunk.chunkId, event);
      this.audioByChunkId.delete(chunk.chunkId);
      this.current = null;
      this.manager.reportPlaying(null);
      this.waitPause(chunk.pause || 0);
    };
    audio.addEventListener('playing', () => {
      this.manager.record(chunk.chunkId, 'start');
      this.manager.reportPlaying(chunk.chunkId);
    }, { once: true });
    audio.addEventListener('ended', () => finish('end'), { once: true });
    audio.addEventListener('error', () => finish('error'), { once: true });
    this.current.skip = () => {
      audio.pause();
      finish('end');
    };
    audio.play().catch((error) => {
      this.manager.reportError(`audio of chunk ${chunk.chunkId} did not play: ${error.message}`);
      finish('error');
    });
  }

  waitPause(pauseSeconds) {
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = null;
      this.pump();
    }, pauseSeconds * 1000);
  }

  audioFor(chunk) {
    let audio = this.audioByChunkId.get(chunk.chunkId);
    if (!audio) {
      audio = new Audio(this.manager.urlFor(chunk.audioUrl));
      audio.preload = 'auto';
      this.audioByChunkId.set(chunk.chunkId, audio);
    }
    return audio;
  }

  // Load the next chunk's audio while the current one plays.
  prefetch() {
    const reply = this.replies[0];
    if (!reply || !this.current) return;
    const next = reply.chunks.get(reply.nextIndex);
    if (next && next.audioUrl && !next.failed) this.audioFor(next).load();
  }

  skip() {
    if (this.current) {
      this.current.skip();
    } else if (this.pauseTimer) {
      clearTimeout(this.pauseTimer);
      this.pauseTimer = null;
      this.pump();
    }
  }

  stop() {
    clearTimeout(this.pauseTimer);
    this.pauseTimer = null;
    for (const reply of this.replies) this.stoppedMessageIds.add(reply.messageId);
    this.replies = [];
    if (this.current) this.current.skip();
    for (const audio of this.audioByChunkId.values()) audio.removeAttribute('src');
    this.audioByChunkId.clear();
  }
}

export class AudioQueueManager {
  constructor({ token, onChange = () => {}, onError = () => {} }) {
    this.token = token;
    this.onChange = onChange;
    this.onError = onError;
    this.queues = new Map();
    this.muted = false;
    this.paused = false;
    this.playback = playbackLog;
  }

  queue(speaker) {
    if (!this.queues.has(speaker)) this.queues.set(speaker, new SpeakerQueue(this, speaker));
    return this.queues.get(speaker);
  }

  urlFor(audioUrl) {
    return `${audioUrl}?token=${encodeURIComponent(this.token)}`;
  }

  addChunk(speaker, messageId, chunk) {
    this.queue(speaker).addChunk(messageId, chunk);
  }

  setChunkAudio(speaker, messageId, chunkId, audioUrl) {
    this.queue(speaker).setChunkAudio(messageId, chunkId, audioUrl);
  }

  failChunk(chunkId) {
    for (const queue of this.queues.values()) queue.failChunk(chunkId);
  }

  finishReply(speaker, messageId, chunks) {
    const queue = this.queues.get(speaker);
    if (queue && queue.hasReply(messageId)) queue.finishReply(messageId, chunks);
  }

  // Play stored replies again, in the order given, with each chunk's pause after it. Audio
  // playing now stops first. Replies the user stopped before may play again.
  replay(speaker, replies) {
    this.stop();
    if (this.paused) this.setPaused(false);
    const queue = this.queue(speaker);
    // The stopped chunk's pause would only delay the first replayed chunk.
    clearTimeout(queue.pauseTimer);
    queue.pauseTimer = null;
    for (const { messageId, chunks } of replies) {
      queue.stoppedMessageIds.delete(messageId);
      for (const chunk of chunks) queue.addChunk(messageId, { ...chunk });
      queue.finishReply(messageId, chunks);
    }
  }

  setMuted(muted) {
    this.muted = muted;
    for (const queue of this.queues.values()) {
      if (queue.current) queue.current.audio.muted = muted;
    }
    this.onChange({ muted });
  }

  setPaused(paused) {
    this.paused = paused;
    for (const queue of this.queues.values()) {
      if (!queue.current) {
        if (!paused) queue.pump();
        continue;
      }
      if (paused) {
        queue.current.audio.pause();
      } else {
        queue.current.audio.play().catch((error) => this.reportError(error.message));
      }
    }
    this.onChange({ paused });
  }

  skip() {
    for (const queue of this.queues.values()) queue.skip();
  }

  stop() {
    for (const queue of this.queues.values()) queue.stop();
    this.onChange({ playingChunkId: null });
  }

  record(chunkId, event) {
    this.playback.push({ chunkId, event, at: performance.now() });
  }

  reportPlaying(chunkId) {
    this.onChange({ playingChunkId: chunkId });
  }

  reportIdle() {
    this.onChange({ playingChunkId: null });
  }

  reportError(message) {
    this.onError(message);
  }
}
