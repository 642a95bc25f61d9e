// The browser half of `scripts/web-frontend check` (which starts the server and
// sets the environment below; run it through that script). Drives headless
// Chromium with puppeteer-core: opens dispatch-web as served by Dispatch, types
// a message into the composer, sends it with Enter and waits until the reply
// of the offline scripted model is rendered, then keeps a screenshot.
//
// Fails (exit 1) when the reply does not show within the timeout, the page
// throws an uncaught exception, an error banner (role="alert") appears, the
// server answers `chat.error`, or the page opens a WebSocket other than the
// expected one. Console errors, HTTP responses >= 400 and API calls answered
// with HTML (web_dir's index.html fallback for a route the server lacks) are
// reported but do not fail the check: dispatch-web calls a few endpoints this
// server does not have yet (see README "The web frontend").
//
// Environment:
//   WEB_CHECK_PAGE        the page to open, e.g. http://127.0.0.1:24203/
//   WEB_CHECK_EXPECT      text the reply must contain
//   WEB_CHECK_WS_URL      the WebSocket URL the page must open (empty: any)
//   WEB_CHECK_MESSAGE     what to send (default: a greeting)
//   WEB_CHECK_MODEL       the model to pick in the sidebar before sending (default
//                         empty: none — a newcomer's first message, which the page
//                         sends with its built-in default model; the bundled
//                         plugins.toml aliases that name to the server's default)
//   WEB_CHECK_SCREENSHOT  the PNG to write (also on failure)
//   WEB_CHECK_LOG         the log to write: console, errors, requests >= 400,
//                         WebSocket frames, the page's text at the end
//   WEB_CHECK_TIMEOUT_MS  how long to wait for each step (default 60000)
//   WEB_CHECK_TOOLS       the directory whose node_modules has puppeteer-core
//   CHROMIUM              the browser executable

import { appendFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

function env(name, fallback) {
	const value = process.env[name] ?? fallback;
	if (value === undefined) {
		console.error(`web-frontend-check: ${name} is not set (run scripts/web-frontend check)`);
		process.exit(2);
	}
	return value;
}

const PAGE = env("WEB_CHECK_PAGE");
const EXPECT = env("WEB_CHECK_EXPECT");
const WS_URL = env("WEB_CHECK_WS_URL", "");
const MESSAGE = env("WEB_CHECK_MESSAGE", "Hello from scripts/web-frontend check");
const MODEL = env("WEB_CHECK_MODEL", "");
const SCREENSHOT = env("WEB_CHECK_SCREENSHOT");
const LOG = env("WEB_CHECK_LOG");
const TIMEOUT = Number(env("WEB_CHECK_TIMEOUT_MS", "60000"));
const CHROMIUM = env("CHROMIUM");
const puppeteer = createRequire(join(env("WEB_CHECK_TOOLS"), "package.json"))("puppeteer-core");

// dispatch-web's composer (src/features/chat/ui/Composer.svelte, main and dev):
// a textarea that sends on Enter (Shift+Enter is a newline).
const COMPOSER = 'textarea[aria-label="Message input"]';
// Its model picker (src/features/chat/ui/ModelSelector.svelte): on main one
// select of full model names; on dev a "Key selector" (the credential) and a
// "Model selector" (the model under it).
const KEY_SELECT = 'select[aria-label="Key selector"]';
const MODEL_SELECT = 'select[aria-label="Model selector"]';

const started = Date.now();
writeFileSync(LOG, "");
function log(line) {
	const stamp = ((Date.now() - started) / 1000).toFixed(2).padStart(7);
	appendFileSync(LOG, `${stamp}s ${line}\n`);
}
function say(line) {
	console.error(`web-frontend-check: ${line}`);
	log(`== ${line}`);
}
const clip = (s, n = 400) => (s.length > n ? `${s.slice(0, n)}… (${s.length} chars)` : s);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const pageErrors = []; // uncaught exceptions in the page: fatal
const consoleErrors = []; // console.error: reported
const httpErrors = []; // responses >= 400 and failed requests: reported
const chatErrors = []; // chat.error messages from the server: fatal
const sockets = new Map(); // CDP requestId -> { url, open, closed }
let turnEnded = false; // a `done` (or `turn-sealed`) event came over the socket

function watch(page, cdp) {
	page.on("console", (msg) => {
		const where = msg.location()?.url ? ` (${msg.location().url})` : "";
		log(`console.${msg.type()}: ${msg.text()}${where}`);
		if (msg.type() === "error") consoleErrors.push(msg.text());
	});
	page.on("pageerror", (err) => {
		const text = err?.stack || err?.message || String(err);
		log(`PAGE ERROR: ${text}`);
		pageErrors.push(err?.message || String(err));
	});
	page.on("requestfailed", (req) => {
		const line = `${req.method()} ${req.url()} failed: ${req.failure()?.errorText}`;
		log(line);
		httpErrors.push(line);
	});
	page.on("response", (res) => {
		const type = res.headers()["content-type"] ?? "";
		const line = `${res.request().method()} ${res.url()} -> ${res.status()} ${type}`;
		log(line);
		if (res.status() >= 400) httpErrors.push(line);
		// An API call (fetch) answered with HTML: a route the server does not
		// have, answered by web_dir's index.html fallback.
		const kind = res.request().resourceType();
		if ((kind === "fetch" || kind === "xhr") && type.startsWith("text/html")) {
			httpErrors.push(`${line} (index.html instead of JSON: no such API route?)`);
		}
	});
	cdp.on("Network.webSocketCreated", ({ requestId, url }) => {
		log(`ws created: ${url}`);
		sockets.set(requestId, { url, open: false, closed: false });
	});
	cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) => {
		log(`ws handshake: ${response.status} ${response.statusText}`);
		const s = sockets.get(requestId);
		if (s && response.status === 101) s.open = true;
	});
	cdp.on("Network.webSocketFrameSent", ({ response }) => {
		const data = response.payloadData;
		log(`ws -> ${clip(data)}`);
		if (data.includes('"chat.send"')) {
			try {
				say(`the page sent chat.send with model ${JSON.stringify(JSON.parse(data).model ?? null)}`);
			} catch {}
		}
	});
	cdp.on("Network.webSocketFrameReceived", ({ response }) => {
		const data = response.payloadData;
		log(`ws <- ${clip(data)}`);
		if (/"type":"(done|turn-sealed)"/.test(data)) turnEnded = true;
		if (data.includes('"chat.error"')) {
			try {
				chatErrors.push(JSON.parse(data).message ?? data);
			} catch {
				chatErrors.push(data);
			}
		}
	});
	cdp.on("Network.webSocketFrameError", ({ errorMessage }) => log(`ws frame error: ${errorMessage}`));
	cdp.on("Network.webSocketClosed", ({ requestId }) => {
		log("ws closed");
		const s = sockets.get(requestId);
		if (s) s.closed = true;
	});
}

// The page's state as far as the check cares.
function snapshot(page, expect) {
	return page.evaluate((expect) => {
		const text = document.body?.innerText ?? "";
		const alerts = [...document.querySelectorAll('[role="alert"]')].map((el) =>
			el.innerText.trim(),
		);
		return { replied: text.includes(expect), alerts, text };
	}, expect);
}

// Picks MODEL in the sidebar, as a user would. Needed, not cosmetic: a fresh
// dispatch-web page shows the first model of GET /models as selected, but its
// first conversation keeps the built-in default (opencode/deepseek-v4-flash)
// until a model is picked. page.select fires `change` even when the value does
// not change.
async function pickModel(page, model) {
	const values = (selector) =>
		page.$$eval(`${selector} option`, (options) => options.map((o) => o.value)).catch(() => []);
	const slash = model.indexOf("/");
	const [key, name] = slash < 0 ? ["", model] : [model.slice(0, slash), model.slice(slash + 1)];
	await page.waitForSelector(MODEL_SELECT, { timeout: TIMEOUT });
	if ((await values(MODEL_SELECT)).includes(model)) {
		await page.select(MODEL_SELECT, model); // main
		return;
	}
	if ((await page.$(KEY_SELECT)) !== null) {
		if (!(await values(KEY_SELECT)).includes(key)) {
			throw new Error(`the key selector does not offer ${key} (${await values(KEY_SELECT)})`);
		}
		await page.select(KEY_SELECT, key); // dev
		await until(`${key}'s models`, async () => (await values(MODEL_SELECT)).includes(name));
		await page.select(MODEL_SELECT, name);
		return;
	}
	throw new Error(`the model selector does not offer ${model} (${await values(MODEL_SELECT)})`);
}

