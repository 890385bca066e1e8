/* The chat page's entry module (of / and /embed): what a widget's host page asks, the pieces wired together, start-up. */
import { h } from './dom.js';
import { initEmbed } from './embed.js';
import { thread, ui } from './thread.js';
import { activeTurn, conversation } from './conversation.js';
import { composer } from './composer.js';
import { followUps } from './followups.js';
import { undo } from './undo.js';
import { startTurn, stop } from './turns.js';
import { newChat } from './newchat.js';
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

// ---------------------------------------------------------------- wiring

// Imports only go down (see docs/ui.md); what a lower module must call above
// it is handed to it here.
composer.onSend((text, editing) => followUps.send(text, editing));
composer.onStop(stop);
composer.onUpdate(() => followUps.updateRegenerate());
followUps.onStart(startTurn);
conversation.onChange(() => dataControls.update());

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
