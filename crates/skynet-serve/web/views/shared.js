// Pieces that several views show: the acknowledge and status buttons, and the rules of
// which status an incident may move to next.

import { api } from '../api.js';
import { errorText, FINAL_STATES, h, notify } from '../dom.js';
import { emitLocal } from '../events.js';
import { t } from '../i18n.js';
import { can } from '../session.js';

/** The statuses a person may set next from `state` (the server checks the same). */
export function nextStatuses(state) {
  switch (state) {
    case 'open':
    case 'acknowledged':
      return ['dispatched', 'resolved', 'rejected'];
    case 'dispatched':
      return ['resolved', 'rejected'];
    case 'resolved':
      return ['verified', 'rejected'];
    default:
      return [];
  }
}

export function canAcknowledge(incident) {
  return can('incidents.ack') && incident.state === 'open' && !incident.acknowledged;
}

/** Runs a mutating call that answers {incident}, and shares the answer with every view. */
async function update(button, action) {
  button.disabled = true;
  try {
    const { incident } = await action();
    emitLocal('incident', incident);
    return incident;
  } catch (error) {
    notify(errorText(error), 'error');
    button.disabled = false;
    return null;
  }
}

export function ackButton(incident) {
  if (!canAcknowledge(incident)) return null;
  return h('button', {
    type: 'button', class: 'button button-primary', testid: 'ack-button',
    dataset: { incidentId: incident.id },
    'aria-label': t('action.ackIncident', { grid: incident.grid }),
    onclick: (event) => update(event.currentTarget, () => api.acknowledge(incident.id)),
  }, t('action.ack'));
}

export function statusButtons(incident) {
  if (!can('incidents.status') || FINAL_STATES.has(incident.state)) return null;
  return h('span', { class: 'button-row' }, nextStatuses(incident.state).map((status) =>
    h('button', {
      type: 'button',
      class: `button status-button ${status === 'rejected' ? 'button-danger' : ''}`,
      testid: 'status-button',
      dataset: { status, incidentId: incident.id },
      onclick: (event) => update(event.currentTarget, () => api.setStatus(incident.id, status)),
    }, t(`action.status.${status}`))));
}

/** Keeps the newest revision: events may arrive after the answer of our own call. */
export function newer(current, candidate) {
  if (!current) return candidate;
  return (candidate.revision ?? 0) >= (current.revision ?? 0) ? candidate : current;
}
