// Debian's chromium, headless, driven by playwright-core (which downloads no browser).
import { chromium } from "playwright-core";

export const VIEWPORT = { width: 1400, height: 900 };

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

// Fails the run on any error the page itself reports (uncaught exceptions, console errors)
// and on any script, style, image or font it could not load (API answers are the scripts'
// to check).
export function watchErrors(page, errors) {
  page.on("pageerror", (error) => errors.push(`pageerror: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      errors.push(`console: ${message.text()}`);
    }
  });
  page.on("response", (response) => {
    const url = new URL(response.url());
    const asset = ["script", "stylesheet", "image", "font"].includes(response.request().resourceType());
    if (response.status() >= 400 && asset && url.pathname !== "/favicon.ico") {
      errors.push(`${response.status()} ${url.pathname}`);
    }
  });
}

export async function screenshot(page, name) {
  if (process.env.SCREENSHOT_DIR) {
    await page.screenshot({ path: `${process.env.SCREENSHOT_DIR}/${name}.png` });
  }
}

// Runs `body(page)` in a fresh 1400x900 page, then closes the browser; exits non-zero if
// the page reported any error meanwhile.
export async function withPage(body) {
  const browser = await launch();
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: VIEWPORT });
    watchErrors(page, errors);
    await body(page);
  } finally {
    await browser.close();
  }
  if (errors.length) {
    console.error(errors.join("\n"));
    process.exit(1);
  }
}
