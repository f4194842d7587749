// ReplayView: plays a recorded call and shows its transcript in step with the audio.
//
// Each `transcript` entry of the timeline (the learner) and each `chunk` entry (Parley) is
// one line, ordered by atMs. The line being heard has the class `is-current` and
// aria-current, and each line carries its offsets as data-at-ms and data-end-ms. A chunk's
// emotion icon appears on its line once the audio reaches it, and the icon area shows the
// icon of the chunk playing now. Clicking a line seeks there and plays.

const LINE_TYPES = new Set(['transcript', 'chunk']);

export class ReplayView {
  constructor({ onError = () => {}, onClose = () => {} } = {}) {
    this.onError = onError;
    this.onClose = onClose;
    this.root = document.getElementById('replay');
    this.title = document.getElementById('replay-title');
    this.audio = document.getElementById('replay-audio');
    this.toggle = document.getElementById('replay-toggle');
    this.icon = document.getElementById('replay-icon');
    this.transcript = document.getElementById('replay-transcript');
    this.recording = null;
    this.lines = [];
    this.currentIndex = -1;
    this.frameRequest = null;
    this.bindInputs();
  }

  bindInputs() {
    const { audio } = this;
    // The HTML standard lets timeupdate come as rarely as every 250 ms, so while the audio
    // plays, each animation frame also follows it and the highlight moves with the line.
    audio.addEventListener('timeupdate', () => this.follow());
    audio.addEventListener('seeked', () => this.follow());
    audio.addEventListener('play', () => {
      this.renderToggle();
      this.followFrames();
    });
    audio.addEventListener('pause', () => this.renderToggle());
    audio.addEventListener('ended', () => this.renderToggle());
    audio.addEventListener('error', () => {
      if (!this.recording || !audio.error) return;
      this.onError(`the recording ${this.recording.id} could not be played: `
        + `${audio.error.message || `media error ${audio.error.code}`}`);
    });
    this.toggle.addEventListener('click', () => {
      if (audio.paused) {
        this.play();
      } else {
        audio.pause();
      }
    });
    document.getElementById('replay-close').addEventListener('click', () => this.close());
  }

  // Show a recording, as GET /api/recordings/{id} returns it, and load its audio.
  show(recording, audioUrl) {
    this.recording = recording;
    this.lines = transcriptLines(recording.timeline || []);
    this.currentIndex = -1;
    this.root.hidden = false;
    this.root.dataset.recordingId = recording.id;
    this.root.dataset.status = recording.status;
    this.title.textContent = `Replay of the call of ${formatDate(recording.startedAt)}`;
    const items = this.lines.map((line, index) => this.renderLine(line, index));
    this.transcript.replaceChildren(...items);
    this.icon.textContent = '';
    this.audio.src = audioUrl;
    this.audio.load();
    this.renderToggle();
  }

  close() {
    const wasOpen = this.recording !== null;
    this.recording = null;
    this.lines = [];
    this.currentIndex = -1;
    this.audio.pause();
    this.audio.removeAttribute('src');
    this.audio.load();
    cancelAnimationFrame(this.frameRequest);
    this.transcript.replaceChildren();
    delete this.root.dataset.recordingId;
    this.root.hidden = true;
    if (wasOpen) this.onClose();
  }

  isShowing(recordingId) {
    return this.recording !== null && this.recording.id === recordingId;
  }

  play() {
    this.audio.play().catch((error) => this.onError(`replay did not start: ${error.message}`));
  }

  pause() {
    this.audio.pause();
  }

  seekTo(atMs) {
    this.audio.currentTime = atMs / 1000;
    this.follow();
    this.play();
  }

