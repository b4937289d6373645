// An Inngest app written the v4 way: createFunction({ ..., triggers }, handler).
// Run with SDK_DIR=.cache/inngest-sdks/v4 (see common.mjs for the environment).
import { listen, loadSdk, mark } from "./common.mjs";

const sdk = loadSdk();
const inngest = new sdk.inngest.Inngest({ id: process.env.APP_ID || "e2e-node-v4" });

const sendWelcome = inngest.createFunction(
  { id: "send-welcome", retries: 2, triggers: [{ event: "app/user.signup" }] },
  async ({ event, step, runId, attempt }) => {
    const user = await step.run("load-user", () => {
      mark("send-welcome", "load-user", runId, attempt);
      return { email: event.data.email };
    });
    await step.sleep("pause", event.data.pause ?? "1s");
    const sent = await step.run("send-email", () => {
      mark("send-welcome", "send-email", runId, attempt);
      return { to: user.email };
    });
    return { sent: sent.to };
  },
);

const tick = inngest.createFunction(
  { id: "tick", triggers: [{ cron: "* * * * *" }] },
  async ({ step, runId, attempt }) => {
    await step.run("tick-once", () => {
      mark("tick", "tick-once", runId, attempt);
      return "ticked";
    });
    return { ticked: true };
  },
);

const awaitPayment = inngest.createFunction(
  { id: "await-payment", triggers: [{ event: "app/order.created" }] },
  async ({ event, step, runId, attempt }) => {
    const paid = await step.waitForEvent("wait-paid", {
      event: "app/order.paid",
      timeout: event.data.timeout ?? "30s",
      if: "async.data.order_id == event.data.order_id",
    });
    const amount = await step.run("after-wait", () => {
      mark("await-payment", "after-wait", runId, attempt);
      return paid ? paid.data.amount : null;
    });
    return { paid: amount };
  },
);

const double = inngest.createFunction(
  { id: "double", triggers: [{ event: "app/double" }] },
  async ({ event, step, runId, attempt }) => {
    const doubled = await step.run("double-it", () => {
      mark("double", "double-it", runId, attempt);
      return event.data.n * 2;
    });
    return { doubled };
  },
);

const invokeDouble = inngest.createFunction(
  { id: "invoke-double", triggers: [{ event: "app/invoke" }] },
  async ({ event, step }) => {
    const result = await step.invoke("call-double", { function: double, data: { n: event.data.n } });
    return { result };
  },
);

const fanOut = inngest.createFunction(
  { id: "fan-out", triggers: [{ event: "app/fan.out" }] },
  async ({ step, runId, attempt }) => {
    const parts = await Promise.all(
      ["a", "b", "c"].map((k) =>
        step.run(`part-${k}`, () => {
          mark("fan-out", `part-${k}`, runId, attempt);
          return k.charCodeAt(0);
        }),
      ),
    );
    const total = await step.run("total", () => {
      mark("fan-out", "total", runId, attempt);
      return parts.reduce((a, b) => a + b, 0);
    });
    return { parts, total };
  },
);

const alwaysFails = inngest.createFunction(
  {
    id: "always-fails",
    retries: 0, triggers: [{ event: "app/fail" }],
    onFailure: async ({ event, error, step, runId }) => {
      await step.run("note-failure", () => {
        mark("always-fails-failure", "note-failure", runId, 0);
        return { message: error.message, original: event.data.event?.data ?? null };
      });
      return { handled: error.message };
    },
  },
  async ({ step, runId, attempt }) => {
    await step.run("doomed", () => {
      mark("always-fails", "doomed", runId, attempt);
      throw new sdk.inngest.NonRetriableError("nope, on purpose");
    });
  },
);

const relay = inngest.createFunction(
  { id: "relay", triggers: [{ event: "app/relay" }] },
  async ({ event, step }) => {
    const sent = await step.sendEvent("relay-it", {
      name: "app/native.ping",
      data: { x: event.data.x },
    });
    return { relayed: sent.ids.length };
  },
);

// For the bench: the same one-step and three-step shapes as bench/inngest.py's native ones.
const oneStep = inngest.createFunction(
  { id: "one-step", triggers: [{ event: "bench/one" }] },
  async ({ event, step }) => step.run("only", () => event.data.i ?? 0),
);

const threeSteps = inngest.createFunction(
  { id: "three-steps", triggers: [{ event: "bench/three" }] },
  async ({ event, step }) => {
    const a = await step.run("first", () => event.data.i ?? 0);
    const b = await step.run("second", () => a + 1);
    return step.run("third", () => b + 1);
  },
);

listen(sdk, inngest, [
  sendWelcome, tick, awaitPayment, double, invokeDouble, fanOut, alwaysFails, relay, oneStep,
  threeSteps,
]);
