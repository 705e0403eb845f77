// The Airlock approvals page.
//
// Most text shown here was written by an agent (argv, cwd, program, even session ids), so
// everything is put into the DOM as text nodes (`append(string)`, `textContent`) and
// never parsed as HTML. Characters a person would not see as themselves are shown
// escaped, so the command approved is the command read.
'use strict';

(function () {
  const csrf = document.querySelector('meta[name="airlock-csrf"]').getAttribute('content');
  const byId = (id) => document.getElementById(id);

  /** Pending asks on screen: id -> {card, deadline, countdown}. */
  const cards = new Map();
  /** The server's clock minus ours, for countdowns. */
  let skew = 0;

  /** Makes an element. `props` keys are fixed in this file; `data` sets data-*. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') el.className = v;
      else if (k === 'data') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
      else el.setAttribute(k, v);
    }
    for (const c of children.flat(Infinity)) {
      if (c !== null && c !== undefined) el.append(c); // a string becomes a text node
    }
    return el;
  }

  // Controls (C0, DEL, C1), format characters (bidi overrides, zero widths), separators
  // other than the plain space, private-use and unassigned code points, and the blank
  // look-alikes outside those classes the terminal prompt escapes too (the combining
  // grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian selectors, the
  // blank braille pattern, variation selectors). The backslash is doubled so that a
  // literal "\x1b" cannot pass for an escaped ESC.
  const HIDDEN = /[\p{Cc}\p{Cf}\p{Z}\p{Co}\p{Cn}\u034F\u115F\u1160\u17B4\u17B5\u180B-\u180F\u2800\u3164\uFE00-\uFE0F\uFFA0\u{E0100}-\u{E01EF}]/u;

  function escaped(ch) {
    const cp = ch.codePointAt(0);
    if (cp < 0x80) return '\\x' + cp.toString(16).padStart(2, '0');
    return '\\u{' + cp.toString(16) + '}';
  }

  /** `s` as nodes: plain runs as text, hidden characters as a marked escape. */
  function visible(s) {
    const out = [];
    let run = '';
    for (const ch of String(s)) {
      if (ch === '\\') {
        run += '\\\\';
      } else if (ch !== ' ' && HIDDEN.test(ch)) {
        if (run) out.push(run);
        run = '';
        out.push(h('span', { class: 'esc', title: 'U+' + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0') }, escaped(ch)));
      } else {
        run += ch;
      }
    }
    if (run) out.push(run);
    return out;
  }

  const code = (s, cls) => h('code', cls ? { class: cls } : null, visible(s));

  /** The argv, one chip per element, so element boundaries are seen, not guessed. */
  function argvChips(argv) {
    return h('div', { class: 'argv' }, argv.map((a, i) =>
      h('code', { class: a === '' ? 'arg empty-arg' : 'arg', data: { index: String(i) }, title: 'argv[' + i + ']' },
        a === '' ? h('span', { class: 'esc' }, '(empty)') : visible(a))));
  }

  function actionSummary(action) {
    if (action.kind === 'tool') return argvChips(action.argv);
    if (action.kind === 'net') return h('div', { class: 'capability' }, code('connect to ' + action.host + ':' + action.port));
    return h('div', { class: 'capability' }, code(action.capability));
  }

  function setStatus(text, kind) {
    const s = byId('status');
    s.textContent = text;
    s.className = 'status ' + (kind || '');
  }

  function post(path, body) {
    return fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Airlock-CSRF': csrf },
      body: JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  }

  function pendingCard(p) {
    const a = p.action;
    const countdown = h('span', { class: 'countdown' });
    const comment = h('input', {
      class: 'comment', data: { comment: p.id }, maxlength: '1000', autocomplete: 'off',
      placeholder: 'optional (a denial shows it to the agent)',
    });
    const error = h('p', { class: 'error', role: 'alert' });
    const rows = [
      ['Rule', [code(a.rule_id), ' ', h('span', { class: 'reason' }, visible(a.reason))]],
    ];
    if (a.kind === 'tool') {
      rows.push(['Command', argvChips(a.argv)]);
      rows.push(['Program', code(a.program)]);
      rows.push(['Working dir', code(a.cwd)]);
      rows.push(['Binary sha256', code(a.binary_sha256, 'hash')]);
      // Where the call goes by its tool's configuration, which the agent may have
      // edited: `git push origin` does not say where `origin` is.
      if (Array.isArray(a.reaches) && a.reaches.length) {
        rows.push(['Reaches', h('div', { class: 'reaches' }, a.reaches.map((r) => code(r)))]);
      }
    } else if (a.kind === 'net') {
      rows.push(['Connect to', code(a.host + ':' + a.port)]);
    } else {
      rows.push(['Capability', code(a.capability)]);
    }
    rows.push(['Digest', code(p.digest, 'hash')]);
    const buttons = [
      ['once', 'Approve once', 'approve'],
      ['session', 'Approve for session', 'session'],
      ['deny', 'Deny', 'deny'],
    ].map(([answer, label, cls]) => {
      const b = h('button', { type: 'button', class: cls, data: { approval: p.id, answer } }, label);
      b.addEventListener('click', () => decide(p.id, answer, card));
      return b;
    });
    const card = h('article', { class: 'ask', data: { approvalCard: p.id } },
      h('header', { class: 'ask-head' },
        h('span', { class: 'ask-id' }, visible(p.id)),
        h('span', { class: 'session' }, 'session ', code(a.session_id)),
        countdown),
      h('dl', null, rows.map(([k, v]) => [h('dt', null, k), h('dd', null, v)])),
      h('div', { class: 'answer' },
        h('label', null, 'Comment ', comment),
        h('div', { class: 'buttons' }, buttons)),
      error);
    return { card, countdown, error, buttons, deadline: p.deadline_ms };
  }

  async function decide(id, answer, card) {
    const c = cards.get(id);
    if (!c) return;
    c.buttons.forEach((b) => { b.disabled = true; });
    c.error.textContent = '';
    const approver = byId('approver').value.trim() || 'web';
    try {
      const res = await post('/api/resolve', {
        id, answer, approver, comment: card.querySelector('input.comment').value,
      });
      if (!res.ok) {
        c.error.textContent = await res.text();
        c.buttons.forEach((b) => { b.disabled = false; });
      }
    } catch (e) {
      c.error.textContent = 'cannot reach airlock: ' + e.message;
      c.buttons.forEach((b) => { b.disabled = false; });
    }
    refresh();
  }

  async function revoke(sessionId, digest) {
    try {
      const res = await post('/api/revoke', { session_id: sessionId, digest });
      if (!res.ok) setStatus(await res.text(), 'bad');
    } catch (e) {
      setStatus('cannot reach airlock: ' + e.message, 'bad');
    }
    refresh();
  }

  function renderPending(pending) {
    const list = byId('pending');
    const now = new Set(pending.map((p) => p.id));
    for (const [id, c] of cards) {
      if (!now.has(id)) { c.card.remove(); cards.delete(id); }
    }
    // Oldest first, and new asks are the newest: appending keeps the order without
    // moving cards someone may be typing in.
    for (const p of pending) {
      if (!cards.has(p.id)) {
        const c = pendingCard(p);
        cards.set(p.id, c);
        list.append(c.card);
      }
    }
    byId('pending-empty').hidden = pending.length > 0;
    byId('pending-count').textContent = pending.length ? '(' + pending.length + ')' : '';
    document.title = (pending.length ? '(' + pending.length + ') ' : '') + 'Airlock approvals';
    tick();
  }

  function renderGrants(grants) {
    const table = byId('grants');
    const rows = [];
    for (const [session, list] of Object.entries(grants)) {
      for (const g of list) {
        const b = h('button', { type: 'button', class: 'revoke', data: { revokeSession: session, revokeDigest: g.digest } }, 'Revoke');
        b.addEventListener('click', () => { b.disabled = true; revoke(session, g.digest); });
        rows.push(h('tr', null,
          h('td', null, code(session)),
          h('td', null, actionSummary(g.action)),
          h('td', null, code(g.digest, 'hash')),
          h('td', null, visible(g.approver)),
          h('td', null, b)));
      }
    }
    table.tBodies[0].replaceChildren(...rows);
    table.hidden = rows.length === 0;
    byId('grants-empty').hidden = rows.length > 0;
  }

  function renderHistory(history) {
    const table = byId('history');
    const rows = history.map((d) => {
      const r = d.resolution;
      const decision = r.approved ? (r.scope === 'session' ? 'approved for session' : 'approved once') : 'denied';
      return h('tr', { class: r.approved ? 'approved' : 'denied', data: { decided: d.pending.id } },
        h('td', { class: 'nowrap' }, new Date(d.pending.asked_at_ms).toLocaleTimeString()),
        h('td', { class: 'nowrap' }, visible(d.pending.id)),
        h('td', null, code(d.pending.action.session_id)),
        h('td', null, actionSummary(d.pending.action)),
        h('td', { class: 'decision' }, decision),
        h('td', { class: 'by' }, visible(r.approver)),
        h('td', null, visible(r.message),
          r.comment && r.approved ? h('div', { class: 'comment-text' }, 'comment: ', visible(r.comment)) : null));
    });
    table.tBodies[0].replaceChildren(...rows);
    table.hidden = rows.length === 0;
    byId('history-empty').hidden = rows.length > 0;
  }

  function tick() {
    const now = Date.now() + skew;
    for (const c of cards.values()) {
      const left = Math.ceil((c.deadline - now) / 1000);
      if (left <= 0) {
        c.countdown.textContent = 'time is up: denied';
      } else {
        const m = Math.floor(left / 60);
        const s = String(left % 60).padStart(2, '0');
        c.countdown.textContent = m + ':' + s + ' left';
      }
      c.countdown.classList.toggle('urgent', left <= 10);
    }
  }

  let fetching = false;
  let again = false;

  /** Re-reads the whole state; calls while one is under way fold into one more. */
  async function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      do {
        again = false;
        const res = await fetch('/api/state', { credentials: 'same-origin', cache: 'no-store' });
        if (res.status === 401) {
          setStatus('not signed in: open the address airlock printed', 'bad');
          return;
        }
        if (!res.ok) throw new Error(res.status + ' ' + (await res.text()));
        const state = await res.json();
        skew = state.now_ms - Date.now();
        renderPending(state.pending);
        renderGrants(state.grants);
        renderHistory(state.history);
      } while (again);
    } catch (e) {
      setStatus('cannot read the state: ' + e.message, 'bad');
    } finally {
      fetching = false;
    }
  }

  function connect() {
    const events = new EventSource('/api/events');
    // Opened means subscribed: a state read now misses nothing later events won't bring.
    events.addEventListener('open', () => { setStatus('live', 'ok'); refresh(); });
    for (const name of ['pending', 'resolved', 'resync']) events.addEventListener(name, refresh);
    events.addEventListener('error', () => {
      if (events.readyState === EventSource.CLOSED) {
        setStatus('lost airlock: if it restarted, open the new address it printed', 'bad');
      } else {
        setStatus('reconnecting…', 'warn');
      }
    });
  }

  setInterval(tick, 500);
  connect();
}());
