// Tickets (限时办结): the inspector's queue of incidents in their department or owner scope,
// earliest deadline first, with live countdowns. A ticket turns yellow when its deadline is
// close and red (督办, supervised) when a deadline passed or was missed.

import { api } from '../api.js';
import { countdown, deadlineUrgency, errorText, FINAL_STATES, h, label, levelBadge, replaceChildren, stateBadge, trackBusy } from '../dom.js';
import { onEvent } from '../events.js';
import { t } from '../i18n.js';
import { newer, statusButtons } from './shared.js';

const AWAITING_DISPATCH = new Set(['open', 'acknowledged']);

/** The deadline a ticket is racing now: dispatch until dispatched, then resolution. */
function activeDeadlines(ticket) {
  const deadlines = ticket.deadlines ?? {};
  const active = [];
  if (AWAITING_DISPATCH.has(ticket.state) && deadlines.dispatch_by) active.push(deadlines.dispatch_by);
  if (ticket.state !== 'resolved' && deadlines.resolve_by) active.push(deadlines.resolve_by);
  return active;
}

function earliestDeadline(ticket) {
  const times = activeDeadlines(ticket).map(Date.parse).filter((time) => !Number.isNaN(time));
  return times.length ? Math.min(...times) : Infinity;
}

/** 'overdue' (red, 督办), 'close' (yellow) or 'ok'. */
export function ticketUrgency(ticket, now = Date.now()) {
  if ((ticket.missed ?? []).length > 0) return 'overdue';
  const urgencies = activeDeadlines(ticket).map((deadline) => deadlineUrgency(deadline, ticket.first_seen, now));
  if (urgencies.includes('overdue')) return 'overdue';
  return urgencies.includes('close') ? 'close' : 'ok';
}

export function mount(container) {
  const controller = new AbortController();
  const tickets = new Map();
  const status = h('p', { class: 'muted' }, t('common.loading'));
  const body = h('tbody', { testid: 'ticket-list' });
  const table = h('table', { class: 'table tickets', hidden: true },
    h('caption', { class: 'visually-hidden' }, t('tickets.caption')),
    h('thead', {}, h('tr', {}, ['level', 'incident', 'state', 'dispatchBy', 'resolveBy', 'actions']
      .map((column) => h('th', { scope: 'col' }, t(`tickets.column.${column}`))))),
    body);

  container.append(
    h('h1', { tabindex: '-1', class: 'page-title' }, t('tickets.title')),
    h('section', { class: 'panel', 'aria-labelledby': 'tickets-heading' },
      h('h2', { id: 'tickets-heading', class: 'visually-hidden' }, t('tickets.title')),
      h('p', { class: 'muted' }, t('tickets.explain')),
      status, h('div', { class: 'table-scroll' }, table)));

  function deadlineCell(ticket, which) {
    const deadline = ticket.deadlines?.[which];
    if (!deadline) return h('td', {}, '–');
    const done = which === 'dispatch_by' ? !AWAITING_DISPATCH.has(ticket.state) : ticket.state === 'resolved';
    if (done) return h('td', { class: 'muted' }, t('tickets.met'));
    return h('td', {}, countdown(deadline, ticket.first_seen, which === 'dispatch_by' ? 'countdown-dispatch' : 'countdown-resolve'));
  }

  function row(ticket) {
    const urgency = ticketUrgency(ticket);
    return h('tr', {
      class: `ticket-row urgency-row-${urgency}`, testid: 'ticket-row',
      dataset: { incidentId: ticket.id, urgency, state: ticket.state },
    },
    h('td', {}, levelBadge(ticket.level)),
    h('td', {},
      h('a', { href: `#/incidents/${encodeURIComponent(ticket.id)}` }, label('category', ticket.category)),
      h('br'),
      h('span', { class: 'muted' }, `${t('common.grid')} ${ticket.grid} · ${label('department', ticket.department)}`),
      urgency === 'overdue' && h('span', { class: 'badge supervised', testid: 'supervised' }, t('tickets.supervised'))),
    h('td', {}, stateBadge(ticket.state)),
    deadlineCell(ticket, 'dispatch_by'),
    deadlineCell(ticket, 'resolve_by'),
    h('td', {}, statusButtons(ticket)));
  }

  function render() {
    const sorted = [...tickets.values()].sort((a, b) => earliestDeadline(a) - earliestDeadline(b));
    status.hidden = sorted.length > 0;
    status.textContent = t('tickets.empty');
    table.hidden = sorted.length === 0;
    // Keep the keyboard focus on the same ticket's control across a re-render.
    const focused = document.activeElement;
    const focusedTicket = body.contains(focused) ? focused.closest('tr')?.dataset.incidentId : null;
    const focusedStatus = focused?.dataset?.status;
    replaceChildren(body, sorted.map(row));
    if (focusedTicket) {
      const rowElement = [...body.rows].find((candidate) => candidate.dataset.incidentId === focusedTicket);
      (rowElement?.querySelector(`[data-status="${focusedStatus}"]`) ?? rowElement?.querySelector('a'))?.focus();
    }
  }

  // Colours follow the clock, not only events: re-evaluate each row's urgency every 5 s.
  const urgencyTimer = setInterval(() => {
    for (const element of body.querySelectorAll('tr[data-incident-id]')) {
      const ticket = tickets.get(element.dataset.incidentId);
      if (ticket && ticketUrgency(ticket) !== element.dataset.urgency) {
        element.replaceWith(row(ticket));
      }
    }
  }, 5000);

  async function load() {
    try {
      const { tickets: list } = await api.tickets(controller.signal);
      tickets.clear();
      list.forEach((ticket) => tickets.set(ticket.id, ticket));
      render();
    } catch (error) {
      if (error.name !== 'AbortError') status.textContent = errorText(error);
    }
  }

  // Events are scoped by the server to what this user may read, which for inspectors is
  // their queue; final incidents leave it.
  function onIncident(incident) {
    if (FINAL_STATES.has(incident.state)) tickets.delete(incident.id);
    else tickets.set(incident.id, newer(tickets.get(incident.id), incident));
    render();
  }

  const unsubscribers = [onEvent('incident', onIncident), onEvent('resync', load)];
  trackBusy(container, load());
  return () => {
    controller.abort();
    clearInterval(urgencyTimer);
    unsubscribers.forEach((unsubscribe) => unsubscribe());
  };
}
