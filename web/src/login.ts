/** The login page: a session cookie on success, then back to the console view that sent us here. */
const form = document.getElementById('login') as HTMLFormElement;
const problem = document.getElementById('problem') as HTMLElement;
const submit = form.querySelector<HTMLButtonElement>('button[type="submit"]');

/** The console view to return to (`?next=#/admin/audit`); only a hash of this site, never another address. */
function nextView(): string {
  const next = new URLSearchParams(location.search).get('next') ?? '';
  return /^#\/[^\s]*$/.test(next) ? `/${next}` : '/';
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  problem.textContent = '';
  const name = (document.getElementById('name') as HTMLInputElement).value;
  const password = (document.getElementById('password') as HTMLInputElement).value;
  if (submit) submit.disabled = true;
  void fetch('/api/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name, password }) })
    .then(async (res) => {
      if (res.ok) {
        location.href = nextView();
        return;
      }
      const body = (await res.json().catch(() => ({}))) as { message?: string };
      problem.textContent = body.message ?? `login failed (HTTP ${res.status})`;
    })
    .catch(() => (problem.textContent = 'cannot reach the hub'))
    .finally(() => {
      if (submit) submit.disabled = false;
    });
});
