// Recordings: the REST routes and events of recorded calls, kept in the store for the view.
//
// The list of the open conversation's recordings is read again when the conversation opens
// and at each recording:started and recording:stopped. Between those two events the
// conversation has a call being recorded, which the page shows.

export class Recordings {
  constructor({ store, token, replayView }) {
    this.store = store;
    this.token = token;
    this.replayView = replayView;
    // Responses to list requests can arrive out of order, so only the newest is applied.
    this.listRequestNumber = 0;
  }

  register(eventBus) {
    eventBus.on('recording:started', ({ data }) => {
      this.store.startRecording(data);
      this.refreshIfOpen(data.conversationId);
    });
    eventBus.on('recording:stopped', ({ data }) => {
      this.store.stopRecording(data.conversationId, data.recordingId);
      this.refreshIfOpen(data.conversationId);
    });
  }

  refreshIfOpen(conversationId) {
    if (conversationId && conversationId === this.store.state.currentId) {
      this.refresh(conversationId);
    }
  }

  async refresh(conversationId) {
    const requestNumber = ++this.listRequestNumber;
    try {
      const body = await this.fetchJson(`/api/conversations/${conversationId}/recordings`);
      if (requestNumber !== this.listRequestNumber) return;
      this.store.setRecordings(conversationId, body.recordings || []);
    } catch (error) {
      this.store.setError(`loading the recordings failed: ${error.message}`);
    }
  }

  async replay(recordingId) {
    try {
      const recording = await this.fetchJson(`/api/recordings/${recordingId}`);
      this.replayView.show(recording, this.fileUrl(recordingId, 'audio'));
      this.replayView.play();
    } catch (error) {
      this.store.setError(`loading the recording failed: ${error.message}`);
    }
  }

  async remove(recordingId) {
    let response;
    try {
      response = await fetch(`/api/recordings/${recordingId}`, {
        method: 'DELETE',
        headers: this.headers(),
      });
    } catch (error) {
      this.store.setError(`deleting the recording failed: ${error.message}`);
      return;
    }
    if (!response.ok && response.status !== 404) {
      const body = await response.json().catch(() => ({}));
      this.store.setError(`deleting the recording failed: ${errorText(body, response)}`);
      return;
    }
    // A 404 means it is gone already, which is what the user asked for.
    if (this.replayView.isShowing(recordingId)) this.replayView.close();
    this.store.removeRecording(recordingId);
  }

  // The audio and export routes take the token in the URL, since neither an <audio>
  // element nor a download link can send an Authorization header.
  fileUrl(recordingId, route) {
    return `/api/recordings/${recordingId}/${route}?token=${encodeURIComponent(this.token)}`;
  }

  headers() {
    return { Authorization: `Bearer ${this.token}` };
  }

  async fetchJson(path) {
    const response = await fetch(path, { headers: this.headers() });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(errorText(body, response));
    return body;
  }
}

function errorText(body, response) {
  if (body.error) return body.code ? `${body.error} (${body.code})` : body.error;
  return `HTTP ${response.status}`;
}
