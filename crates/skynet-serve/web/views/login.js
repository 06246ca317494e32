// The login form. The server answers with the user and sets the HttpOnly session cookie;
// the token in the body is not kept (JavaScript never needs it).

import { api } from '../api.js';
import { h } from '../dom.js';
import { t } from '../i18n.js';

let loggedIn = () => {};

export function onLoggedIn(handler) {
  loggedIn = handler;
}

export function mount(container) {
  const error = h('p', { class: 'form-error', testid: 'login-error', role: 'alert', hidden: true });
  const username = h('input', {
    id: 'login-username', name: 'username', testid: 'login-username',
    autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false',
  });
  const password = h('input', {
    id: 'login-password', name: 'password', type: 'password', testid: 'login-password',
    autocomplete: 'current-password', required: true,
  });
  const submit = h('button', { type: 'submit', class: 'button button-primary', testid: 'login-submit' }, t('login.submit'));

  async function onSubmit(event) {
    event.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    try {
      const { user } = await api.login(username.value.trim(), password.value);
      password.value = '';
      loggedIn(user);
    } catch (failure) {
      error.textContent = failure.status === 401 ? t('login.invalid')
        : failure.status === 429 ? t('error.rateLimited', { seconds: failure.retryAfter ?? '?' })
          : failure.status ? t('error.server', { status: failure.status, message: failure.message })
            : t('error.network');
      error.hidden = false;
      password.select();
    } finally {
      submit.disabled = false;
    }
  }

  container.append(h('section', { class: 'panel login' },
    h('h1', { tabindex: '-1' }, t('login.title')),
    h('form', { testid: 'login-form', onsubmit: onSubmit },
      h('div', { class: 'field' }, h('label', { for: 'login-username' }, t('login.username')), username),
      h('div', { class: 'field' }, h('label', { for: 'login-password' }, t('login.password')), password),
      error,
      submit)));
  username.focus();
}
