/** The console's entry point: wires the hub link, the device list and the device view. */
import { DeviceList } from './device-list.js';
import { DeviceView } from './device-view.js';
import { HubClient, type ConnectionState } from './hub-client.js';

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

  const selectedFromHash = () => {
    const match = /^#\/devices\/(.+)$/.exec(location.hash);
    return match?.[1] ? decodeURIComponent(match[1]) : null;
  };
  const view = new DeviceView(byId('device'), hub);
  const list = new DeviceList(
    byId('device-list'),
    hub,
    (id) => (location.hash = `#/devices/${encodeURIComponent(id)}`),
    (shown, online, total) => {
      counts.textContent = `${online} online / ${total} devices${shown !== total ? ` · ${shown} shown` : ''}`;
      counts.dataset.online = String(online);
      counts.dataset.total = String(total);
    },
  );

  const showSelected = () => {
    const id = selectedFromHash();
    list.select(id);
    view.show(id);
  };
  window.addEventListener('hashchange', showSelected);
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
  });
  // Relative times ("last seen 3 min ago") age without any event.
  window.setInterval(() => list.refresh(), 30_000);

  try {
    await hub.start();
  } catch (error) {
    if ((error as Error).message === HubClient.LOGIN_NEEDED) {
      location.href = '/login';
      return;
    }
    connection.textContent = 'cannot reach the hub';
    connection.dataset.state = 'offline';
    console.error(error);
  }
  const session = hub.session;
  if (session) {
    byId('who').textContent = `${session.name} (${session.role})`;
    const logout = byId<HTMLButtonElement>('logout');
    logout.hidden = session.mqtt === null;
    logout.addEventListener('click', () => void fetch('/api/logout', { method: 'POST' }).then(() => (location.href = '/login')));
  }
  byId('version').textContent = hub.info.version ? `v${hub.info.version}` : '';
  showSelected();
}

void main();