async function until(what, fn) {
	const deadline = Date.now() + TIMEOUT;
	for (;;) {
		const result = await fn();
		if (result) return result;
		if (Date.now() > deadline) throw new Error(`timed out after ${TIMEOUT} ms waiting for ${what}`);
		await sleep(100);
	}
}

let browser;
let page;
let failure = null;
try {
	say(`launching ${CHROMIUM}`);
	browser = await puppeteer.launch({
		executablePath: CHROMIUM,
		headless: true,
		// --no-sandbox: Chromium refuses to run as root with its sandbox.
		args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
		defaultViewport: { width: 1280, height: 800 },
		timeout: TIMEOUT,
	});
	log(`browser: ${await browser.version()}`);
	page = await browser.newPage();
	const cdp = await page.createCDPSession();
	await cdp.send("Network.enable");
	watch(page, cdp);

	const models = page.waitForResponse((res) => new URL(res.url()).pathname === "/models", {
		timeout: TIMEOUT,
	});
	say(`opening ${PAGE}`);
	await page.goto(PAGE, { waitUntil: "domcontentloaded", timeout: TIMEOUT });

	// The page picks its model from GET /models; a message sent before that
	// answers would carry dispatch-web's built-in default model instead.
	const res = await models;
	const list = res.ok() ? await res.json() : null;
	say(`GET /models -> ${res.status()} ${JSON.stringify(list?.models ?? null)}`);
	if (!res.ok()) throw new Error(`GET /models answered ${res.status()}`);

	await page.waitForSelector(COMPOSER, { visible: true, timeout: TIMEOUT });
	const socket = await until("the page to open its WebSocket", () =>
		[...sockets.values()].find((s) => s.open),
	);
	say(`WebSocket open: ${socket.url}`);
	if (WS_URL !== "" && socket.url !== WS_URL) {
		throw new Error(`the page opened ${socket.url}, expected ${WS_URL}`);
	}

	if (MODEL !== "") {
		say(`picking the model ${MODEL}`);
		await pickModel(page, MODEL);
	}

	say(`sending: ${MESSAGE}`);
	await page.type(COMPOSER, MESSAGE);
	await page.keyboard.press("Enter");

	await until("the reply", async () => {
		if (pageErrors.length > 0) throw new Error(`the page threw: ${pageErrors[0]}`);
		if (chatErrors.length > 0) throw new Error(`the server answered chat.error: ${chatErrors[0]}`);
		const state = await snapshot(page, EXPECT);
		if (state.alerts.length > 0) throw new Error(`the page shows an error: ${state.alerts.join(" | ")}`);
		return state.replied;
	});
	say(`the reply is rendered (${((Date.now() - started) / 1000).toFixed(1)} s since launch)`);

	// Let the rest of the turn arrive (usage, done, ...): an event the page
	// cannot handle would throw only now.
	try {
		await until("the end of the turn", () => turnEnded);
	} catch {
		say("warning: no `done` event seen on the WebSocket");
	}
	await sleep(1000);
	const state = await snapshot(page, EXPECT);
	log(`page text at the end:\n${state.text}`);
	if (pageErrors.length > 0) throw new Error(`the page threw: ${pageErrors[0]}`);
	if (chatErrors.length > 0) throw new Error(`the server answered chat.error: ${chatErrors[0]}`);
	if (state.alerts.length > 0) throw new Error(`the page shows an error: ${state.alerts.join(" | ")}`);
	if (!state.replied) throw new Error("the reply disappeared from the page");
} catch (err) {
	failure = err?.message || String(err);
}

try {
	if (page) {
		await page.screenshot({ path: SCREENSHOT });
		log(`screenshot: ${SCREENSHOT}`);
	}
} catch (err) {
	say(`could not take the screenshot: ${err?.message || err}`);
}
await browser?.close().catch(() => {});

for (const line of httpErrors) say(`note: ${line}`);
if (consoleErrors.length > 0) say(`note: ${consoleErrors.length} console error(s), see ${LOG}`);
if (failure !== null) {
	say(`FAILED: ${failure}`);
	process.exit(1);
}
say("OK");
process.exit(0);
