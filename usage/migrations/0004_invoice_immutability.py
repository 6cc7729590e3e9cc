from django.db import migrations

# Finalized invoices and their lines never change: enforced by the database
# itself, not only by the code, so no query can rewrite what was billed.
# The one change allowed is finalized -> void (status, voided_at, void_reason).
TRIGGERS = """
CREATE OR REPLACE FUNCTION tollgate_invoice_immutable() RETURNS trigger AS $$
BEGIN
    IF OLD.status = 'draft' THEN
        RETURN COALESCE(NEW, OLD);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = 'finalized' AND NEW.status = 'void'
       AND (NEW.number, NEW.team_id, NEW.month, NEW.subtotal_usd, NEW.total_usd, NEW.markup_percent,
            NEW.seller, NEW.customer, NEW.finalized_at, NEW.usage_through)
           IS NOT DISTINCT FROM
           (OLD.number, OLD.team_id, OLD.month, OLD.subtotal_usd, OLD.total_usd, OLD.markup_percent,
            OLD.seller, OLD.customer, OLD.finalized_at, OLD.usage_through) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'invoice % is % and cannot be changed', OLD.number, OLD.status;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER usage_invoice_immutable BEFORE UPDATE OR DELETE ON usage_invoice
    FOR EACH ROW EXECUTE FUNCTION tollgate_invoice_immutable();

CREATE OR REPLACE FUNCTION tollgate_invoiceline_immutable() RETURNS trigger AS $$
DECLARE
    invoice_status text;
BEGIN
    SELECT status INTO invoice_status FROM usage_invoice WHERE id = COALESCE(NEW.invoice_id, OLD.invoice_id);
    IF invoice_status IS DISTINCT FROM 'draft' THEN
        RAISE EXCEPTION 'lines of a % invoice cannot be changed', invoice_status;
    END IF;
    RETURN COALESCE(NEW, OLD);
END $$ LANGUAGE plpgsql;

CREATE TRIGGER usage_invoiceline_immutable BEFORE INSERT OR UPDATE OR DELETE ON usage_invoiceline
    FOR EACH ROW EXECUTE FUNCTION tollgate_invoiceline_immutable();
"""

REVERSE = """
DROP TRIGGER IF EXISTS usage_invoiceline_immutable ON usage_invoiceline;
DROP TRIGGER IF EXISTS usage_invoice_immutable ON usage_invoice;
DROP FUNCTION IF EXISTS tollgate_invoiceline_immutable();
DROP FUNCTION IF EXISTS tollgate_invoice_immutable();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TRIGGERS, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REVERSE, params=None)


class Migration(migrations.Migration):
    dependencies = [("usage", "0003_rollups_invoices")]
    operations = [migrations.RunPython(forwards, backwards)]
