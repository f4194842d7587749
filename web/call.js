// CallSession: one WebRTC call to the tutor. The microphone goes up on an audio track, the
// tutor's voice comes back on the remote track, and the "events" data channel carries the
// event protocol for the call's conversation.

const STATS_INTERVAL_MS = 500;

export class MicrophoneError extends Error {
  constructor(message) {
    super(message);
    this.name = 'MicrophoneError';
  }
}

export class CallSession {
  constructor({ token, conversationId, level, rawAudio, remoteAudio, onState, onChannel }) {
    this.token = token;
    this.conversationId = conversationId;
    this.level = level;
    this.rawAudio = rawAudio;
    this.remoteAudio = remoteAudio;
    this.onState = onState;
    this.onChannel = onChannel;
    this.pc = null;
    this.channel = null;
    this.microphone = null;
    this.statsTimer = null;
    this.ended = false;
  }

  async start() {
    this.onState({ state: 'starting' });
    this.microphone = await openMicrophone(this.rawAudio);
    this.pc = this.createPeerConnection();
    window.parleyCall = { pc: this.pc };
    for (const track of this.microphone.getTracks()) this.pc.addTrack(track, this.microphone);

    // The channel must exist before the offer so that the offer contains it.
    this.channel = this.pc.createDataChannel('events');
    this.channel.addEventListener('open', () => this.onState({ channel: 'open' }));
    this.channel.addEventListener('close', () => this.onState({ channel: 'closed' }));

    const answer = await this.negotiate();
    this.conversationId = answer.conversationId;
    this.onChannel(this.channel, answer.conversationId);
    this.onState({ conversationId: answer.conversationId, sessionId: answer.sessionId });
    this.statsTimer = setInterval(() => this.readStats(), STATS_INTERVAL_MS);
    return answer;
  }

  createPeerConnection() {
    // No ICE servers, so no STUN or TURN server is contacted: only host candidates are used.
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.addEventListener('connectionstatechange', () => {
      this.onState({ state: pc.connectionState });
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') this.hangUp();
    });
    pc.addEventListener('track', (event) => {
      this.remoteAudio.srcObject = event.streams[0] || new MediaStream([event.track]);
    });
    return pc;
  }

  async negotiate() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await waitForIceGathering(this.pc);

    const body = { sdp: this.pc.localDescription.sdp, type: 'offer' };
    if (this.conversationId) {
      body.conversationId = this.conversationId;
    } else if (this.level) {
      body.level = this.level;
    }
    const response = await fetch('/api/rtc/offer', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${this.token}` },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) {
      throw new Error(`the call offer was rejected (${answer.code}): ${answer.error}`);
    }
    await this.pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    return answer;
  }

  async readStats() {
    if (!this.pc) return;
    const report = await this.pc.getStats();
    for (const stats of report.values()) {
      if (stats.type !== 'inbound-rtp' || stats.kind !== 'audio') continue;
      this.onState({ bytesReceived: stats.bytesReceived || 0, audioLevel: stats.audioLevel || 0 });
    }
  }

  hangUp() {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.statsTimer);
    if (this.channel) this.channel.close();
    if (this.pc) this.pc.close();
    if (this.microphone) {
      for (const track of this.microphone.getTracks()) track.stop();
    }
    this.remoteAudio.srcObject = null;
    this.onState({ state: 'idle', channel: 'closed', audioLevel: 0 });
  }
}

// Raw audio turns off the browser's echo cancellation, noise suppression and gain
// control, which otherwise mute the first seconds of a fake or studio microphone.
async function openMicrophone(rawAudio) {
  const audio = rawAudio
    ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
    : true;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new MicrophoneError('this browser offers no microphone access on this page ' +
      '(it needs https or localhost); text chat still works');
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio });
  } catch (error) {
    if (error.name === 'NotAllowedError' || error.name === 'SecurityError') {
      throw new MicrophoneError('microphone access was denied, so the call cannot ' +
        'start: allow the microphone in the browser and press Call again. Text chat ' +
        'still works');
    }
    throw new MicrophoneError(`the microphone could not be opened (${error.name}: ` +
      `${error.message}); text chat still works`);
  }
}

// The server does not take trickled candidates, so the offer must carry all of them.
function waitForIceGathering(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState !== 'complete') return;
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    pc.addEventListener('icegatheringstatechange', check);
  });
}
