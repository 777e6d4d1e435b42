// The staff admin in Chromium at 1400x900: log in, open each page of PAGES (a JSON list of
// {name, path, expect: [texts]}), check that its texts are on it and that nothing is cut
// off the right edge, screenshot it, and print one RESULT line per page.
import { screenshot, withPage } from "./chromium.mjs";

const { BASE_URL, ADMIN_USER, ADMIN_PASSWORD } = process.env;
const pages = JSON.parse(process.env.PAGES);

await withPage(async (page) => {
  await page.goto(`${BASE_URL}/admin/login/`);
  await page.fill("#id_username", ADMIN_USER);
  await page.fill("#id_password", ADMIN_PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click("input[type=submit]")]);
  for (const { name, path, expect } of pages) {
    const response = await page.goto(`${BASE_URL}${path}`);
    const text = (await page.innerText("body")).toLowerCase(); // innerText is as styled
    const result = {
      name,
      status: response.status(),
      title: await page.title(),
      header: await page.textContent("#site-name").catch(() => null),
      missing: expect.filter((wanted) => !text.includes(wanted.toLowerCase())),
      // Wider than the window: something is cut off or needs a sideways scroll.
      overflow: await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth),
      // A list whose columns run past its box (the admin scrolls it sideways, hiding them).
      clipped: await page.evaluate(() =>
        [...document.querySelectorAll(".results, .module")].some((box) => box.scrollWidth > box.clientWidth + 1),
      ),
    };
    console.log(`RESULT ${JSON.stringify(result)}`);
    await screenshot(page, `admin-${name}`);
  }
});
