/**
 * Checks of PEM files, shared by the hub (--tls-cert, --tls-key, --tls-ca) and hypha
 * (--ca, --cert, --key). Node's `tls.createSecureContext` accepts a CA file that holds no
 * certificate at all and a certificate that does not match its key, and the failure then
 * shows only at the first handshake, far from the flag that caused it; so each file is
 * parsed on its own at start, and its problem told in words that fit after the flag.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';

const CERTIFICATE_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** A file's text, or why it cannot be read. */
function readPemFile(path: string): { text: string } | { problem: string } {
  try {
    return { text: readFileSync(path, 'utf8') };
  } catch (error) {
    return { problem: `cannot read ${path} (${(error as NodeJS.ErrnoException).code ?? String(error)})` };
  }
}

/** Every certificate in a PEM file (a chain or a CA bundle), or why there is none usable. */
function parseCertificates(text: string): { certificates: X509Certificate[] } | { problem: string } {
  const blocks = text.match(CERTIFICATE_BLOCK) ?? [];
  if (blocks.length === 0) return { problem: 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)' };
  const certificates: X509Certificate[] = [];
  for (const [index, block] of blocks.entries()) {
    try {
      certificates.push(new X509Certificate(block));
    } catch (error) {
      return { problem: `holds a certificate that cannot be parsed (number ${index + 1}: ${reasonOf(error)})` };
    }
  }
  return { certificates };
}

/** The private key of a PEM file, or why it is not one Node can use. */
function parsePrivateKey(text: string): { key: KeyObject } | { problem: string } {
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) return { problem: 'holds no PEM private key (-----BEGIN PRIVATE KEY-----)' };
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(text)) {
    return { problem: 'is encrypted with a passphrase, which is not supported (openssl pkey -in FILE -out PLAIN.pem)' };
  }
  try {
    return { key: createPrivateKey(text) };
  } catch (error) {
    return { problem: `is not a usable private key (${reasonOf(error)})` };
  }
}

/** OpenSSL's own words without its error-queue prefix ("error:0480006C:PEM routines::"). */
function reasonOf(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/^error:[0-9A-F]+:[^:]*:[^:]*:/, '');
}

export interface PemFiles {
  cert?: string;
  key?: string;
  ca?: string;
}

export interface LoadedPem {
  cert?: string;
  key?: string;
  ca?: string;
  /** The first certificate of `cert`: the one this end presents. */
  leaf?: X509Certificate;
}

/**
 * Reads and checks the PEM files of one TLS end: a certificate (chain) with its private key,
 * and optionally the CA bundle that signs the other end's certificates. A problem is one
 * line that starts with the label of the option it belongs to (`labels`: how each option is
 * called where the caller speaks, say `--tls-cert` or `HYPHA_CERT`).
 */
export function loadPemFiles(files: PemFiles, labels: Required<PemFiles>): LoadedPem | { problem: string } {
  const loaded: LoadedPem = {};
  const fail = (option: keyof PemFiles, problem: string) => ({ problem: `${labels[option]}: ${problem}` });
  let privateKey: KeyObject | undefined;
  if (files.cert) {
    const read = readPemFile(files.cert);
    if ('problem' in read) return fail('cert', read.problem);
    const parsed = parseCertificates(read.text);
    if ('problem' in parsed) return fail('cert', `${files.cert} ${parsed.problem}`);
    loaded.cert = read.text;
    loaded.leaf = parsed.certificates[0];
  }
  if (files.key) {
    const read = readPemFile(files.key);
    if ('problem' in read) return fail('key', read.problem);
    const parsed = parsePrivateKey(read.text);
    if ('problem' in parsed) return fail('key', `${files.key} ${parsed.problem}`);
    loaded.key = read.text;
    privateKey = parsed.key;
  }
  if (loaded.leaf && privateKey && !loaded.leaf.checkPrivateKey(privateKey)) {
    return fail('key', `${files.key} is not the private key of the certificate in ${files.cert}`);
  }
  if (files.ca) {
    const read = readPemFile(files.ca);
    if ('problem' in read) return fail('ca', read.problem);
    const parsed = parseCertificates(read.text);
    if ('problem' in parsed) return fail('ca', `${files.ca} ${parsed.problem}`);
    loaded.ca = read.text;
  }
  return loaded;
}
