// A minimal call page: one peer connection, the server's audio, and its events.
const statusLine = document.getElementById('status');
const logBox = document.getElementById('log');
const messages = document.getElementById('messages');
const callButton = document.getElementById('call');
const hangUpButton = document.getElementById('hangup');
let pc = null;
let microphone = null;

function log(text, isError = false) {
  const line = document.createElement('div');
  line.textContent = text;
  if (isError) line.className = 'error';
  logBox.appendChild(line);
}

function showEvent(event) {
  if (event.type === 'message:received') {
    const line = document.createElement('p');
    line.textContent = `${event.data.role}: ${event.data.content}`;
    messages.appendChild(line);
  } else if (event.type === 'chunk:generated') {
    log(`${event.data.icon} ${event.data.text}`);
  } else if (event.type === 'conversation:error') {
    log(`error ${event.data.code}: ${event.data.error}`, true);
  }
}

function createPeerConnection() {
  const connection = new RTCPeerConnection({ iceServers: [] });
  connection.addEventListener('connectionstatechange', () => {
    statusLine.textContent = connection.connectionState;
    log(`connection -> ${connection.connectionState}`);
  });
  connection.addEventListener('track', (event) => {
    document.getElementById('remote').srcObject = event.streams[0] || new MediaStream([event.track]);
  });
  const channel = connection.createDataChannel('events');
  channel.addEventListener('message', (event) => showEvent(JSON.parse(event.data)));
  return connection;
}

async function negotiate(connection) {
  await connection.setLocalDescription(await connection.createOffer());
  // Wait for ICE gathering so the offer carries every candidate.
  if (connection.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      connection.addEventListener('icegatheringstatechange', () => {
        if (connection.iceGatheringState === 'complete') resolve();
      });
    });
  }
  const token = document.getElementById('token').value.trim();
  sessionStorage.setItem('parleyToken', token);
  const response = await fetch('/api/rtc/offer', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
    body: JSON.stringify({ sdp: connection.localDescription.sdp, type: 'offer' }),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`${answer.code}: ${answer.error}`);
  await connection.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  log(`conversation ${answer.conversationId}`);
}

async function call() {
  callButton.disabled = true;
  try {
    microphone = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    log(`microphone unavailable: ${error.message}`, true);
    callButton.disabled = false;
    return;
  }
  pc = createPeerConnection();
  microphone.getTracks().forEach((track) => pc.addTrack(track, microphone));
  try {
    await negotiate(pc);
    hangUpButton.disabled = false;
  } catch (error) {
    log(`call failed: ${error.message}`, true);
    hangUp();
  }
}

function hangUp() {
  if (pc) pc.close();
  if (microphone) microphone.getTracks().forEach((track) => track.stop());
  pc = null;
  microphone = null;
  statusLine.textContent = 'idle';
  callButton.disabled = false;
  hangUpButton.disabled = true;
}

callButton.addEventListener('click', call);
hangUpButton.addEventListener('click', hangUp);

document.getElementById('token').value = sessionStorage.getItem('parleyToken') || '';
