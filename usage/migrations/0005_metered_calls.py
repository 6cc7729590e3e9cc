# In-flight calls become metered calls: kept after they close (the call
# journal reconcile checks), with the worker serving them and its lease.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_team_alert_webhook"),
        ("usage", "0004_invoice_immutability"),
    ]

    operations = [
        migrations.CreateModel(
            name="WorkerLease",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("worker", models.CharField(max_length=100, unique=True)),
                ("expires_at", models.DateTimeField()),
            ],
        ),
        migrations.AddField(
            model_name="budgetcounter",
            name="overrun_usd",
            field=models.DecimalField(decimal_places=12, default=0, max_digits=24),
        ),
        migrations.AddField(
            model_name="budgetcounter",
            name="carried_usd",
            field=models.DecimalField(decimal_places=12, default=0, max_digits=24),
        ),
        migrations.RenameModel(old_name="InFlightCall", new_name="MeteredCall"),
        migrations.AddField(
            model_name="meteredcall",
            name="route",
            field=models.CharField(blank=True, max_length=100, default=""),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="meteredcall",
            name="end_user",
            field=models.CharField(blank=True, max_length=256, default=""),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="meteredcall",
            name="worker",
            field=models.CharField(blank=True, max_length=100, default=""),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="meteredcall",
            name="closed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="meteredcall",
            name="swept",
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name="meteredcall",
            name="expires_at",
            field=models.DateTimeField(),
        ),
        migrations.AddIndex(
            model_name="meteredcall",
            index=models.Index(
                condition=models.Q(("closed_at__isnull", True)),
                fields=["expires_at"],
                name="meteredcall_in_flight",
            ),
        ),
        migrations.AddIndex(
            model_name="meteredcall",
            index=models.Index(fields=["started_at"], name="meteredcall_started"),
        ),
    ]
