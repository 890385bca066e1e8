/* The chat page's entry module (of / and /embed): what a widget's host page asks, and start-up. */
import { h } from './dom.js';
import { initEmbed } from './embed.js';
import { thread, ui } from './thread.js';
import { activeTurn, startTurn } from './turns.js';
import { composer } from './composer.js';
import { undo, newChat } from './newchat.js';
import { followUps } from './followups.js';
import { dataControls } from './visitordata.js';
import { restoreConversation } from './restore.js';

/** What a widget's host page may ask of the chat (through embed.js). */
const host = {
  ask(text) {
    if (typeof text !== 'string' || !text.trim()) return;
    if (activeTurn || !composer.canSendNow()) {
      this.prefill(text);
      return;
    }
    startTurn(text.trim()); // too long: refused and handed back like a typed one
  },

  prefill(text) {
    if (typeof text !== 'string') return;
    ui.input.value = text;
    composer.update();
    ui.input.focus({ preventScroll: true });
  },

  setup({ greeting, suggestions }) {
    const greetingNode = document.querySelector('[data-chatapp-greeting]');
    if (typeof greeting === 'string' && greeting.trim() && greetingNode) greetingNode.textContent = greeting.trim();
    const box = document.querySelector('[data-chatapp-suggestions]');
    if (!box || !Array.isArray(suggestions)) return;
    const questions = suggestions.filter((q) => typeof q === 'string' && q.trim()).slice(0, 6);
    box.replaceChildren(...questions.map((question) => {
      const button = h('button', { type: 'button', class: 'btn btn--small suggestion', 'data-chatapp-suggestion': true, text: question.trim() });
      button.addEventListener('click', () => this.ask(question));
      return button;
    }));
    box.hidden = questions.length === 0;
  },
};

// ---------------------------------------------------------------- start-up

thread.init();
composer.init();
undo.init();
followUps.init();
dataControls.init();
ui.newChat.addEventListener('click', newChat);
const embedded = initEmbed(host);
restoreConversation().finally(() => {
  // A hook for themes and tests: the page is wired up and any earlier
  // conversation is back on screen.
  ui.form.dataset.ready = 'true';
  embedded?.ready();
});
