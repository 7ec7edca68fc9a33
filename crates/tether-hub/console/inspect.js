// The inspection plugins and the plugin picker shared by the start form and the inspect
// session's "run another inspection" form.
//
// PLUGINS is tether-host's list (`inspect::plugins()`); a test in the hub's console.rs fails
// when the two differ.

import { h } from './dom.js';

export const PLUGINS = ['system', 'cpu', 'load', 'mem', 'disk', 'net', 'process', 'service', 'kernel', 'log', 'http', 'dns', 'tcp'];

export const TARGET_HINTS = {
  system: 'not used',
  cpu: 'not used',
  load: 'not used',
  mem: 'not used',
  disk: 'a path or block device, e.g. /var',
  net: 'HOST:PORT, a URL or a host (optional)',
  process: 'a name, glob or pid (optional)',
  service: 'a systemd unit (optional)',
  kernel: 'not used',
  log: 'a log file or directory, e.g. /var/log/syslog',
  http: 'a URL, e.g. http://127.0.0.1:8080/health',
  dns: 'a host name, e.g. example.com',
  tcp: 'HOST:PORT, e.g. 127.0.0.1:5432',
};

/** Plugins whose inspection takes no target. */
const NO_TARGET = new Set(Object.keys(TARGET_HINTS).filter((p) => TARGET_HINTS[p] === 'not used'));

/**
 * A plugin `<select>` (with an "(any)" first option when `any` is set), a target `<input>` and
 * a hint under it that follows the chosen plugin. Ids are `${prefix}-plugin`,
 * `${prefix}-target` and `${prefix}-target-hint`. Returns {plugin, target, hint, sync}.
 */
export function pluginPicker(prefix, { any = false, plugin = '', target = '' } = {}) {
  const select = h('select', { id: `${prefix}-plugin`, name: 'plugin', 'data-testid': `${prefix}-plugin` },
    any ? h('option', { value: '', 'data-any': 'true' }, '(any)') : null,
    PLUGINS.map((p) => h('option', { value: p }, p)));
  select.value = PLUGINS.includes(plugin) ? plugin : any ? '' : 'system';
  const input = h('input', {
    id: `${prefix}-target`,
    name: 'target',
    type: 'text',
    autocomplete: 'off',
    spellcheck: 'false',
    'data-testid': `${prefix}-target`,
    'aria-describedby': `${prefix}-target-hint`,
    '.value': target,
  });
  const hint = h('p', { class: 'hint', id: `${prefix}-target-hint` });
  const sync = () => {
    const p = select.value;
    hint.textContent = p ? `Target for ${p}: ${TARGET_HINTS[p] ?? 'see the plugin'}` : 'Optional';
    input.placeholder = p && NO_TARGET.has(p) ? 'not used' : '';
  };
  select.addEventListener('change', sync);
  sync();
  return { plugin: select, target: input, hint, sync };
}

/** The input that asks an inspect session for another inspection: `PLUGIN [TARGET]`. */
export function inspectionText(plugin, target) {
  const t = String(target ?? '').trim();
  return t ? `${plugin} ${t}` : plugin;
}
