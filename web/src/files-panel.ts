/**
 * File transfers with a device (the Files tab of its page), over file tunnels
 * (docs/protocol.md "Remote access: tunnels"). Upload: a file of this computer to an absolute
 * path on the device, which keeps it only when its size and SHA-256 match. Download: a file of
 * the device, checked the same way, offered as a link that saves it under its own name.
 * Both show their progress, then the size and SHA-256, or the hub's or device's error code
 * and message (NOT_FOUND, PATH_OUTSIDE_ROOT, PAYLOAD_TOO_LARGE, …).
 */
import { ClientError } from 'rhizosphere/client';
import { codedError, el, field } from './format.js';
import type { HubClient } from './hub-client.js';

export class FilesPanel {
  readonly root = el('section', 'files');
  private readonly uploadFile = el('input', 'upload-file');
  private readonly uploadPath = el('input', 'upload-path');
  private readonly uploadButton = el('button', 'send upload-send', 'Upload');
  private readonly uploadProgress = el('progress', 'transfer-progress upload-progress');
  private readonly uploadResult = el('div', 'transfer-result upload-result');
  private readonly downloadPath = el('input', 'download-path');
  private readonly downloadButton = el('button', 'send download-send', 'Download');
  private readonly downloadProgress = el('progress', 'transfer-progress download-progress');
  private readonly downloadResult = el('div', 'transfer-result download-result');
  /** The Blob URL of the last download, released when the next one replaces it. */
  private blobUrl: string | null = null;

  constructor(
    private readonly hub: HubClient,
    readonly device: string,
  ) {
    this.root.setAttribute('aria-label', 'files');
    this.root.append(this.uploadForm(), this.downloadForm());
  }

  private uploadForm(): HTMLFormElement {
    const form = el('form', 'transfer upload');
    form.setAttribute('aria-label', 'upload');
    this.uploadFile.type = 'file';
    this.uploadFile.setAttribute('aria-label', 'file to upload');
    pathInput(this.uploadPath, '/home/pi/ (a folder ending in /) or /home/pi/name.txt');
    this.uploadPath.setAttribute('aria-label', 'path on the device');
    this.uploadButton.type = 'submit';
    this.uploadProgress.hidden = true;
    const row = el('div', 'transfer-row');
    row.append(this.uploadFile, field('to', this.uploadPath), this.uploadButton);
    form.append(el('h3', '', 'Upload to the device'), row, this.uploadProgress, this.uploadResult);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      void this.upload();
    });
    return form;
  }

  private downloadForm(): HTMLFormElement {
    const form = el('form', 'transfer download');
    form.setAttribute('aria-label', 'download');
    pathInput(this.downloadPath, '/var/log/syslog');
    this.downloadPath.setAttribute('aria-label', 'path on the device');
    this.downloadButton.type = 'submit';
    this.downloadProgress.hidden = true;
    const row = el('div', 'transfer-row');
    row.append(field('from', this.downloadPath), this.downloadButton);
    form.append(el('h3', '', 'Download from the device'), row, this.downloadProgress, this.downloadResult);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      void this.download();
    });
    return form;
  }

  private async upload(): Promise<void> {
    const file = this.uploadFile.files?.[0];
    let path = this.uploadPath.value.trim();
    if (!file) return this.uploadResult.replaceChildren(codedError('problem', 'BAD_REQUEST', 'choose a file to upload'));
    // A folder gets the file under its own name.
    if (path.endsWith('/')) path += file.name;
    if (!path.startsWith('/')) return this.uploadResult.replaceChildren(codedError('problem', 'BAD_REQUEST', 'the path on the device must be absolute (start with /)'));
    this.uploadButton.disabled = true;
    this.uploadResult.replaceChildren(el('span', 'transfer-running', `uploading ${file.name} to ${path}…`));
    showProgress(this.uploadProgress, 0, file.size);
    try {
      // The File itself: the SDK reads it slice by slice, never whole.
      const result = await this.hub.upload(this.device, path, file, (done, total) => showProgress(this.uploadProgress, done, total));
      complete(this.uploadProgress);
      this.uploadResult.replaceChildren(outcome(`wrote ${path}`, result.size, result.sha256));
    } catch (error) {
      this.uploadProgress.hidden = true;
      this.uploadResult.replaceChildren(problemOf(error));
    } finally {
      this.uploadButton.disabled = false;
    }
  }

  private async download(): Promise<void> {
    const path = this.downloadPath.value.trim();
    if (!path.startsWith('/')) return this.downloadResult.replaceChildren(codedError('problem', 'BAD_REQUEST', 'the path on the device must be absolute (start with /)'));
    this.downloadButton.disabled = true;
    this.downloadResult.replaceChildren(el('span', 'transfer-running', `downloading ${path}…`));
    showProgress(this.downloadProgress, 0, 0);
    try {
      const result = await this.hub.download(this.device, path, (done, total) => showProgress(this.downloadProgress, done, total));
      complete(this.downloadProgress);
      if (this.blobUrl) URL.revokeObjectURL(this.blobUrl);
      this.blobUrl = URL.createObjectURL(new Blob([result.bytes as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }));
      const name = baseName(path);
      const link = el('a', 'download-link', `Save ${name}`);
      link.href = this.blobUrl;
      link.download = name;
      const box = outcome(`read ${path}`, result.size, result.sha256);
      box.prepend(link, document.createTextNode(' · '));
      this.downloadResult.replaceChildren(box);
    } catch (error) {
      this.downloadProgress.hidden = true;
      this.downloadResult.replaceChildren(problemOf(error));
    } finally {
      this.downloadButton.disabled = false;
    }
  }
}

function pathInput(input: HTMLInputElement, placeholder: string): void {
  input.type = 'text';
  input.placeholder = placeholder;
  input.autocomplete = 'off';
  input.spellcheck = false;
}

function showProgress(bar: HTMLProgressElement, done: number, total: number): void {
  bar.hidden = false;
  // An unknown total (a download before the device said its size) shows as indeterminate.
  if (total > 0) {
    bar.max = total;
    bar.value = done;
  } else if (done === 0) {
    bar.removeAttribute('value');
  }
  bar.title = `${done} of ${total} bytes`;
}

function complete(bar: HTMLProgressElement): void {
  bar.max = 1;
  bar.value = 1;
}

function outcome(what: string, size: number, sha256: string): HTMLElement {
  const box = el('div', 'transfer-done');
  box.append(`${what}: `, el('span', 'transfer-size', `${size} bytes`), ' · SHA-256 ', el('code', 'transfer-sha256', sha256));
  return box;
}

function problemOf(error: unknown): HTMLElement {
  if (error instanceof ClientError) return codedError('problem', error.code, error.message);
  return codedError('problem', 'INTERNAL', error instanceof Error ? error.message : String(error));
}

/** The last segment of a device path: the name the download is saved under. */
export function baseName(path: string): string {
  const name = path.replace(/\/+$/, '').split('/').pop();
  return name || 'download';
}
