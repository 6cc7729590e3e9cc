from django.db import migrations


class Migration(migrations.Migration):
    """TRUNCATE fires no row trigger: the audit log refuses it with a statement trigger of
    its own. A test database that must be emptied between tests says so for itself
    (tests/conftest.py sets tollgate.audit_reset for the test database alone)."""

    dependencies = [("accounts", "0007_audit_log")]

    operations = [
        migrations.RunSQL(
            sql="""
                CREATE FUNCTION accounts_auditevent_no_truncate() RETURNS trigger
                LANGUAGE plpgsql AS $$
                BEGIN
                    IF current_setting('tollgate.audit_reset', true) = 'allowed' THEN
                        RETURN NULL;
                    END IF;
                    RAISE EXCEPTION 'the audit log is append-only: TRUNCATE refused'
                        USING ERRCODE = 'insufficient_privilege';
                END $$;
                CREATE TRIGGER accounts_auditevent_no_truncate
                    BEFORE TRUNCATE ON accounts_auditevent
                    FOR EACH STATEMENT EXECUTE FUNCTION accounts_auditevent_no_truncate();
            """,
            reverse_sql="""
                DROP TRIGGER accounts_auditevent_no_truncate ON accounts_auditevent;
                DROP FUNCTION accounts_auditevent_no_truncate();
            """,
        ),
    ]
