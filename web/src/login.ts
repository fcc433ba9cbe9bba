/** The login page: a session cookie on success, then back to the console. */
const form = document.getElementById('login') as HTMLFormElement;
const problem = document.getElementById('problem') as HTMLElement;

form.addEventListener('submit', (event) => {
  event.preventDefault();
  problem.textContent = '';
  const name = (document.getElementById('name') as HTMLInputElement).value;
  const password = (document.getElementById('password') as HTMLInputElement).value;
  void fetch('/api/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name, password }) })
    .then(async (res) => {
      if (res.ok) {
        location.href = '/';
        return;
      }
      const body = (await res.json().catch(() => ({}))) as { message?: string };
      problem.textContent = body.message ?? `login failed (HTTP ${res.status})`;
    })
    .catch(() => (problem.textContent = 'cannot reach the hub'));
});
