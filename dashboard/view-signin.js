// Sign-in: the user pastes a bearer token, kept in sessionStorage (gone with the tab).

import { ApiError, api, signIn, signOut } from './api.js';
import { h } from './dom.js';

export function render(main, { notice }) {
  const input = h('textarea', {
    id: 'token',
    rows: 5,
    required: true,
    spellcheck: false,
    autocomplete: 'off',
    'aria-describedby': 'token-help token-error',
    placeholder: 'eyJ0eXAiOiJKV1Qi…',
  });
  const error = h('p', { id: 'token-error', class: 'error', role: 'alert' }, notice ?? '');
  const button = h('button', { type: 'submit' }, 'Sign in');

  const form = h(
    'form',
    { class: 'card signin', onsubmit: submit },
    h('h1', { tabIndex: -1 }, 'Sign in'),
    h('label', { htmlFor: 'token' }, 'Bearer token'),
    input,
    h(
      'div',
      { id: 'token-help', class: 'hint' },
      h('p', {}, 'Paste a token (a JWT with tenant and scope claims). You can use:'),
      h(
        'ul',
        {},
        h('li', {}, 'the one ', h('code', {}, 'conveyor dev'), ' prints at start;'),
        h('li', {}, h('code', {}, 'conveyor token --tenant acme --scope "jobs:write jobs:read events:read admin"'), ' (add ', h('code', {}, 'operator'), ' for projections, consumers and metrics);'),
        h('li', {}, 'with an OpenID Connect provider configured, an access token it issued to you.'),
      ),
      h('p', {}, 'It stays in this tab only and is sent to this server alone.'),
    ),
    error,
    button,
  );
  main.append(form);

  async function submit(e) {
    e.preventDefault();
    const value = input.value.trim().replace(/^Bearer\s+/i, '');
    if (!value) {
      error.textContent = 'Paste a token first.';
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    button.disabled = true;
    error.textContent = '';
    signIn(value);
    try {
      await api('/v1/jobs?limit=1');
    } catch (err) {
      // 403: a valid token without jobs:read (events or admin only) still signs in. A 401 has
      // already signed out, showing the server's reason.
      if (!(err instanceof ApiError && err.status === 403)) {
        if (err.status !== 401) signOut(err.message);
        return;
      }
    } finally {
      button.disabled = false;
    }
    window.dispatchEvent(new Event('conveyor:signed-in'));
  }
}
