// ConversationUI: renders the store into the page and turns user input into actions.
// All server text goes into the page as text nodes, except search snippets, whose <mark>
// tags are kept after everything else has been escaped.
import { renderInterim, renderMessage } from './message_view.js';

const STATUS_TARGETS = {
  active: ['paused', 'completed'],
  paused: ['active', 'completed'],
  completed: ['archived'],
  archived: [],
};

export class ConversationUI {
  constructor(store, actions) {
    this.store = store;
    this.actions = actions;
    this.element = (id) => document.getElementById(id);
    this.scrolledToChunkId = null;
    this.bindInputs();
    store.subscribe((state) => this.render(state));
  }

  bindInputs() {
    const { actions } = this;
    this.element('sign-in').addEventListener('submit', (event) => {
      event.preventDefault();
      actions.signIn(this.element('token').value.trim());
    });
    this.element('sign-out').addEventListener('click', () => actions.signOut());

    this.element('new-conversation').addEventListener('submit', (event) => {
      event.preventDefault();
      actions.createConversation(this.element('new-title').value.trim(),
        this.element('new-level').value);
      this.element('new-title').value = '';
    });

    this.element('search').addEventListener('submit', (event) => {
      event.preventDefault();
      const query = this.element('search-query').value.trim();
      if (query) actions.search(query);
    });

    this.element('composer').addEventListener('submit', (event) => {
      event.preventDefault();
      const box = this.element('message-text');
      const content = box.value.trim();
      if (!content) return;
      actions.sendMessage(content).then((sent) => {
        if (sent) box.value = '';
      });
    });
    this.element('message-text').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey) {
        event.preventDefault();
        this.element('composer').requestSubmit();
      }
    });

    for (const button of this.element('status-controls').querySelectorAll('button')) {
      button.addEventListener('click', () => actions.setStatus(button.dataset.status));
    }
    this.element('memory-strategy').addEventListener('change', (event) => {
      actions.setMemoryStrategy(event.target.value);
    });

    this.element('mute').addEventListener('click', () => actions.toggleMute());
    this.element('pause-audio').addEventListener('click', () => actions.togglePauseAudio());
    this.element('skip').addEventListener('click', () => actions.skipAudio());
    this.element('stop-audio').addEventListener('click', () => actions.stopAudio());
    this.element('replay-conversation').addEventListener('click', () => {
      actions.replayConversation();
    });

    this.element('call').addEventListener('click', () => {
      actions.startCall(this.element('raw-audio').checked);
    });
    this.element('hang-up').addEventListener('click', () => actions.hangUp());
  }

  render(state) {
    this.renderHeader(state);
    this.renderList(state);
    this.renderSearch(state);
    this.renderConversation(state);
    this.renderMessages(state);
    this.renderLive(state);
    this.renderLog(state);
  }

  renderHeader(state) {
    const signedIn = Boolean(state.userName);
    this.element('sign-in').hidden = signedIn;
    this.element('app').hidden = !signedIn;
    this.element('sign-out').hidden = !signedIn;
    this.element('user-name').textContent = signedIn ? `signed in as ${state.userName}` : '';
    const badge = this.element('connection');
    badge.dataset.state = state.connection;
    badge.textContent = state.connection === 'open' ? 'connected' : state.connection;
    const error = this.element('error');
    error.hidden = !state.error;
    error.textContent = state.error;
  }

  renderList(state) {
    const list = this.element('conversation-list');
    list.replaceChildren(...state.conversations.map((conversation) => {
      const item = document.createElement('li');
      item.dataset.conversationId = conversation.conversationId;
      if (conversation.conversationId === state.currentId) item.className = 'selected';
      const title = document.createElement('strong');
      title.textContent = conversation.title;
      const meta = document.createElement('div');
      meta.className = 'meta';
      const lastMessage = conversation.lastMessageAt
        ? `last message ${formatTime(conversation.lastMessageAt)}` : 'no messages yet';
      meta.textContent = `${conversation.level} · ${conversation.status} · ${lastMessage}`;
      item.append(title, meta);
      item.addEventListener('click', () => this.actions.openConversation(
        conversation.conversationId));
      return item;
    }));
  }

  renderSearch(state) {
    const box = this.element('search-results');
    if (!state.searchResults) {
      box.replaceChildren();
      return;
    }
    const { query, results } = state.searchResults;
    if (results.length === 0) {
      box.textContent = `No results for "${query}".`;
      return;
    }
    box.replaceChildren(...results.map((result) => {
      const line = document.createElement('div');
      const title = document.createElement('strong');
      title.textContent = `${result.conversationTitle}: `;
      const snippet = document.createElement('span');
      snippet.innerHTML = markedSnippetHtml(result.snippet);
      line.append(title, snippet);
      line.addEventListener('click', () => this.actions.openConversation(result.conversationId));
      return line;
    }));
  }

  renderConversation(state) {
    const { current } = state;
    this.element('no-conversation').hidden = Boolean(current);
    this.element('conversation-title').textContent = current ? current.title : '';
    this.element('conversation-meta').textContent = current
      ? `${current.level} · ${current.status}${state.loading ? ' · loading…' : ''}` : '';
    const allowed = current ? STATUS_TARGETS[current.status] || [] : [];
    for (const button of this.element('status-controls').querySelectorAll('button')) {
      button.hidden = !allowed.includes(button.dataset.status);
    }
    const open = current && (current.status === 'active' || current.status === 'paused');
    this.element('send').disabled = !open && Boolean(current);
    const inCall = state.call.state !== 'idle';
    this.element('call').hidden = inCall;
    this.element('hang-up').hidden = !inCall;
    this.element('call').disabled = Boolean(current) && !open;
    this.renderMemory(state);
    this.element('call-state').textContent = inCall
      ? `call: ${state.call.state}, received ${state.call.bytesReceived} bytes of audio` : '';
  }

  renderMemory(state) {
    const { current, memoryContext } = state;
    this.element('memory-controls').hidden = !current;
    const select = this.element('memory-strategy');
    const strategy = current && current.settings ? current.settings.memoryStrategy : null;
    if (strategy && select.value !== strategy) select.value = strategy;
    // The tokens the last reply's prompt took, of its budget.
    const count = memoryContext ? memoryContext.messageCount : 0;
    this.element('memory-state').textContent = memoryContext
      ? `last prompt ${memoryContext.tokenCount}/${memoryContext.tokenBudget} tokens, `
        + `${count} ${count === 1 ? 'message' : 'messages'} (${memoryContext.strategy})`
      : '';
  }

  renderMessages(state) {
    const playing = state.audio.playingChunkId;
    const items = state.messages.map((message) => renderMessage(
      message, playing, state.turnMetrics[message.messageId]));
    items.push(...state.interims.map(renderInterim));
    this.element('messages').replaceChildren(...items);
    if (playing && playing !== this.scrolledToChunkId) {
      const current = this.element('messages').querySelector('li.is-current');
      if (current) current.scrollIntoView({ block: 'nearest' });
    }
    this.scrolledToChunkId = playing;
  }

  renderLive(state) {
    const live = this.store.liveState();
    const label = this.element('live-state');
    label.dataset.state = live;
    label.textContent = live;
    this.element('mute').textContent = state.audio.muted ? 'Unmute' : 'Mute';
    this.element('pause-audio').textContent = state.audio.paused ? 'Resume audio' : 'Pause audio';
    // During a call the tutor speaks on the call's track, so a replay would talk over it.
    const spoken = state.messages.some((message) => message.role === 'assistant'
      && (message.chunks || []).some((chunk) => chunk.audioUrl));
    this.element('replay-conversation').disabled = !spoken || state.call.state !== 'idle';
  }

  renderLog(state) {
    const log = this.element('log');
    if (log.childElementCount === state.log.length) return;
    log.replaceChildren(...state.log.map((entry) => {
      const line = document.createElement('li');
      line.textContent = `${entry.time} ${entry.text}`;
      if (entry.isError) line.className = 'error';
      return line;
    }));
  }
}

export function escapeHtml(text) {
  return String(text)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

// Escape the whole snippet, then turn only the escaped <mark> and </mark> back into tags.
export function markedSnippetHtml(snippet) {
  return escapeHtml(snippet)
    .replaceAll('&lt;mark&gt;', '<mark>')
    .replaceAll('&lt;/mark&gt;', '</mark>');
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString();
}
