// Builds dist/: ESM and CJS for bundlers and Node, one IIFE (global
// Stagecast) for a <script> tag on a TV, and the .d.ts typings. The IIFE must
// parse as ES2015 (TVs with Chromium 53-56 engines) and stay under 12 KB
// minified and gzipped; the build fails otherwise.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import * as acorn from 'acorn';

const MAX_GZIP = 12 * 1024;
mkdirSync('dist', { recursive: true });
const common = { entryPoints: ['src/index.ts'], bundle: true, logLevel: 'warning', legalComments: 'none' };
await build({ ...common, format: 'esm', target: 'es2017', outfile: 'dist/index.mjs' });
await build({ ...common, format: 'cjs', target: 'es2017', outfile: 'dist/index.cjs' });
await build({ ...common, format: 'iife', globalName: 'Stagecast', target: 'es2015', minify: true, outfile: 'dist/stagecast.iife.js' });
execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });

const iife = readFileSync('dist/stagecast.iife.js');
acorn.parse(iife.toString(), { ecmaVersion: 2015, sourceType: 'script' }); // throws on anything newer
const gz = gzipSync(iife, { level: 9 }).length;
const size = { iife_bytes: iife.length, iife_gzip_bytes: gz, max_gzip_bytes: MAX_GZIP };
writeFileSync('dist/size.json', JSON.stringify(size, null, 2) + '\n');
console.log(`dist/stagecast.iife.js: ${iife.length} B, ${gz} B gzipped (cap ${MAX_GZIP}); parses as ES2015`);
// The dev server's demo home screen (make run, /demo/) embeds this build; a
// test checks the committed copy is this one.
if (process.argv.includes('--copy-demo')) copyFileSync('dist/stagecast.iife.js', '../../internal/demo/assets/stagecast.iife.js');
if (gz > MAX_GZIP) {
  console.error(`the IIFE is ${gz} B gzipped, over the ${MAX_GZIP} B cap`);
  process.exit(1);
}
