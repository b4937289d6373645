"""Speaking Inngest's protocol: apps written with the official Inngest SDKs run on the daemon
unchanged (the gateway that takes their events and syncs, request signing, the driver that
calls their functions' steps)."""
