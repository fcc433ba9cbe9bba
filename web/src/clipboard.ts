/** Copy buttons. The clipboard API exists only on https:// and localhost pages, so the fallback selects the text for Ctrl+C. */
import { el } from './format.js';

const FEEDBACK_MS = 1500;

/**
 * A button that copies `text()`. Without clipboard access it selects `source` (the element
 * that shows the text), so one keystroke copies it.
 */
export function copyButton(className: string, title: string, text: () => string, source?: HTMLElement): HTMLButtonElement {
  const button = el('button', className, 'Copy');
  button.type = 'button';
  button.title = title;
  const say = (words: string) => {
    button.textContent = words;
    window.setTimeout(() => (button.textContent = 'Copy'), FEEDBACK_MS);
  };
  const fallback = () => {
    if (source && selectContents(source)) say('Press Ctrl+C');
    else say('Copy failed');
  };
  button.addEventListener('click', () => {
    if (!navigator.clipboard) return fallback();
    navigator.clipboard.writeText(text()).then(() => say('Copied'), fallback);
  });
  return button;
}

function selectContents(node: HTMLElement): boolean {
  const selection = window.getSelection();
  if (!selection) return false;
  const range = document.createRange();
  range.selectNodeContents(node);
  selection.removeAllRanges();
  selection.addRange(range);
  return true;
}
