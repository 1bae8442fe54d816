"use strict";
// What the compat tests read back: every call into a function handler and every execution of a step body is
// appended as one JSON line to $COMPAT_LOG (the tests own that file). Each line carries the test's `token`.
// Shared by the feature app (app.js) and the TypeScript seed apps (seed_*.ts), which get its types from the JSDoc
// below (tsconfig.json type-checks this file too).

const fs = require("node:fs");

const LOG = process.env.COMPAT_LOG || "";

/**
 * Appends one record, stamped with the time (`t`, seconds) and `sdk: "node"`.
 * @param {Record<string, unknown>} entry
 * @returns {void}
 */
function record(entry) {
  const line = `${JSON.stringify({ t: Date.now() / 1000, sdk: "node", ...entry })}\n`;
  if (LOG) {
    fs.appendFileSync(LOG, line);
  }
}

/**
 * The event data's token, also for the inngest/function.failed event an onFailure handler receives.
 * @param {{ data?: any } | undefined} event
 * @returns {unknown}
 */
function tokenOf(event) {
  const data = (event && event.data) || {};
  if (data.token !== undefined) return data.token;
  if (data.event && data.event.data) return data.event.data.token;
  return undefined;
}

/**
 * Starts `app` on $PORT (127.0.0.1), logs the port, and shuts down cleanly on SIGTERM/SIGINT.
 * @param {import("express").Express} app
 * @param {string} name
 * @returns {import("node:http").Server}
 */
function listen(app, name) {
  const port = Number(process.env.PORT || 3000);
  const server = app.listen(port, "127.0.0.1", () => {
    process.stdout.write(`${name} listening on http://127.0.0.1:${port}/api/inngest\n`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  return server;
}

module.exports = { record, tokenOf, listen };
