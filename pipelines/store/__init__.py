"""The store, the only door to the LanceDB tables: schemas, migrations, typed reads and writes, indexes."""
