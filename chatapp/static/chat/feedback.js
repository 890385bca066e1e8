/* Thumbs up and down on a finished answer, and the optional comment after a thumbs down. */
import { config } from './config.js';
import { announce, h, icon } from './dom.js';
import { t } from './i18n.js';
import { thread, ui } from './thread.js';
import { callApi } from './transport.js';
import { session } from './conversation.js';

/** The turn id in a stream URL (…/api/chat/<id>/events?t=…). */
export function turnIdOf(streamUrl) {
  return /\/chat\/([A-Za-z0-9_-]+)\/events/.exec(streamUrl ?? '')?.[1] ?? null;
}

/**
 * Thumbs up and down on each finished answer ([data-chatapp-feedback],
 * aria-pressed), and after a thumbs down an optional comment. A later
 * rating replaces the earlier one, on the server as here.
 */
export const feedback = {
  attach(answer, turnId) {
    const actions = answer.node.querySelector('[data-chatapp-actions]');
    if (!actions || actions.querySelector('[data-chatapp-feedback]')) return;
    const buttons = {};
    for (const rating of ['up', 'down']) {
      buttons[rating] = h(
        'button',
        {
          type: 'button',
          class: 'btn btn--icon btn--subtle',
          'data-chatapp-feedback': rating,
          'aria-pressed': 'false',
          'aria-label': t(`feedback.${rating}`),
          title: t(`feedback.${rating}`),
        },
        icon(rating === 'up' ? 'thumbUp' : 'thumbDown'),
      );
      buttons[rating].addEventListener('click', () => this.rate(answer, turnId, rating, buttons));
    }
    // Before Copy, so that Copy stays one Shift+Tab from the message box.
    answer.copy.before(buttons.up, buttons.down);
  },

  async rate(answer, turnId, rating, buttons, comment = undefined) {
    const before = { up: buttons.up.getAttribute('aria-pressed'), down: buttons.down.getAttribute('aria-pressed') };
    for (const [name, button] of Object.entries(buttons)) button.setAttribute('aria-pressed', String(name === rating));
    if (rating === 'down' && comment === undefined) this.askComment(answer, turnId, buttons);
    else if (rating === 'up') answer.node.querySelector('[data-chatapp-feedback-form]')?.remove();
    try {
      await this.send(turnId, comment ? { rating, comment } : { rating });
      if (comment !== undefined) announce(t('feedback.thanks'));
    } catch {
      for (const [name, button] of Object.entries(buttons)) button.setAttribute('aria-pressed', before[name]);
      announce(t('feedback.failed'));
    }
  },

  send(turnId, body) {
    return session.authorised((token) => callApi(`${config.api}/chat/${encodeURIComponent(turnId)}/feedback`, {
      method: 'POST',
      headers: { 'X-Chat-Token': token },
      json: body,
    }));
  },

  askComment(answer, turnId, buttons) {
    if (answer.node.querySelector('[data-chatapp-feedback-form]')) return;
    const id = `chatapp-feedback-${turnId}`;
    const field = h('textarea', { id, class: 'feedback__field', rows: '2', maxlength: '1000' });
    const form = h(
      'form',
      { class: 'feedback', 'data-chatapp-feedback-form': true },
      h('label', { class: 'feedback__label', for: id, text: t('feedback.comment_label') }),
      field,
      h('button', { type: 'submit', class: 'btn btn--small', text: t('feedback.send') }),
    );
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const comment = field.value.trim();
      form.remove();
      if (comment) this.rate(answer, turnId, 'down', buttons, comment);
      else announce(t('feedback.thanks'));
      ui.input.focus({ preventScroll: true });
    });
    thread.follow(() => answer.node.append(form));
  },
};
