from django.db import migrations, models


def existing_management_keys_are_admins(apps, schema_editor):
    # Until this migration every management key acted as an admin; they keep doing so.
    ApiKey = apps.get_model("accounts", "ApiKey")
    ApiKey.objects.filter(kind="management").update(role="admin")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_team_alert_webhook"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="role",
            field=models.CharField(
                blank=True,
                choices=[("admin", "Admin"), ("billing", "Billing")],
                default="",
                max_length=16,
            ),
        ),
        migrations.RunPython(existing_management_keys_are_admins, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="apikey",
            constraint=models.CheckConstraint(
                condition=models.Q(("kind", "management"), ("role__in", ["admin", "billing"]))
                | models.Q(("kind", "inference"), ("role", "")),
                name="apikey_role_only_on_management_keys",
            ),
        ),
    ]
