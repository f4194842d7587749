// RecordingListView: the open conversation's "Record calls" setting, the indicator of a call
// being recorded, and the list of its recordings with Replay, Export and Delete.

const STATUS_LABELS = {
  recording: 'recording now',
  completed: 'completed',
  interrupted: 'interrupted (the server stopped during the call)',
};

export class RecordingListView {
  constructor(store, actions) {
    this.store = store;
    this.actions = actions;
    this.element = (id) => document.getElementById(id);
    this.renderedRecordings = null;
    this.element('record-calls').addEventListener('change', (event) => {
      actions.setRecordCalls(event.target.checked);
    });
    store.subscribe((state) => this.render(state));
  }

  render(state) {
    this.renderSetting(state);
    this.renderIndicator(state);
    this.renderList(state);
  }

  renderSetting(state) {
    const { current } = state;
    this.element('record-controls').hidden = !current;
    const recordCalls = recordCallsOf(current);
    const box = this.element('record-calls');
    if (box.checked !== recordCalls) box.checked = recordCalls;
  }

  renderIndicator(state) {
    const active = state.currentId ? state.activeRecordings[state.currentId] : null;
    const indicator = this.element('recording-indicator');
    indicator.hidden = !active;
    indicator.dataset.recordingId = active ? active.recordingId || '' : '';
  }

  // Rebuilt only when the list changes, so that a click never lands on a replaced button.
  renderList(state) {
    const section = this.element('recordings');
    section.hidden = !state.current;
    if (state.recordings === this.renderedRecordings) return;
    this.renderedRecordings = state.recordings;
    this.element('no-recordings').hidden = state.recordings.length > 0;
    this.element('recording-list').replaceChildren(
      ...state.recordings.map((recording) => this.renderRecording(recording)),
    );
  }

  renderRecording(recording) {
    const item = document.createElement('li');
    item.dataset.recordingId = recording.id;
    item.dataset.status = recording.status;
    const summary = document.createElement('span');
    summary.className = 'summary';
    const parts = [formatDate(recording.startedAt)];
    // A running recording has no duration yet.
    if (recording.status !== 'recording') parts.push(formatDuration(recording.durationMs));
    parts.push(STATUS_LABELS[recording.status] || recording.status);
    summary.textContent = parts.join(' · ');

    const replay = document.createElement('button');
    replay.type = 'button';
    replay.className = 'replay';
    replay.textContent = 'Replay';
    replay.addEventListener('click', () => this.actions.replayRecording(recording.id));

    const exportLink = document.createElement('a');
    exportLink.className = 'export';
    exportLink.textContent = 'Export';
    exportLink.href = this.actions.recordingExportUrl(recording.id);
    exportLink.download = `parley-recording-${recording.id}.zip`;

    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'delete';
    remove.textContent = 'Delete';
    // The server keeps a recording that is still being written (409 recording_active).
    remove.disabled = recording.status === 'recording';
    remove.addEventListener('click', () => this.actions.deleteRecording(recording.id));

    item.append(summary, replay, exportLink, remove);
    return item;
  }
}

// A conversation records calls unless its recordCalls setting is false: new conversations
// start with it true.
export function recordCallsOf(conversation) {
  const settings = (conversation && conversation.settings) || {};
  return settings.recordCalls !== false;
}

function formatDuration(durationMs) {
  if (typeof durationMs !== 'number' || !Number.isFinite(durationMs)) return 'length unknown';
  const totalSeconds = Math.round(durationMs / 1000);
  const minutes = Math.floor(totalSeconds / 60);
  return `${minutes}:${String(totalSeconds % 60).padStart(2, '0')}`;
}

function formatDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}
