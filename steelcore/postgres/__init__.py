"""The only code that talks to the defect database: engines, schema, migrations, roles, reads and writes."""