  renderLine(line, index) {
    const item = document.createElement('li');
    item.className = line.type === 'chunk' ? 'parley' : 'learner';
    item.dataset.index = String(index);
    item.dataset.kind = line.type;
    item.dataset.atMs = String(line.atMs);
    item.dataset.endMs = String(line.endMs);
    const time = document.createElement('span');
    time.className = 'time';
    time.textContent = formatOffset(line.atMs);
    const icon = document.createElement('span');
    icon.className = 'icon';
    if (line.type === 'chunk') {
      icon.title = line.emotion || 'neutral';
      if (line.status === 'cut') item.classList.add('cut');
    }
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = line.text;
    item.append(time, icon, text);
    item.tabIndex = 0;
    item.addEventListener('click', () => this.seekTo(line.atMs));
    item.addEventListener('keydown', (event) => {
      if (event.key !== 'Enter' && event.key !== ' ') return;
      event.preventDefault();
      this.seekTo(line.atMs);
    });
    return item;
  }

  followFrames() {
    cancelAnimationFrame(this.frameRequest);
    const step = () => {
      this.follow();
      if (!this.audio.paused && !this.audio.ended) {
        this.frameRequest = requestAnimationFrame(step);
      }
    };
    this.frameRequest = requestAnimationFrame(step);
  }

  follow() {
    if (!this.recording) return;
    const nowMs = this.audio.currentTime * 1000;
    const items = this.transcript.children;
    this.lines.forEach((line, index) => {
      if (line.type !== 'chunk') return;
      const reached = line.atMs <= nowMs;
      const icon = items[index].querySelector('.icon');
      icon.textContent = reached ? line.icon || '💬' : '';
      items[index].dataset.reached = String(reached);
    });
    this.renderIcon(nowMs);

    const index = currentLineIndex(this.lines, nowMs);
    if (index === this.currentIndex) return;
    if (this.currentIndex >= 0 && items[this.currentIndex]) {
      items[this.currentIndex].classList.remove('is-current');
      items[this.currentIndex].removeAttribute('aria-current');
    }
    this.currentIndex = index;
    this.root.dataset.currentIndex = String(index);
    if (index < 0) return;
    items[index].classList.add('is-current');
    items[index].setAttribute('aria-current', 'true');
    items[index].scrollIntoView({ block: 'nearest' });
  }

  // The icon area shows the chunk heard now, and nothing between chunks.
  renderIcon(nowMs) {
    const playing = this.lines.find(
      (line) => line.type === 'chunk' && line.atMs <= nowMs && nowMs < line.endMs,
    );
    const icon = playing ? playing.icon || '💬' : '';
    if (this.icon.textContent !== icon) this.icon.textContent = icon;
    this.icon.title = playing ? playing.emotion || 'neutral' : '';
    this.icon.dataset.atMs = playing ? String(playing.atMs) : '';
  }

  renderToggle() {
    this.toggle.textContent = this.audio.paused ? 'Play' : 'Pause';
  }
}

// The timeline's transcript and chunk entries as lines, ordered by atMs. The sort is
// stable, so entries with the same atMs keep the timeline's order.
export function transcriptLines(timeline) {
  return timeline
    .filter((entry) => LINE_TYPES.has(entry.type))
    .map((entry) => ({ ...entry, endMs: entry.endMs ?? entry.atMs }))
    .sort((a, b) => a.atMs - b.atMs);
}

// Returns the index of the line whose [atMs, endMs) contains the moment, or the latest to
// start when several do. Between lines it is the last line started, and -1 before the first.
export function currentLineIndex(lines, nowMs) {
  let lastStarted = -1;
  let containing = -1;
  lines.forEach((line, index) => {
    if (line.atMs > nowMs) return;
    lastStarted = index;
    if (nowMs < line.endMs) containing = index;
  });
  return containing >= 0 ? containing : lastStarted;
}

function formatOffset(ms) {
  const totalSeconds = Math.floor(ms / 1000);
  const minutes = Math.floor(totalSeconds / 60);
  const seconds = String(totalSeconds % 60).padStart(2, '0');
  return `${minutes}:${seconds}`;
}

function formatDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}
