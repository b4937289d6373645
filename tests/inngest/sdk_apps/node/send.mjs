// Send events with the SDK's own client: `node send.mjs '<JSON event or array>'`, with
// SDK_DIR and the INNGEST_* variables (INNGEST_DEV, INNGEST_BASE_URL, INNGEST_EVENT_KEY).
// Prints {"ids": [...]} on success; on failure prints {"error": "..."} and exits 1.
import { loadSdk } from "./common.mjs";

const sdk = loadSdk();
const client = new sdk.inngest.Inngest({ id: "e2e-sender" });
try {
  const result = await client.send(JSON.parse(process.argv[2]));
  console.log(JSON.stringify({ ids: result.ids }));
} catch (err) {
  console.log(JSON.stringify({ error: String(err?.message ?? err) }));
  process.exit(1);
}
