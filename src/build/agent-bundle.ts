/**
 * Builds the standalone agent: one CommonJS file, `dist/agent/hypha.js`, with MQTT.js and zod
 * inside, that runs on Node.js 18 or later with nothing else installed (Debian 12 and Raspberry
 * Pi OS ship Node.js 18). Beside it, `hypha.js.sha256` in sha256sum's format. The hub serves
 * both at `GET /agent/hypha.js` and `/agent/hypha.js.sha256`.
 *
 * CommonJS rather than ESM: a lone `.js` file with no package.json above it is CommonJS to
 * Node, and node-pty (left out, optional) is then found through `require`, which also honours
 * NODE_PATH and a `node_modules` beside the file.
 *
 * Run by `npm run build`; esbuild is a build-time dependency only.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';
import { PACKAGE_ROOT, PACKAGE_VERSION } from '../package-root.js';

export const AGENT_NODE_MIN = '18';

/** package-root.ts reads package.json at run time; the standalone agent carries its version instead. */
function packageVersionInlined(version: string): Plugin {
  return {
    name: 'package-version-inlined',
    setup(builder) {
      builder.onResolve({ filter: /package-root\.js$/ }, (args) => ({ path: args.path, namespace: 'package-version' }));
      builder.onLoad({ filter: /.*/, namespace: 'package-version' }, () => ({
        contents: `export const PACKAGE_VERSION = ${JSON.stringify(version)}; export const STANDALONE_AGENT = true;`,
        loader: 'js',
      }));
    },
  };
}

/**
 * zod exports every language's error messages (about 300 KiB of the agent); the agent speaks
 * English only, so its locale index is replaced by the English one.
 */
const zodEnglishOnly: Plugin = {
  name: 'zod-english-only',
  setup(builder) {
    builder.onResolve({ filter: /\/locales\/index\.js$/ }, (args) => {
      if (!args.importer.includes(`${'node_modules'}/zod/`)) return undefined;
      return { path: join(args.resolveDir, '..', 'locales', 'en.js') };
    });
  },
};

export interface AgentBundle {
  file: string;
  bytes: number;
  sha256: string;
}

export async function buildAgentBundle({ outDir = join(PACKAGE_ROOT, 'dist', 'agent'), version = PACKAGE_VERSION } = {}): Promise<AgentBundle> {
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, 'hypha.js');
  await build({
    entryPoints: [join(PACKAGE_ROOT, 'src', 'cli', 'hypha.ts')],
    outfile: file,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: `node${AGENT_NODE_MIN}`,
    external: ['node-pty'],
    plugins: [packageVersionInlined(version), zodEnglishOnly],
    minify: true,
    keepNames: true,
    legalComments: 'eof',
    banner: { js: `#!/usr/bin/env node\n// hypha ${version}: the rhizosphere device agent, standalone (Node.js ${AGENT_NODE_MIN} or later; node-pty optional, for shells)` },
    logLevel: 'warning',
  });
  const body = readFileSync(file);
  const sha256 = createHash('sha256').update(body).digest('hex');
  writeFileSync(`${file}.sha256`, `${sha256}  hypha.js\n`);
  // Inside this project (a package of "type": "module") Node would take the file for ESM.
  writeFileSync(join(outDir, 'package.json'), '{"type":"commonjs"}\n');
  return { file, bytes: body.length, sha256 };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const bundle = await buildAgentBundle();
  process.stdout.write(`agent: ${bundle.file} (${Math.round(bundle.bytes / 1024)} KiB, sha256 ${bundle.sha256})\n`);
}
