/** The console's entry point: wires the hub link, the views and the top bar to the URL. */
import { AlertsView } from './alerts-view.js';
import { AuditView } from './audit-view.js';
import { DevicesAdmin } from './admin-devices.js';
import { goToLogin, LOGIN_NEEDED } from './api.js';
import { DeviceList } from './device-list.js';
import { DeviceView } from './device-view.js';
import { el } from './format.js';
import { FleetHealthView } from './health-view.js';
import { HubClient, type ConnectionState } from './hub-client.js';
import { JobsView } from './jobs-view.js';
import { RecordingsView } from './recordings-view.js';
import { canUseTunnels, isAdmin } from './roles.js';
import { links, parseRoute, type Route } from './router.js';
import type { HubInfo, Session } from './types.js';

const STATE_TEXT: Record<ConnectionState, string> = {
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  offline: 'offline',
};

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} missing from index.html`);
  return node as T;
}

async function main(): Promise<void> {
  const hub = new HubClient();
  const connection = byId('connection');
  const counts = byId('counts');
  const filterText = byId<HTMLInputElement>('filter');
  const filterShow = byId<HTMLSelectElement>('show');
  const consoleLayout = byId('console');
  const adminRoot = byId('admin');
  // Admins have the Console link among their views; everyone else has its twin next to Jobs.
  const consoleLinks = [byId<HTMLAnchorElement>('console-link'), byId<HTMLAnchorElement>('console-link-shared')];

  const view = new DeviceView(byId('device'), hub);
  const list = new DeviceList(
    byId('device-list'),
    hub,
    (id) => (location.hash = links.device(id)),
    (shown, online, total) => {
      counts.textContent = `${online} online / ${total} devices${shown !== total ? ` · ${shown} shown` : ''}`;
      counts.dataset.online = String(online);
      counts.dataset.total = String(total);
    },
  );
  const devicesAdmin = new DevicesAdmin(hub);
  const audit = new AuditView();
  const jobs = new JobsView(hub);
  const recordings = new RecordingsView();
  const fleetHealth = new FleetHealthView();
  const alerts = new AlertsView(hub);

  const showRoute = (route: Route) => {
    const onConsole = route.view === 'console';
    consoleLayout.hidden = !onConsole;
    adminRoot.hidden = onConsole;
    markCurrentView(route);
    if (route.view !== 'admin-devices') devicesAdmin.hide();
    if (route.view !== 'jobs') jobs.hide();
    if (route.view !== 'recordings') recordings.hide();
    if (route.view !== 'health') fleetHealth.hide();
    if (route.view !== 'alerts') alerts.hide();
    if (route.view === 'console') {
      // Back from an admin view, the Console link returns to the device that was open.
      for (const link of consoleLinks) link.href = route.device ? links.device(route.device) : links.console;
      list.select(route.device);
      view.show(route.device, route.tab);
    } else if (route.view === 'jobs') {
      jobs.show(adminRoot, route.job);
    } else if (route.view === 'recordings') {
      recordings.show(adminRoot, route.tunnel);
    } else if (route.view === 'health') {
      fleetHealth.show(adminRoot);
    } else if (route.view === 'alerts') {
      alerts.show(adminRoot);
    } else if (!isAdmin(hub.session)) {
      adminRoot.replaceChildren(adminsOnly(hub.session));
    } else if (route.view === 'admin-devices') {
      devicesAdmin.show(adminRoot);
    } else {
      audit.show(adminRoot, route.device);
    }
  };
  const applyFilter = () => list.setFilter({ text: filterText.value, show: filterShow.value as 'all' | 'online' | 'offline' });
  filterText.addEventListener('input', applyFilter);
  filterShow.addEventListener('change', applyFilter);

  hub.addEventListener('state', () => {
    connection.textContent = STATE_TEXT[hub.state];
    connection.dataset.state = hub.state;
  });
  hub.addEventListener('devices', (event) => {
    list.refresh();
    view.devicesChanged((event as CustomEvent<ReadonlySet<string> | null>).detail);
    devicesAdmin.devicesChanged();
  });
  // Relative times ("last seen 3 min ago") age without any event.
  window.setInterval(() => {
    list.refresh();
    devicesAdmin.devicesChanged();
  }, 30_000);

  try {
    await hub.start();
  } catch (error) {
    if ((error as Error).message === LOGIN_NEEDED) return goToLogin();
    connection.textContent = 'cannot reach the hub';
    connection.dataset.state = 'offline';
    console.error(error);
  }
  if (hub.session) showSession(hub.session);
  byId('version').textContent = hub.info.version ? `v${hub.info.version}` : '';
  if (hub.info.broker) watchBroker(hub, byId('broker'));
  // Views depend on the role: route only once the session is known.
  window.addEventListener('hashchange', () => showRoute(parseRoute(location.hash)));
  showRoute(parseRoute(location.hash));
}

/** How often the top bar asks the hub whether it still reaches its external broker. */
const BROKER_POLL_MS = 3000;

/**
 * On an external broker (--broker) the devices' presence and every command pass through it:
 * the top bar says whether the hub reaches it, and why not when it does not.
 */
function watchBroker(hub: HubClient, badge: HTMLElement): void {
  const show = (broker: HubInfo['broker']) => {
    if (!broker) return;
    badge.hidden = false;
    badge.dataset.state = broker.connected ? 'connected' : 'unreachable';
    badge.textContent = broker.connected ? `broker ${broker.url}` : `broker unreachable: ${broker.url}`;
    badge.title = broker.connected
      ? `The hub is connected to ${broker.url} (MQTT ${broker.mqtt ?? '?'}).`
      : `The hub cannot reach ${broker.url} (${broker.reason ?? 'no reason given'}): commands are refused BROKER_UNAVAILABLE and device states may be out of date until it is back.`;
  };
  show(hub.info.broker);
  const poll = async () => {
    try {
      const res = await fetch('/api/hub');
      if (res.ok) show(((await res.json()) as HubInfo).broker);
    } catch {
      // The hub itself is away: the connection badge says so.
    }
  };
  window.setInterval(() => void poll(), BROKER_POLL_MS);
  hub.addEventListener('state', () => void poll());
}

/** The top bar: who is logged in, with which role, the admin views for admins, and Log out. */
function showSession(session: Session): void {
  const who = byId('who');
  who.replaceChildren(el('span', 'who-name', session.name), el('span', 'role-badge', session.role));
  who.dataset.role = session.role;
  byId('views').hidden = !isAdmin(session);
  byId('console-link-shared').hidden = isAdmin(session);
  byId('recordings-link').hidden = !canUseTunnels(session);
  const logout = byId<HTMLButtonElement>('logout');
  // Anonymous access (--allow-anonymous) has no session to end.
  logout.hidden = session.mqtt === null;
  logout.addEventListener('click', () => {
    logout.disabled = true;
    void fetch('/api/logout', { method: 'POST' }).finally(() => (location.href = '/login'));
  });
}

function markCurrentView(route: Route): void {
  for (const link of document.querySelectorAll<HTMLAnchorElement>('.views a[data-view]')) {
    if (link.dataset.view === route.view) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function adminsOnly(session: Session | null): HTMLElement {
  const who = session ? `You are logged in as ${session.name} (${session.role}).` : '';
  return el('p', 'placeholder admins-only', `This view is for admins. ${who}`.trim());
}

void main();
