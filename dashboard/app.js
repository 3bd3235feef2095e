// The dashboard's shell: sign-in state, navigation and one view at a time, chosen by the URL's
// fragment (#/jobs, #/jobs/<id>, #/events, #/ops), so any page can be linked and reloaded.

import { claims, signOut, token } from './api.js';
import * as events from './view-events.js';
import * as job from './view-job.js';
import * as jobs from './view-jobs.js';
import * as ops from './view-ops.js';
import * as signin from './view-signin.js';

const main = document.getElementById('main');
let dispose = () => {};

function route() {
  const path = location.hash.replace(/^#/, '') || '/jobs';
  if (!token()) return [signin, {}];
  let m;
  if ((m = path.match(/^\/jobs\/([0-9a-fA-F-]{36})$/))) return [job, { id: m[1] }];
  if (path === '/events') return [events, {}];
  if (path === '/ops') return [ops, {}];
  return [jobs, {}];
}

function header() {
  const signedIn = Boolean(token());
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('who').hidden = !signedIn;
  if (signedIn) {
    const c = claims();
    // The tenant claim's name is the server's setting; `tenant` is its default.
    document.getElementById('who-text').textContent = c ? `${c.sub ?? 'signed in'}${c.tenant ? ` @ ${c.tenant}` : ''}` : 'signed in';
  }
  const here = `#${(location.hash.replace(/^#/, '') || '/jobs').split('/').slice(0, 2).join('/')}`;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === here) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function show({ focus = true, notice } = {}) {
  dispose();
  main.replaceChildren();
  header();
  const [view, params] = route();
  dispose = view.render(main, { ...params, notice }) ?? (() => {});
  // Screen readers and keyboards land on the new page's heading.
  if (focus) main.querySelector('h1')?.focus();
}

window.addEventListener('hashchange', () => show());
window.addEventListener('conveyor:signed-in', () => show());
window.addEventListener('conveyor:signed-out', (e) => show({ notice: e.detail }));
document.getElementById('sign-out').addEventListener('click', () => signOut());
show({ focus: false });
