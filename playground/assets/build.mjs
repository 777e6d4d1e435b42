// Bundles ai-client.mjs into one ES module the playground page imports, served by the app
// itself (no CDN). Run `npm ci && npm run build` here after changing the `ai` version, and
// commit the output.
import { build } from "esbuild";
import { readFileSync } from "node:fs";

const version = JSON.parse(readFileSync("node_modules/ai/package.json", "utf8")).version;

await build({
  entryPoints: ["ai-client.mjs"],
  outfile: "../static/playground/vendor/ai-client.js",
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2020",
  minify: true,
  legalComments: "eof",
  banner: { js: `// The AI SDK's client code: ai@${version}, bundled by playground/assets/build.mjs.` },
});
