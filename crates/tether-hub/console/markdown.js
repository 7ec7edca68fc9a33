// A tiny, safe Markdown renderer for model output and inspection reports.
//
// Blocks: ATX headings, paragraphs (single newlines become line breaks), fenced code (an
// unclosed fence runs to the end, which is what a stream looks like mid-block), bullet and
// numbered lists (nested by indentation), pipe tables with alignment, block quotes and
// horizontal rules. Inline: `code`, **strong**, *em* / _em_, ~~strike~~, [links](https://…),
// <https://autolinks> and backslash escapes.
//
// Everything is built with createElement / text nodes; no string ever becomes HTML. Links are
// kept only for http(s) and mailto URLs and open in a new tab without an opener.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
const TABLE_SEP = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;

/**
 * The text a line of Markdown reads as, without its inline marks (`**x**` → `x`): for titles
 * made from a description's first line. Block syntax (`# `, `- `) is left as written.
 */
export function markdownLineText(src) {
  const span = document.createElement('span');
  inline(String(src ?? '').replace(/\s+/g, ' ').trim(), span);
  return span.textContent;
}

export function renderMarkdown(src) {
  const frag = document.createDocumentFragment();
  const lines = String(src ?? '').replace(/\r\n?/g, '\n').split('\n');
  renderBlocks(lines, frag);
  return frag;
}

function el(tag, cls) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  return e;
}

function isTableStart(lines, i) {
  return (
    i + 1 < lines.length &&
    lines[i].includes('|') &&
    TABLE_SEP.test(lines[i + 1]) &&
    lines[i + 1].includes('-') &&
    (lines[i + 1].includes('|') || lines[i].trim().startsWith('|'))
  );
}

