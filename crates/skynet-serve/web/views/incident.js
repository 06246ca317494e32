// Incident detail: what happened and why (evidence snapshots and clips, the contributions the fusion
// rests on), where it stands (level, state, deadlines) and what people did (the timeline),
// with the actions the user may take.

import { api } from '../api.js';
import { countdown, errorText, formatNumber, h, label, levelBadge, notify, replaceChildren, stateBadge, timeElement, trackBusy } from '../dom.js';
import { onEvent } from '../events.js';
import { t } from '../i18n.js';
import { can } from '../session.js';
import { ackButton, statusButtons } from './shared.js';

export function mount(container, { params }) {
  const incidentId = params[0];
  const controller = new AbortController();
  const content = h('div', { testid: 'incident-detail' }, h('p', { class: 'muted' }, t('common.loading')));
  const title = h('h1', { tabindex: '-1', class: 'page-title' }, t('incident.title'));
  container.append(h('p', {}, h('a', { href: '#/live' }, `← ${t('nav.live')}`)), title, content);
  let noteDraft = '';

  function fact(term, value) {
    return [h('dt', {}, term), h('dd', {}, value ?? '–')];
  }

  function deadline(incident, which, done) {
    const value = incident.deadlines?.[which];
    if (!value) return '–';
    if (done) return [timeElement(value), ' ', h('span', { class: 'muted' }, t('tickets.met'))];
    return [timeElement(value), ' ', countdown(value, incident.first_seen, which === 'dispatch_by' ? 'countdown-dispatch' : 'countdown-resolve')];
  }

  function summary(incident) {
    const dispatched = !['open', 'acknowledged'].includes(incident.state);
    const resolved = ['resolved', 'verified', 'rejected', 'closed'].includes(incident.state);
    return h('section', { class: 'panel', 'aria-labelledby': 'summary-heading' },
      h('h2', { id: 'summary-heading' }, t('incident.summary')),
      h('div', { class: 'incident-head' }, levelBadge(incident.level), stateBadge(incident.state),
        (incident.missed ?? []).length > 0 && h('span', { class: 'badge supervised' }, t('tickets.supervised'))),
      h('dl', { class: 'facts' },
        fact(t('incident.category'), label('category', incident.category)),
        fact(t('common.grid'), incident.grid),
        fact(t('common.district'), incident.district),
        fact(t('map.department'), label('department', incident.department)),
        fact(t('incident.owner'), label('owner', incident.owner)),
        fact(t('incident.device'), incident.camera ?? incident.sensor),
        fact(t('incident.rule'), incident.rule ? `${incident.rule.name} (${label('ruleKind', incident.rule.kind)})` : null),
        fact(t('incident.score'), `${formatNumber(incident.risk_score)} · ${t('incident.confidence')} ${formatNumber(incident.confidence)}`),
        fact(t('incident.observations'), String(incident.observations ?? '–')),
        fact(t('incident.firstSeen'), timeElement(incident.first_seen)),
        fact(t('incident.lastSeen'), timeElement(incident.last_seen)),
        fact(t('tickets.column.dispatchBy'), deadline(incident, 'dispatch_by', dispatched)),
        fact(t('tickets.column.resolveBy'), deadline(incident, 'resolve_by', resolved)),
        (incident.missed ?? []).length > 0 && fact(t('incident.missed'), incident.missed.map((missed) => label('deadline', missed)).join(', ')),
        incident.assignee && fact(t('incident.assignee'), incident.assignee),
        fact(t('incident.acknowledged'), incident.acknowledged
          ? [incident.acknowledged.by, ' · ', timeElement(incident.acknowledged.at)] : t('incident.notAcknowledged'))),
      h('div', { class: 'button-row' }, ackButton(incident), statusButtons(incident)));
  }

  // A clip's player is kept across reloads of the page (each change of the incident), so
  // playing it is not interrupted: the same <video> is put back.
  const players = new Map(); // evidence URL -> <video>

  function clipPlayer(url, item, incident) {
    let video = players.get(url);
    if (!video) {
      // Seekable: the evidence route answers byte ranges.
      video = h('video', {
        src: url, controls: true, preload: 'metadata', playsinline: true, muted: true, testid: 'evidence-clip',
        width: item.width ?? 416, height: item.height ?? 312,
        'aria-label': t('incident.clipAlt', { camera: item.camera ?? incident.camera ?? '', time: item.start ?? '' }),
      });
      players.set(url, video);
    }
    return video;
  }

  function evidence(incident) {
    const urls = incident.evidence_urls ?? [];
    if (urls.length === 0) return null;
    return h('section', { class: 'panel', 'aria-labelledby': 'evidence-heading' },
      h('h2', { id: 'evidence-heading' }, t('incident.evidence')),
      h('div', { class: 'evidence' }, urls.map((url, index) => {
        const item = incident.evidence?.[index] ?? {};
        if (item.kind === 'clip' || url.endsWith('.mp4')) {
          return h('figure', { class: 'evidence-clip' },
            clipPlayer(url, item, incident),
            h('figcaption', {}, t('incident.clip'), ' · ', item.camera ?? '', ' · ', timeElement(item.start ?? item.frame_at),
              item.duration_s != null ? ` · ${t('incident.clipSeconds', { seconds: formatNumber(item.duration_s, 1) })}` : ''));
        }
        return h('figure', {},
          h('img', {
            src: url, testid: 'evidence-image', loading: 'lazy', width: item.width ?? null, height: item.height ?? null,
            alt: t('incident.evidenceAlt', { camera: item.camera ?? incident.camera ?? '', time: item.frame_at ?? '' }),
          }),
          h('figcaption', {}, item.camera ?? '', ' · ', timeElement(item.frame_at)));
      })));
  }

  function contributions(incident) {
    const rows = incident.contributions ?? [];
    return h('section', { class: 'panel', 'aria-labelledby': 'contributions-heading' },
      h('h2', { id: 'contributions-heading' }, t('incident.contributions')),
      h('p', { class: 'muted' }, t('incident.contributionsExplain')),
      rows.length === 0 ? h('p', { class: 'muted' }, t('map.none')) : h('div', { class: 'table-scroll' }, h('table', { class: 'table' },
        h('thead', {}, h('tr', {}, ['at', 'source', 'category', 'weight', 'confidence', 'count']
          .map((column) => h('th', { scope: 'col' }, t(`incident.column.${column}`))))),
        h('tbody', {}, rows.map((row) => h('tr', { testid: 'contribution-row' },
          h('td', {}, timeElement(row.at)),
          h('td', {}, `${label('sourceKind', row.source?.kind)} ${row.source?.id ?? ''}`),
          h('td', {}, label('category', row.category)),
          h('td', {}, formatNumber(row.weight)),
          h('td', {}, formatNumber(row.confidence)),
          h('td', {}, String(row.count ?? '–'))))))));
  }

  function timelineText(entry) {
    const parts = [];
    if (entry.kind === 'system') {
      parts.push(label('change', entry.change));
      if (entry.level) parts.push(t(`level.${entry.level}`));
      if (entry.state) parts.push(label('state', entry.state));
    } else if (entry.kind === 'status') {
      parts.push(t('incident.statusTo', { state: label('state', entry.state) }));
      // Whom it is assigned to, beside (never instead of) who made the change.
      if (entry.assignee) parts.push(`${t('incident.assignee')}: ${entry.assignee}`);
    } else if (entry.kind === 'ack') {
      parts.push(t('incident.acked'));
    }
    if (entry.text) parts.push(entry.text);
    return parts.join(' · ');
  }

  function timeline(entries) {
    return h('section', { class: 'panel', 'aria-labelledby': 'timeline-heading' },
      h('h2', { id: 'timeline-heading' }, t('incident.timeline')),
      h('ol', { class: 'timeline', testid: 'timeline' }, entries.map((entry) =>
        h('li', { class: `timeline-entry kind-${entry.kind}`, testid: 'timeline-entry', dataset: { kind: entry.kind } },
          timeElement(entry.at), ' ',
          h('span', { class: 'badge kind' }, label('timelineKind', entry.kind)), ' ',
          entry.actor && h('strong', {}, entry.actor), entry.actor && ': ',
          timelineText(entry)))),
      can('incidents.note') && noteForm());
  }

  function noteForm() {
    const textarea = h('textarea', {
      id: 'note-text', name: 'text', rows: 3, required: true, maxlength: 2000, testid: 'note-text',
      oninput: () => { noteDraft = textarea.value; },
    });
    textarea.value = noteDraft;
    const submit = h('button', { type: 'submit', class: 'button button-primary', testid: 'note-submit' }, t('incident.addNote'));
    return h('form', {
      class: 'note-form', testid: 'note-form',
      onsubmit: async (event) => {
        event.preventDefault();
        const text = textarea.value.trim();
        if (!text) return;
        submit.disabled = true;
        try {
          await api.addNote(incidentId, text);
          noteDraft = '';
          textarea.value = '';
          notify(t('incident.noteAdded'));
          await load();
        } catch (error) {
          notify(errorText(error), 'error');
        } finally {
          submit.disabled = false;
        }
      },
    }, h('label', { for: 'note-text' }, t('incident.note')), textarea, submit);
  }

  async function load() {
    try {
      const { incident, timeline: entries } = await api.incident(incidentId, controller.signal);
      title.textContent = `${label('category', incident.category)} · ${incident.grid}`;
      document.title = `${title.textContent} · ${t('app.title')}`;
      const typingNote = document.activeElement?.id === 'note-text';
      replaceChildren(content, summary(incident), evidence(incident), contributions(incident), timeline(entries ?? []));
      if (typingNote) document.getElementById('note-text')?.focus();
    } catch (error) {
      if (error.name === 'AbortError') return;
      replaceChildren(content, h('p', { class: 'form-error', role: 'alert' },
        error.status === 404 ? t('incident.notFound') : errorText(error)));
    }
  }

  // Any change of this incident (ours or someone else's) brings new timeline entries.
  let reloadTimer = null;
  function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(load, 300);
  }
  const unsubscribers = [
    onEvent('incident', (incident) => { if (incident.id === incidentId) scheduleReload(); }),
    onEvent('resync', scheduleReload),
  ];
  trackBusy(container, load());
  return () => {
    controller.abort();
    clearTimeout(reloadTimer);
    unsubscribers.forEach((unsubscribe) => unsubscribe());
  };
}
