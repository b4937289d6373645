"""The example's own table, `public.signups` (made by `migrate --run-syncdb`)."""

from __future__ import annotations

from django.db import models


class Signup(models.Model):
    email = models.EmailField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    welcomed_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "signups"