function startsBlock(lines, i) {
  const line = lines[i];
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    HR.test(line) ||
    QUOTE.test(line) ||
    LIST_ITEM.test(line) ||
    isTableStart(lines, i)
  );
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === '') {
      i++;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const lang = m[2];
      const body = [];
      i++;
      while (i < lines.length) {
        const t = lines[i].trim();
        if (t.startsWith(fence[0].repeat(fence.length)) && /^([`~])\1*$/.test(t)) {
          i++;
          break;
        }
        body.push(lines[i]);
        i++;
      }
      const pre = el('pre', 'md-code');
      const code = el('code');
      if (lang) code.dataset.lang = lang;
      code.textContent = body.join('\n');
      pre.append(code);
      parent.append(pre);
      continue;
    }
    if ((m = HEADING.exec(line))) {
      const hd = el(`h${m[1].length}`, 'md-h');
      inline(m[2] ?? '', hd);
      parent.append(hd);
      i++;
      continue;
    }
    if (HR.test(line)) {
      parent.append(el('hr'));
      i++;
      continue;
    }
    if (isTableStart(lines, i)) {
      i = renderTable(lines, i, parent);
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i++;
      }
      const bq = el('blockquote');
      renderBlocks(inner, bq);
      parent.append(bq);
      continue;
    }
    if (LIST_ITEM.test(line)) {
      i = renderList(lines, i, parent);
      continue;
    }
    // A paragraph: up to a blank line or the start of another block.
    const para = [line.trim()];
    i++;
    while (i < lines.length && lines[i].trim() !== '' && !startsBlock(lines, i)) {
      para.push(lines[i].trim());
      i++;
    }
    const p = el('p');
    inline(para.join('\n'), p);
    parent.append(p);
  }
}

function renderList(lines, i, parent) {
  const first = LIST_ITEM.exec(lines[i]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = el(ordered ? 'ol' : 'ul');
  if (ordered) {
    const start = parseInt(first[2], 10);
    if (start !== 1) list.start = start;
  }
  while (i < lines.length) {
    const m = LIST_ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const contentIndent = indent + m[2].length + 1;
    const item = [m[3]];
    i++;
    // The item's further lines: indented ones (nested blocks), lazy continuations, and blank
    // lines followed by more indented content.
    while (i < lines.length) {
      const l = lines[i];
      if (l.trim() === '') {
        let j = i + 1;
        while (j < lines.length && lines[j].trim() === '') j++;
        if (j < lines.length && leadingSpaces(lines[j]) >= contentIndent) {
          for (; i < j; i++) item.push('');
          continue;
        }
        break;
      }
      const sp = leadingSpaces(l);
      if (sp >= contentIndent || (sp > indent && LIST_ITEM.test(l))) {
        item.push(l.slice(Math.min(sp, contentIndent)));
        i++;
        continue;
      }
      if (sp <= indent && (LIST_ITEM.test(l) || startsBlock(lines, i))) break;
      item.push(l.trim()); // lazy continuation of the paragraph
      i++;
    }
    const li = el('li');
    const simple = item.every((l) => l.trim() !== '' && !startsBlock([l], 0));
    if (simple) inline(item.map((l) => l.trim()).join('\n'), li);
    else renderBlocks(item, li);
    list.append(li);
    // A blank line between items of one list keeps the list going.
    if (i < lines.length && lines[i].trim() === '') {
      let j = i;
      while (j < lines.length && lines[j].trim() === '') j++;
      const next = j < lines.length ? LIST_ITEM.exec(lines[j]) : null;
      if (next && next[1].length === indent && /\d/.test(next[2]) === ordered) i = j;
    }
  }
  parent.append(list);
  return i;
}

function leadingSpaces(line) {
  return line.length - line.replace(/^ +/, '').length;
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith('|')) s = s.slice(1);
  if (s.endsWith('|') && !s.endsWith('\\|')) s = s.slice(0, -1);
  const cells = [];
  let cur = '';
  let inCode = false;
  for (let k = 0; k < s.length; k++) {
    const c = s[k];
    if (c === '\\' && s[k + 1] === '|') {
      cur += '\\|';
      k++;
    } else if (c === '`') {
      inCode = !inCode;
      cur += c;
    } else if (c === '|' && !inCode) {
      cells.push(cur.trim());
      cur = '';
    } else cur += c;
  }
  cells.push(cur.trim());
  return cells;
}

function renderTable(lines, i, parent) {
  const header = splitRow(lines[i]);
  const aligns = splitRow(lines[i + 1]).map((c) => {
    const left = c.startsWith(':');
    const right = c.endsWith(':');
    return left && right ? 'center' : right ? 'right' : left ? 'left' : '';
  });
  i += 2;
  const wrap = el('div', 'md-table');
  const table = el('table');
  const thead = el('thead');
  const htr = el('tr');
  header.forEach((cell, k) => {
    const th = el('th');
    if (aligns[k]) th.style.textAlign = aligns[k];
    inline(cell, th);
    htr.append(th);
  });
  thead.append(htr);
  table.append(thead);
  const tbody = el('tbody');
  while (i < lines.length && lines[i].trim() !== '' && lines[i].includes('|')) {
    const cells = splitRow(lines[i]);
    const tr = el('tr');
    for (let k = 0; k < header.length; k++) {
      const td = el('td');
      if (aligns[k]) td.style.textAlign = aligns[k];
      inline(cells[k] ?? '', td);
      tr.append(td);
    }
    tbody.append(tr);
    i++;
  }
  table.append(tbody);
  wrap.append(table);
  parent.append(wrap);
  return i;
}

const ESCAPABLE = /[\\`*_{}[\]()#+\-.!|>~<]/;

export function safeUrl(url) {
  const u = String(url ?? '').trim();
  if (/^(https?:|mailto:)/i.test(u)) return u;
  return null;
}

/** Renders inline Markdown from `text` into `parent`. */
export function inline(text, parent) {
  let buf = '';
  const flush = () => {
    if (buf) parent.append(document.createTextNode(buf));
    buf = '';
  };
  const s = text;
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    if (c === '\\' && i + 1 < s.length && ESCAPABLE.test(s[i + 1])) {
      buf += s[i + 1];
      i += 2;
      continue;
    }
    if (c === '\n') {
      flush();
      parent.append(document.createElement('br'));
      i++;
      continue;
    }
    if (c === '`') {
      let n = 1;
      while (s[i + n] === '`') n++;
      const ticks = '`'.repeat(n);
      let j = s.indexOf(ticks, i + n);
      while (j !== -1 && s[j + n] === '`') j = s.indexOf(ticks, j + n + 1);
      if (j !== -1) {
        flush();
        const code = document.createElement('code');
        let body = s.slice(i + n, j).replace(/\n/g, ' ');
        if (body.length > 2 && body.startsWith(' ') && body.endsWith(' ')) body = body.slice(1, -1);
        code.textContent = body;
        parent.append(code);
        i = j + n;
        continue;
      }
      buf += ticks;
      i += n;
      continue;
    }
    if ((c === '*' || c === '_' || c === '~') && s[i + 1] === c) {
      const mark = c + c;
      const j = findClose(s, mark, i + 2);
      if (j !== -1 && (c !== '_' || (!isWordChar(s[i - 1]) && !isWordChar(s[j + 2])))) {
        flush();
        const strong = document.createElement(c === '~' ? 'del' : 'strong');
        inline(s.slice(i + 2, j), strong);
        parent.append(strong);
        i = j + 2;
        continue;
      }
    }
    if ((c === '*' || c === '_') && s[i + 1] && !/\s/.test(s[i + 1]) && (c === '*' || !isWordChar(s[i - 1]))) {
      const j = findClose(s, c, i + 1);
      if (j !== -1 && (c === '*' || !isWordChar(s[j + 1]))) {
        flush();
        const em = document.createElement('em');
        inline(s.slice(i + 1, j), em);
        parent.append(em);
        i = j + 1;
        continue;
      }
    }
    if (c === '[') {
      const m = /^\[([^\]\n]+)\]\(([^)\s]+)(?:\s+"[^"\n]*")?\)/.exec(s.slice(i));
      if (m) {
        flush();
        const href = safeUrl(m[2]);
        if (href) {
          const a = document.createElement('a');
          a.href = href;
          a.target = '_blank';
          a.rel = 'noopener noreferrer';
          inline(m[1], a);
          parent.append(a);
        } else {
          inline(m[1], parent);
        }
        i += m[0].length;
        continue;
      }
    }
    if (c === '<') {
      const m = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(s.slice(i));
      if (m) {
        flush();
        const a = document.createElement('a');
        a.href = m[1];
        a.target = '_blank';
        a.rel = 'noopener noreferrer';
        a.textContent = m[1];
        parent.append(a);
        i += m[0].length;
        continue;
      }
    }
    buf += c;
    i++;
  }
  flush();
}

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

/** The index of the closing `mark` after `from` that is not preceded by whitespace. */
function findClose(s, mark, from) {
  for (let j = from; j < s.length; j++) {
    if (s[j] === '\\') {
      j++;
      continue;
    }
    if (s[j] === '`') {
      // Emphasis does not close inside a code span.
      const end = s.indexOf('`', j + 1);
      if (end !== -1) j = end;
      continue;
    }
    if (!s.startsWith(mark, j)) continue;
    if (mark.length === 1 && s[j + 1] === mark) {
      j++; // a double mark is strong, not the end of em
      continue;
    }
    if (j > from && !/\s/.test(s[j - 1])) return j;
  }
  return -1;
}
