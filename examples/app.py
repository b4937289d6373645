"""The example app `make run` serves: a signup flow with steps, a sleep and a nightly cron."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from orchestrator import Context, Orchestrator, cron, event

app = Orchestrator()


def create_account(email: str) -> dict[str, Any]:
    return {"account": email.split("@", maxsplit=1)[0], "plan": "free"}


def send_email(email: str, template: str) -> dict[str, Any]:
    print(f"(pretend) sending {template!r} to {email}")
    return {"sent": template}


@app.function("signup-flow", trigger=event("user/signed-up"), retries=3)
def signup_flow(ctx: Context) -> dict[str, Any]:
    email = ctx.event.data["email"]
    account = ctx.step.run("create-account", create_account, email)
    ctx.step.run("welcome-email", send_email, email, "welcome")
    ctx.step.sleep("wait-before-tips", timedelta(seconds=5))
    ctx.step.run("tips-email", send_email, email, "tips")
    ctx.log.info("signup flow finished", account=account["account"])
    return {"account": account["account"]}


@app.function("nightly-report", trigger=cron("0 3 * * *", tz="UTC"))
def nightly_report(ctx: Context) -> dict[str, Any]:
    return {"scheduled_at": ctx.event.data["scheduled_at"]}
