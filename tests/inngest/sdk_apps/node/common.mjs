// Shared plumbing of the SDK test apps: load the SDK from the folder `make inngest-sdks`
// installed it in, record each step body's execution, serve the functions with Express.
//
// Environment: SDK_DIR (.cache/inngest-sdks/v3 or v4), PORT, COUNT_FILE (one line appended
// per step body execution: "<function>\t<step>\t<run id>\t<attempt>"), APP_ID, plus the
// INNGEST_* variables the SDK reads itself (INNGEST_DEV, INNGEST_BASE_URL,
// INNGEST_SIGNING_KEY, INNGEST_EVENT_KEY).
import { appendFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

export function loadSdk() {
  const dir = process.env.SDK_DIR;
  if (!dir) throw new Error("SDK_DIR is not set (the folder make inngest-sdks installed into)");
  const require = createRequire(path.join(path.resolve(dir), "package.json"));
  return {
    inngest: require("inngest"),
    serve: require("inngest/express").serve,
    express: require("express"),
  };
}

export function mark(fn, step, runId, attempt) {
  const file = process.env.COUNT_FILE;
  if (file) appendFileSync(file, `${fn}\t${step}\t${runId}\t${attempt}\n`);
}

export function listen(sdk, client, functions) {
  const app = sdk.express();
  // The SDK reads the parsed body (and verifies the signature over it); Express' default
  // limit is 100kb.
  app.use(sdk.express.json({ limit: "10mb" }));
  app.use("/api/inngest", sdk.serve({ client, functions }));
  const port = Number(process.env.PORT || 0);
  const server = app.listen(port, "127.0.0.1", () => {
    console.log(`listening ${server.address().port}`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
