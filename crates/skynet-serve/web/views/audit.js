// Audit (admins): who did what, when, with the value before and after. Filters go to the
// server (actor, action), so the table shows the newest matching entries.

import { api } from '../api.js';
import { errorText, h, label, replaceChildren, timeElement, trackBusy } from '../dom.js';
import { t } from '../i18n.js';

const LIMIT = 200;

function compact(value) {
  if (value == null) return '–';
  return h('code', { class: 'json' }, typeof value === 'string' ? value : JSON.stringify(value));
}

export function mount(container) {
  let controller = new AbortController();
  const actor = h('input', { id: 'audit-actor', name: 'actor', testid: 'audit-actor', autocomplete: 'off' });
  const action = h('input', { id: 'audit-action', name: 'action', testid: 'audit-action', autocomplete: 'off' });
  const status = h('p', { class: 'muted', role: 'status' }, t('common.loading'));
  const body = h('tbody', { testid: 'audit-rows' });

  container.append(
    h('h1', { tabindex: '-1', class: 'page-title' }, t('audit.title')),
    h('section', { class: 'panel', 'aria-labelledby': 'audit-heading' },
      h('h2', { id: 'audit-heading', class: 'visually-hidden' }, t('audit.title')),
      h('form', { class: 'filters', testid: 'audit-filter-form', role: 'search', onsubmit: (event) => { event.preventDefault(); load(); } },
        h('div', { class: 'field' }, h('label', { for: 'audit-actor' }, t('audit.actor')), actor),
        h('div', { class: 'field' }, h('label', { for: 'audit-action' }, t('audit.action')), action),
        h('button', { type: 'submit', class: 'button button-primary', testid: 'audit-filter' }, t('action.filter'))),
      status,
      h('div', { class: 'table-scroll' }, h('table', { class: 'table audit' },
        h('caption', { class: 'visually-hidden' }, t('audit.title')),
        h('thead', {}, h('tr', {}, ['at', 'actor', 'role', 'action', 'target', 'before', 'after']
          .map((column) => h('th', { scope: 'col' }, t(`audit.column.${column}`))))),
        body))));

  async function load() {
    controller.abort();
    controller = new AbortController();
    status.textContent = t('common.loading');
    try {
      const { entries } = await api.audit({ actor: actor.value.trim(), action: action.value.trim(), limit: LIMIT }, controller.signal);
      status.textContent = entries.length === 0 ? t('audit.empty') : t('audit.count', { count: entries.length });
      replaceChildren(body, entries.map((entry) => h('tr', { testid: 'audit-row', dataset: { auditId: entry.id } },
        h('td', {}, timeElement(entry.at)),
        h('td', {}, entry.actor ?? '–'),
        h('td', {}, label('role', entry.role)),
        h('td', {}, entry.action),
        h('td', {}, entry.target ?? '–'),
        h('td', {}, compact(entry.before)),
        h('td', {}, compact(entry.after)))));
    } catch (error) {
      if (error.name !== 'AbortError') status.textContent = errorText(error);
    }
  }

  trackBusy(container, load());
  return () => controller.abort();
}
